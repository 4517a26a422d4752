"""The runtime as a device gets it: its wheel installed in a new virtual environment without torch or the toolchain,
and ``infini-run info / run / generate`` there on an artifact exported here, against the eager model.

The environment is made once for the module (``python -m venv --without-pip``, then this environment's pip installs
into it with ``--python``: no pip of its own to install); its dependencies are pinned to the versions installed here
and come from pip's cache after the first run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, make_model

TOOLCHAIN = ("torch", "executorch", "infini_export", "exporters", "infini_cli")
PROMPT = "The pass key is 31415. Remember it."
NEW_TOKENS = 12


def build_runtime_wheel(dist: Path) -> Path:
    """``infini_runtime-*.whl`` built from a copy of ``runtime/`` (a build writes build/ into the folder it reads)."""
    src = dist.parent / "src" / "runtime"
    shutil.copytree(Path(ROOT) / "runtime", src,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(src)], check=True, capture_output=True)
    wheels = list(dist.glob("infini_runtime-*-py3-none-any.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def device_env(tmp_path_factory):
    """(python, infini-run) of a new virtual environment holding the runtime's wheel and its requirements only."""
    base = tmp_path_factory.mktemp("device")
    wheel = build_runtime_wheel(base / "dist")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pins = base / "constraints.txt"
    pins.write_text("".join(f"{p}=={version(p)}\n" for p in ("numpy", "onnxruntime", "tokenizers")))
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                          "--find-links", str(wheel.parent), "-c", str(pins), "infini-runtime"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return venv / "bin" / "python", venv / "bin" / "infini-run"


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """(eager model, artifact folder): the tiny preset exported to ONNX here, with the toolchain."""
    from exporters.pipeline import export_artifact
    model = make_model("delta")
    out = tmp_path_factory.mktemp("tiny_onnx")
    export_artifact(model, out, "onnx", parity_segments=2, progress=False, log=None)
    return model, out


def _device(cmd, *args, cwd) -> subprocess.CompletedProcess:
    """Run in the device environment: no PYTHONPATH, away from the repository (whose folders would import)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONIOENCODING"] = "utf-8"
    return subprocess.run([str(cmd), *map(str, args)], capture_output=True, cwd=cwd, env=env, timeout=300)


def eager_greedy(model, prompt: np.ndarray, n: int) -> list[int]:
    """The eager model's greedy continuation: the whole sequence re-run for every new token."""
    ids = [int(t) for t in prompt]
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_the_toolchain_is_not_importable(device_env, tmp_path):
    python, _ = device_env
    code = ("import importlib.util, runtime, runtime.cli.main\n"
            f"print(' '.join(m for m in {TOOLCHAIN!r} if importlib.util.find_spec(m) is not None))")
    res = _device(python, "-c", code, cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.decode().strip() == "", f"importable beside the runtime: {res.stdout.decode()}"


def test_info_is_the_toolchains(device_env, tiny_onnx, tmp_path):
    _, infini_run = device_env
    _, art = tiny_onnx
    res = _device(infini_run, "info", art, "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    ours = subprocess.run([sys.executable, "-m", "infini_cli", "info", str(art), "--json"], capture_output=True,
                          text=True, cwd=ROOT)
    assert ours.returncode == 0, ours.stderr
    assert json.loads(res.stdout) == json.loads(ours.stdout)
    text = _device(infini_run, "info", art, cwd=tmp_path).stdout.decode()
    assert text.startswith(f"artifact: {art} (onnx, onnxruntime") and "state (batch 1):" in text


def test_run_streams_in_the_device_environment(device_env, tiny_onnx, tmp_path):
    _, infini_run = device_env
    model, art = tiny_onnx
    res = _device(infini_run, "run", art, "--random-tokens", 300, "--quiet", "--save-final", tmp_path / "s.npz",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    summary = json.loads(res.stdout)
    N = model.cfg.segment_len
    assert (summary["tokens"], summary["segments"], summary["pending_tokens"]) == (300, 300 // N, 300 % N)
    assert summary["backend"] == "onnxruntime" and summary["state_bytes"] == model.cfg.state_bytes(1)
    assert (tmp_path / "s.npz").is_file()


def test_generate_prints_the_eager_greedy_continuation(device_env, tiny_onnx, tmp_path):
    _, infini_run = device_env
    model, art = tiny_onnx
    res = _device(infini_run, "generate", art, "--prompt", PROMPT, "-n", NEW_TOKENS, cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    out = res.stdout.decode("utf-8")
    assert out.endswith("\n")
    got = [ord(c) for c in out[:-1]]  # byte-level vocabulary: one character per generated byte
    assert got == eager_greedy(model, np.frombuffer(PROMPT.encode(), np.uint8), NEW_TOKENS)
    err = res.stderr.decode()
    assert f"prompt {len(PROMPT.encode())} tokens: prefill" in err and f"{NEW_TOKENS} new tokens: decode" in err
    assert "peak RSS" in err


def test_a_missing_artifact_is_one_line_and_exit_code_2(device_env, tmp_path):
    _, infini_run = device_env
    res = _device(infini_run, "info", tmp_path / "nothing", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.decode().startswith("infini-run info: error: ") and "manifest.json" in res.stderr.decode()
