"""The runtime as a device installs it: its wheel built from ``runtime/``, a new virtual environment holding that
wheel and its requirements only, the environment's size on disk, and ``infini-run generate``'s speed line read back.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEED = re.compile(r"prompt ([\d,]+) tokens: prefill ([\d,.]+|nan) tok/s .*?; (\d+) new tokens: decode ([\d,.]+|nan) "
                   r"tok/s \(([\d.]+) ms/token.*?open ([\d.]+) s; peak RSS ([\d,]+) MB")


def build_runtime_wheel(dist: Path) -> Path:
    """``infini_runtime-*.whl`` in ``dist``, built from a copy of ``runtime/`` (a build writes build/ and
    *.egg-info/ into the folder it reads)."""
    dist = Path(dist)
    src = dist.parent / f"{dist.name}-src" / "runtime"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(ROOT / "runtime", src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(src)], check=True, capture_output=True)
    shutil.rmtree(src.parent)
    wheels = sorted(dist.glob("infini_runtime-*-py3-none-any.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one runtime wheel in {dist}, found {[w.name for w in wheels]}")
    return wheels[0]


def device_env(venv: Path, wheel: Path, python: str = sys.executable, constraints: Path | None = None,
               with_pip: bool = False, compile: bool = True) -> Path:
    """A new virtual environment at ``venv`` with ``wheel`` installed from PyPI's requirements; its python.

    Without ``with_pip`` the environment gets no pip of its own: this process's pip installs into it
    (``pip --python``), which saves installing pip. ``compile=False``: no byte-compiling of every installed
    module (half the install time; what is imported is compiled when first imported).
    """
    venv = Path(venv)
    subprocess.run([python, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip"] if with_pip else [sys.executable, "-m", "pip", "--python", str(py)]
    res = subprocess.run([*pip, "install", "-q", *([] if compile else ["--no-compile"]),
                          "--find-links", str(Path(wheel).parent),
                          *(["-c", str(constraints)] if constraints else []), str(wheel)],
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"installing {wheel} into {venv} failed:\n{res.stdout}{res.stderr}")
    return py


def device_run(cmd: list, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command of a device environment: no PYTHONPATH, in ``cwd`` (away from the repository's folders)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONIOENCODING"] = "utf-8"
    return subprocess.run([str(c) for c in cmd], capture_output=True, cwd=cwd, env=env, timeout=timeout)


def dir_bytes(path: Path, skip: tuple[str, ...] = ()) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed), except the top-level names in ``skip``."""
    total = 0
    for top in Path(path).iterdir():
        if top.name in skip:
            continue
        if top.is_file() and not top.is_symlink():
            total += top.stat().st_size
        elif top.is_dir() and not top.is_symlink():
            for root, _, files in os.walk(top):
                total += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    return total


def parse_speed(stderr: str) -> dict:
    """The numbers of ``generate``'s speed line: prompt and new tokens, prefill / decode tok/s, open s, peak RSS."""
    m = SPEED.search(stderr)
    if m is None:
        raise ValueError(f"no speed line in: {stderr[-500:]!r}")
    num = [float(g.replace(",", "")) for g in m.groups()]
    return {"prompt_tokens": int(num[0]), "prefill_tok_s": num[1], "new_tokens": int(num[2]), "decode_tok_s": num[3],
            "ms_per_token": num[4], "open_s": num[5], "peak_rss_mb": num[6]}
