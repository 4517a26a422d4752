"""The runtime as a device gets it: its wheel installed in a new virtual environment without torch or the toolchain,
and ``infini-run info / run / generate`` there on an artifact exported here, against the eager model.

The environment is made once for the module (``benchmarks.device``: ``python -m venv --without-pip``, then this
environment's pip installs into it with ``--python``, no pip of its own to install, and nothing byte-compiled ahead);
its requirements are pinned to the versions installed here and come from pip's cache after the first run.
"""
from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

import numpy as np
import pytest
import torch

from benchmarks.device import build_runtime_wheel, device_env, device_run
from tests.conftest import ROOT, make_model

TOOLCHAIN = ("torch", "executorch", "infini_export", "exporters", "infini_cli")
PROMPT = "The pass key is 31415. Remember it."
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """(python, infini-run) of a new virtual environment holding the runtime's wheel and its requirements only."""
    base = tmp_path_factory.mktemp("device")
    wheel = build_runtime_wheel(base / "dist")
    pins = base / "constraints.txt"
    pins.write_text("".join(f"{p}=={version(p)}\n" for p in ("numpy", "onnxruntime", "tokenizers")))
    python = device_env(base / "venv", wheel, constraints=pins, compile=False)
    return python, python.parent / "infini-run"


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """(eager model, artifact folder): the tiny preset exported to ONNX here, with the toolchain, carrying a
    byte-level tokenizer where the exporter ships tokenizers."""
    from exporters.pipeline import export_artifact
    model = make_model("delta")
    out = tmp_path_factory.mktemp("tiny_onnx")
    try:
        from exporters.tokenizer import write_byte_level_tokenizer
        extra = {"tokenizer": write_byte_level_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")}
    except ImportError:  # an exporter without tokenizers: the artifact takes and gives byte ids
        extra = {}
    export_artifact(model, out, "onnx", parity_segments=2, progress=False, log=None, **extra)
    return model, out


def _device(cmd, *args, cwd) -> subprocess.CompletedProcess:
    return device_run([cmd, *args], cwd, timeout=300)


def eager_greedy(model, prompt: np.ndarray, n: int) -> list[int]:
    """The eager model's greedy continuation: the whole sequence re-run for every new token."""
    ids = [int(t) for t in prompt]
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_the_toolchain_is_not_importable(device, tmp_path):
    python, _ = device
    code = ("import importlib.util, runtime, runtime.cli.main\n"
            f"print(' '.join(m for m in {TOOLCHAIN!r} if importlib.util.find_spec(m) is not None))")
    res = _device(python, "-c", code, cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.decode().strip() == "", f"importable beside the runtime: {res.stdout.decode()}"


def test_info_is_the_toolchains(device, tiny_onnx, tmp_path):
    _, infini_run = device
    _, art = tiny_onnx
    res = _device(infini_run, "info", art, "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    ours = subprocess.run([sys.executable, "-m", "infini_cli", "info", str(art), "--json"], capture_output=True,
                          text=True, cwd=ROOT)
    assert ours.returncode == 0, ours.stderr
    info = json.loads(res.stdout)
    assert info == json.loads(ours.stdout)
    import onnx  # the weights, read from the protobuf without onnx there: what onnx counts
    from onnx import numpy_helper
    graph = onnx.load(str(art / "model.onnx"), load_external_data=True).graph
    assert info["weights_bytes"] == sum(len(t.raw_data) if t.raw_data else numpy_helper.to_array(t).nbytes
                                        for t in graph.initializer) > 0
    text = _device(infini_run, "info", art, cwd=tmp_path).stdout.decode()
    assert text.startswith(f"artifact: {art} (onnx, onnxruntime") and "state (batch 1):" in text


def test_run_streams_in_the_device_environment(device, tiny_onnx, tmp_path):
    _, infini_run = device
    model, art = tiny_onnx
    res = _device(infini_run, "run", art, "--random-tokens", 300, "--quiet", "--save-final", tmp_path / "s.npz",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    summary = json.loads(res.stdout)
    N = model.cfg.segment_len
    assert (summary["tokens"], summary["segments"], summary["pending_tokens"]) == (300, 300 // N, 300 % N)
    assert summary["backend"] == "onnxruntime" and summary["state_bytes"] == model.cfg.state_bytes(1)
    assert (tmp_path / "s.npz").is_file()


def test_generate_prints_the_eager_greedy_continuation(device, tiny_onnx, tmp_path):
    """Text through the artifact's tokenizer where it has one, else one character per generated byte."""
    _, infini_run = device
    model, art = tiny_onnx
    res = _device(infini_run, "generate", art, "--prompt", PROMPT, "-n", NEW_TOKENS, cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    out = res.stdout.decode("utf-8")
    assert out.endswith("\n")
    expected = eager_greedy(model, np.frombuffer(PROMPT.encode(), np.uint8), NEW_TOKENS)
    if "tokenizer" in json.loads((art / "manifest.json").read_text()):
        from runtime.tokenizer import Tokenizer
        assert out[:-1] == Tokenizer.from_file(art / "tokenizer.json").decode(expected)
    else:
        assert [ord(c) for c in out[:-1]] == expected
    err = res.stderr.decode()
    assert f"prompt {len(PROMPT.encode())} tokens: prefill" in err and f"{NEW_TOKENS} new tokens: decode" in err
    assert "peak RSS" in err


def test_generate_prints_ids_for_a_random_prompt(device, tiny_onnx, tmp_path):
    _, infini_run = device
    model, art = tiny_onnx
    res = _device(infini_run, "generate", art, "--random-prompt", 40, "-n", NEW_TOKENS, "--seed", 3, cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    prompt = np.random.default_rng(3).integers(0, model.cfg.vocab_size, 40, dtype=np.int64)
    assert [int(t) for t in res.stdout.decode().split()] == eager_greedy(model, prompt, NEW_TOKENS)


def test_a_missing_artifact_is_one_line_and_exit_code_2(device, tmp_path):
    _, infini_run = device
    res = _device(infini_run, "info", tmp_path / "nothing", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.decode().startswith("infini-run info: error: ") and "manifest.json" in res.stderr.decode()
