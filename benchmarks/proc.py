"""Measurement processes: each measured export, stream and baseline runs in a process of its own.

Every such process reports ``runtime.measure.peak_rss_mb`` (VmHWM), which starts afresh at exec, so a child of
the (large) benchmark process reports its own peak, not its parent's.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the source tree, put first on the children's PYTHONPATH
WORKER = [sys.executable, "-m", "benchmarks.worker"]  # export jobs and the full-attention baseline
# the torch-free streaming command whose peak RSS is measured
RUN_STREAM = [sys.executable, "-m", "infini_cli", "run"]


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")  # one write: lines from threads stay whole
    sys.stderr.flush()


def run_json(cmd: list[str], timeout: float | None, env: dict | None = None, limit_gb: float | None = None) -> dict:
    """Run a subprocess whose last stdout line is JSON; never raises (errors become a record).

    ``limit_gb``: the child's address-space limit, so that one needing too much memory fails alone.
    """
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    limit = None
    if limit_gb is not None:
        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (int(limit_gb * 1e9), int(limit_gb * 1e9)))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
                              preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"timed out after {timeout} s",
                "process_seconds": round(time.perf_counter() - t0, 2)}
    secs = round(time.perf_counter() - t0, 2)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"status": "failed", "error": f"exit {proc.returncode}: {' | '.join(tail)[:500]}",
                "process_seconds": secs}
    out = json.loads(lines[-1])
    out.setdefault("status", "ok")
    out["process_seconds"] = secs
    return out
