"""The machine: CPU, memory, library versions, load, and its limits (fp32 GEMM rate, copy bandwidth)."""
from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from .proc import ROOT


def rnd(x, digits=4):
    return None if x is None else float(f"{x:.{digits}g}")



def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "logical_cpus": os.cpu_count(), "affinity_cpus": len(os.sched_getaffinity(0))}
    try:
        text = Path("/proc/cpuinfo").read_text()
        fields = {}
        for line in text.splitlines():
            if ":" in line:
                k, v = (s.strip() for s in line.split(":", 1))
                fields.setdefault(k, v)
        info["cpu_model"] = fields.get("model name")
        info["cores_per_socket"] = int(fields["cpu cores"]) if "cpu cores" in fields else None
        flags = set(fields.get("flags", "").split())
        info["simd"] = sorted(f for f in flags if f in (
            "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
            "amx_bf16", "amx_int8"))
        info["hypervisor"] = "hypervisor" in flags
    except OSError:
        pass
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()
        info["mem_total_gb"] = round(int(mem[1]) / 1024 ** 2, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def versions() -> dict:
    out = {"python": platform.python_version()}
    for lib in ("torch", "onnxruntime", "onnx", "onnxscript", "executorch", "torchao", "numpy", "infini-export"):
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def git_info() -> dict:
    def run(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001
            return ""
    paths = ["exporters/executorch.py", "runtime/backends/executorch.py", "exporters/onnx.py",
             "runtime/backends/ort.py", "runtime/session.py"]
    status = run("status", "--porcelain", "--", *paths)
    return {"commit": run("rev-parse", "HEAD")[:12], "uncommitted_backend_files": status.splitlines()}


def other_load() -> dict:
    """Load average and the busiest other processes: the machine is shared."""
    la = os.getloadavg()
    return {"loadavg_1m": round(la[0], 2), "loadavg_5m": round(la[1], 2)}


def import_runtimes() -> dict:
    """Import each runtime once, timed, so that session load times below do not include library imports."""
    out = {}
    for name, fn in (("onnxruntime", lambda: __import__("runtime.ortenv", fromlist=["x"]).import_onnxruntime()),
                     ("executorch", lambda: __import__("runtime.backends.executorch", fromlist=["x"])._load_pybindings()),
                     ("exporters", lambda: __import__("infini_export.eager", fromlist=["x"]))):
        t0 = time.perf_counter()
        try:
            fn()
            out[name] = {"seconds": round(time.perf_counter() - t0, 3), "ok": True}
        except Exception as exc:  # noqa: BLE001 - ImportError or InfiniRuntimeError: recorded
            out[name] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return out



def measure_gemm(sizes, reps, when: str) -> list[dict]:
    import torch

    out = []
    for n in sizes:
        rng = np.random.default_rng(n)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        for lib, fn in (("numpy", lambda: a @ b), ("torch", lambda: torch.matmul(ta, tb))):
            fn()  # warm-up: pages, thread pool, kernel selection
            best = math.inf
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            out.append({"lib": lib, "n": n, "seconds": rnd(best), "gflops": round(2 * n ** 3 / best / 1e9, 2),
                        "when": when})
    return out


def copy_bandwidth(nbytes: int = 256 << 20, reps: int = 5) -> float:
    """Bytes/s of a large numpy copy (read + write counted once each: 2 * nbytes per copy)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best
