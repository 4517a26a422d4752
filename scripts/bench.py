"""Benchmarks (issue 6): speed and memory of every backend against eager torch, against full attention,
and against the machine's limit. Writes ``bench.json`` and PNG plots into ``--out``.

    python scripts/bench.py --smoke    # seconds: every backend once on tiny; well-formed JSON (CI)
    python scripts/bench.py --quick    # < 5 min: small/128/b1 + medium/512/b1, memory up to 32K tokens
    python scripts/bench.py            # < 30 min: everything; the numbers in docs/benchmarks.md

Sections of the JSON: ``machine``/``versions``/``settings``; ``gemm`` (best fp32 GEMM rate, measured at the start
and the end of the run); ``throughput`` (per config, per backend: tokens/s streamed, per-segment latency median
and p90, first-call latency, session load time, ratio to eager, model-FLOP utilisation); ``memory`` (Infini
through onnxruntime vs a full-attention transformer with a growing KV cache, each length in its own
process); ``export`` (wall time, peak RSS, artifact bytes of every export, each in its own process);
``targets`` (the issue's targets, met or missed).

Backends are measured side by side: all sessions of a config are open at once and take turns segment
slice by segment slice (round-robin, the order rotated every repetition), all with the same thread count.
"""
from __future__ import annotations

import argparse
import os
import sys


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="seconds: tiny preset, every backend once")
    mode.add_argument("--quick", action="store_true", help="under 5 minutes: a subset")
    p.add_argument("--out", default=None, help="output folder (default: docs/bench for the full run, "
                                                "docs/bench/quick for --quick, out/bench-smoke for --smoke)")
    p.add_argument("--threads", type=int, default=1, help="threads for every backend and the GEMM (default 1)")
    p.add_argument("--artifacts", default=None,
                   help="cache of exported artifacts, reused while the exporter and model sources and the library "
                        "versions are unchanged (default for --smoke and --quick: ~/.cache/infini-export/bench-artifacts; "
                        "the full run exports afresh into a temporary folder unless this is given)")
    p.add_argument("--fresh", action="store_true", help="export afresh into a temporary folder (no cache)")
    p.add_argument("--configs", default=None, help="comma list of preset/segment_len/batch, e.g. small/128/1")
    p.add_argument("--backends", default=None, help="comma list, a subset of " + ",".join(
        ["eager", "ort-fp32", "ort-int8", "et-xnnpack-fp32", "et-xnnpack-int8", "et-portable"]))
    p.add_argument("--memory-lengths", default=None, help="comma list of stream lengths, e.g. 4K,32K,128K,1M")
    p.add_argument("--baseline-budget", type=float, default=None, help="seconds per baseline length")
    p.add_argument("--config-budget", type=float, default=None, help="seconds of round-robin per config")
    p.add_argument("--skip", default="", help="comma list of sections to skip: throughput,memory,export-cost")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# Every measurement process is started by a lean "spawner" process, itself started here, before numpy,
# torch or onnxruntime are imported: Linux carries a process's peak RSS over fork + exec (the child's
# ru_maxrss starts at the parent's high-water mark), so a child of this (large) process would report at
# least our RSS. The spawner stays at ~10 MB, so ru_maxrss in its children is their own.
SPAWNER_CODE = r"""
import json, subprocess, sys, time
for line in sys.stdin:
    req = json.loads(line)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(req["cmd"], capture_output=True, text=True, timeout=req["timeout"], cwd=req["cwd"],
                           env=req["env"])
        resp = {"returncode": p.returncode, "stdout": p.stdout[-200000:], "stderr": p.stderr[-20000:]}
    except subprocess.TimeoutExpired:
        resp = {"returncode": None, "timeout": True, "stdout": "", "stderr": ""}
    resp["seconds"] = time.perf_counter() - t0
    sys.stdout.write(json.dumps(resp) + "\n")
    sys.stdout.flush()
"""


class SpawnerPool:
    """A few lean processes that run commands for us (see SPAWNER_CODE); thread-safe."""

    def __init__(self, n: int):
        import queue
        import subprocess as sp

        self._free = queue.Queue()
        self._procs = []
        for _ in range(n):
            proc = sp.Popen([sys.executable, "-S", "-c", SPAWNER_CODE], stdin=sp.PIPE, stdout=sp.PIPE, text=True,
                            bufsize=1)
            self._procs.append(proc)
            self._free.put(proc)

    def run(self, cmd: list, timeout: float, cwd: str, env: dict) -> dict:
        import json as _json

        proc = self._free.get()
        try:
            proc.stdin.write(_json.dumps({"cmd": cmd, "timeout": timeout, "cwd": cwd, "env": env}) + "\n")
            proc.stdin.flush()
            return _json.loads(proc.stdout.readline())
        finally:
            self._free.put(proc)

    def close(self) -> None:
        for proc in self._procs:
            proc.stdin.close()
            proc.wait(timeout=10)


ARGS = _parse_args() if __name__ == "__main__" else None
SPAWNERS = None
if ARGS is not None:  # thread pools are sized at import: set them before numpy / torch / onnxruntime load
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)
    SPAWNERS = SpawnerPool(3)

import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
HELPER = Path(__file__).resolve().parent / "bench_memory.py"

SCHEMA = "infini-export-bench/1"
BACKENDS = {  # name -> how its artifact is exported (None: the eager model itself)
    "eager": None,
    "ort-fp32": {"format": "onnx", "quantize": None, "delegate": "xnnpack"},
    "ort-int8": {"format": "onnx", "quantize": "int8", "delegate": "xnnpack"},
    "et-xnnpack-fp32": {"format": "executorch", "quantize": None, "delegate": "xnnpack"},
    "et-xnnpack-int8": {"format": "executorch", "quantize": "int8", "delegate": "xnnpack"},
    "et-portable": {"format": "executorch", "quantize": None, "delegate": "none"},
}
RUNTIME_OF = {"ort-fp32": "onnxruntime", "ort-int8": "onnxruntime", "et-xnnpack-fp32": "executorch",
              "et-xnnpack-int8": "executorch", "et-portable": "executorch"}

MODES = {
    "smoke": dict(configs=[("tiny", 16, 1)], min_reps=1, max_reps=1, config_budget=0.0, slice_seconds=0.0,
                  memory_preset=("tiny", 16), memory_lengths=[4096], baseline_budget=10.0,
                  gemm_sizes=[256, 512], gemm_reps=2, parity_segments=2, export_lanes=3, export_grouped=True, interleaved_gemm_n=256,
                  first_call_cap=20.0, timeout=300),
    "quick": dict(configs=[("small", 128, 1), ("medium", 512, 1)], min_reps=3, max_reps=40, config_budget=25.0,
                  slice_seconds=0.25, memory_preset=("small", 128), memory_lengths=[4096, 32768],
                  baseline_budget=45.0, gemm_sizes=[1024, 2048], gemm_reps=3, parity_segments=2, export_lanes=2, export_grouped=True, interleaved_gemm_n=1024,
                  first_call_cap=30.0, timeout=1200),
    "full": dict(configs=[(p, n, b) for p in ("tiny", "small", "medium") for n in (128, 512) for b in (1, 8)],
                 min_reps=3, max_reps=60, config_budget=20.0, slice_seconds=0.3, memory_preset=("small", 128),
                 memory_lengths=[4096, 32768, 131072, 1048576], baseline_budget=90.0,
                 gemm_sizes=[1024, 2048, 3072], gemm_reps=5, parity_segments=2, export_lanes=2, export_grouped=False, interleaved_gemm_n=1024,
                 first_call_cap=60.0, timeout=3600),
}


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")  # one write: lines from threads stay whole
    sys.stderr.flush()


def parse_len(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * mult)


def fmt_len(n: int) -> str:
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


def rnd(x, digits=4):
    return None if x is None else float(f"{x:.{digits}g}")


# ---- the machine ----------------------------------------------------------------------------------
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


# ---- the machine's limit: fp32 GEMM ---------------------------------------------------------------
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


# ---- model FLOPs ----------------------------------------------------------------------------------
def flops_per_token(cfg) -> dict:
    """Multiply-adds x 2 of what the exported graph computes per token (matmuls; elementwise not counted).

    Local attention is counted over the full N x N score matrix (the graph computes every score and masks
    half), the memory read is sigma(q) M and sigma(q) z, the delta rule adds sigma(k) M and sigma(k) z, and
    the write is sigma(k)^T (v - v_old), all per head. Embedding lookup: 0.
    """
    d, L, H, dh, ff, N, V = cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_ff, cfg.segment_len, cfg.vocab_size
    inner = H * dh
    per_layer = {
        "qkvo_projections": 2 * d * inner * 4,
        "swiglu_ffn": 2 * 3 * d * ff,
        "local_attention_NxN": 2 * 2 * N * dh * H,
        "memory_read": H * (2 * dh * dh + 2 * dh),
        "memory_update": H * ((2 * dh * dh + 2 * dh) if cfg.update == "delta" else 0) + H * 2 * dh * dh,
    }
    breakdown = {k: v * L for k, v in per_layer.items()}
    breakdown["lm_head"] = 2 * d * V
    total = sum(breakdown.values())
    # elementwise work (norms, RoPE, softmax exp/sum, sigma, gates), not in the MFU count, for scale
    elementwise = L * (H * N * 5 + inner * 14 + d * 8 + ff * 4)
    return {"total": total, "breakdown": breakdown, "elementwise_not_counted": elementwise}


# ---- exports --------------------------------------------------------------------------------------
def save_model_checkpoint(preset: str, seg: int, seed: int, directory: Path) -> dict:
    import torch

    from infini_export import InfiniConfig, InfiniTransformer, save_checkpoint

    cfg = InfiniConfig.from_name(preset, segment_len=seg)
    if not (directory / "model.safetensors").exists():
        torch.manual_seed(seed)
        model = InfiniTransformer(cfg)
        with torch.no_grad():  # gates off 0 so the heads mix differently, like a trained model
            for block in model.blocks:
                block.attn.beta.copy_(torch.linspace(-1.0, 1.0, block.attn.beta.numel()))
        save_checkpoint(model, directory)
    n_params = sum(p.numel() for p in __import__("infini_export").load_checkpoint(directory).parameters())
    return {"config": cfg.to_dict(), "parameters": n_params}


def run_json(cmd: list[str], timeout: float, env=None) -> dict:
    """Run a subprocess whose last stdout line is JSON; never raises (errors become a record)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if SPAWNERS is not None:
        proc = SPAWNERS.run(cmd, timeout, str(ROOT), env)
    else:  # imported as a module: no spawner (RSS of children may include ours)
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
            proc = {"returncode": p.returncode, "stdout": p.stdout, "stderr": p.stderr}
        except subprocess.TimeoutExpired:
            proc = {"returncode": None, "timeout": True, "stdout": "", "stderr": ""}
        proc["seconds"] = time.perf_counter() - t0
    secs = proc["seconds"]
    if proc.get("timeout"):
        return {"status": "failed", "error": f"timed out after {timeout:g} s", "process_seconds": round(secs, 2)}
    lines = [ln for ln in proc["stdout"].strip().splitlines() if ln.startswith("{")]
    if proc["returncode"] != 0 or not lines:
        tail = (proc["stderr"] or proc["stdout"]).strip().splitlines()[-3:]
        return {"status": "failed", "error": f"exit {proc['returncode']}: {' | '.join(tail)[:500]}",
                "process_seconds": round(secs, 2)}
    out = json.loads(lines[-1])
    out.setdefault("status", "ok")
    out["process_seconds"] = round(secs, 2)
    return out


def export_all(plan: list[tuple[str, int]], backends: list[str], art_root: Path, mode: dict, threads: int,
               seed: int) -> tuple[dict, list[dict]]:
    """Export every (preset, segment_len) x artifact backend; returns ({(preset, seg, backend): dir}, records)."""
    ckpts, jobs_by_ckpt = {}, {}
    for preset, seg in plan:
        ckpt = art_root / f"ckpt_{preset}_{seg}"
        ckpts[(preset, seg)] = save_model_checkpoint(preset, seg, seed, ckpt)
        for b in backends:
            if BACKENDS[b] is None:
                continue
            out = art_root / f"{preset}_{seg}_{b}"
            job = {"name": b, **BACKENDS[b], "out": str(out), "parity_segments": mode["parity_segments"],
                   "preset": preset, "segment_len": seg, "checkpoint": str(ckpt)}
            jobs_by_ckpt.setdefault(str(ckpt), []).append(job)
    dirs, records, todo = {}, [], []
    for ckpt, jobs in jobs_by_ckpt.items():
        for job in jobs:
            rec_file = Path(job["out"]) / "bench_export.json"
            if rec_file.exists():  # --artifacts: reuse an earlier export (its cost as measured then)
                rec = json.loads(rec_file.read_text())
                rec["reused"] = True
                records.append(rec)
            else:
                todo.append(job)
    lanes = mode["export_lanes"]
    if mode["export_grouped"]:  # smoke/quick: jobs share processes (grouped by runtime); timings overlap
        groups: dict[tuple, list] = {}
        for job in todo:
            key = (job["checkpoint"], job["format"], job["quantize"] if job["format"] == "executorch" else None)
            groups.setdefault(key, []).append(job)
        batches = sorted(groups.values(), key=lambda g: -sum(3 if j["format"] == "executorch" else 1 for j in g))
    else:  # full: one process per export (its own peak RSS; wall time with `lanes` single-threaded exports
        # running at once on this many-core machine, CPU time unaffected)
        batches = [[job] for job in todo]

    def run_batch(batch):
        jobs_file = Path(tempfile.mkstemp(prefix="jobs_", suffix=".json", dir=art_root)[1])
        jobs_file.write_text(json.dumps(batch))
        log(f"export {'; '.join(j['preset'] + '/' + str(j['segment_len']) + ' ' + j['name'] for j in batch)}")
        res = run_json([sys.executable, str(HELPER), "export", "--checkpoint", batch[0]["checkpoint"],
                        "--jobs", str(jobs_file), "--threads", str(threads)], timeout=mode["timeout"])
        jobs_file.unlink()
        out = []
        if res.get("status") != "ok":
            for job in batch:
                out.append({"name": job["name"], "status": "failed", "error": res.get("error")})
        else:
            out = res["jobs"]
        for job, rec in zip(batch, out):
            rec.update(preset=job["preset"], segment_len=job["segment_len"], backend=job["name"],
                       shared_process=len(batch) > 1, concurrent_lanes=lanes, reused=False)
            if rec.get("status") == "ok":
                Path(job["out"], "bench_export.json").write_text(json.dumps(rec))
        return out

    with ThreadPoolExecutor(max_workers=max(1, lanes)) as pool:
        for out in pool.map(run_batch, batches):
            records.extend(out)
    for rec in records:
        if rec.get("status") == "ok":
            dirs[(rec["preset"], rec["segment_len"], rec["backend"])] = Path(rec["out"])
    return {"checkpoints": ckpts, "dirs": dirs}, records


def source_key(seed: int) -> str:
    """What an exported artifact depends on: model and exporter sources, library versions, seed, schema."""
    import hashlib

    h = hashlib.sha256(json.dumps([SCHEMA, seed, versions()], sort_keys=True).encode())
    files = sorted((ROOT / "exporters").glob("*.py")) + [ROOT / "infini_export" / f"{m}.py" for m in (
        "config", "model", "protocol", "state", "checkpoint")]
    for f in files:
        if f.exists():
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    h.update(HELPER.read_bytes())
    return h.hexdigest()[:16]


# ---- throughput: all backends of a config side by side ------------------------------------------
class Runner:
    """One backend's session for one config, plus its measurements."""

    def __init__(self, name: str):
        self.name, self.session, self.lat, self.status, self.reason = name, None, [], "ok", None
        self.load_seconds = self.first_call = None


def open_runner(name: str, cfg_key, ckpt_dir: Path, art_dir: Path | None, batch: int, threads: int) -> Runner:
    r = Runner(name)
    t0 = time.perf_counter()
    try:
        if name == "eager":
            from infini_export.checkpoint import load_checkpoint
            from infini_export.eager import eager_session
            r.session = eager_session(load_checkpoint(ckpt_dir).eval(), batch_size=batch)
        else:
            from runtime.session import InfiniSession
            r.session = InfiniSession.open(art_dir, backend=RUNTIME_OF[name], batch_size=batch, threads=threads)
        r.load_seconds = time.perf_counter() - t0
    except ImportError as exc:
        r.status, r.reason = "unavailable", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a backend that cannot open is recorded, not hidden
        cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else None
        r.status = "unavailable" if cause else "failed"
        r.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return r


class _GemmSlice:
    """Looks like a session to the round-robin: ``stream`` runs one n x n float32 matmul."""

    def __init__(self, n: int):
        import torch

        self.n, self.flops = n, 2.0 * n ** 3
        g = torch.Generator().manual_seed(n)
        self.a, self.b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)

    def stream(self, _ids):
        import torch

        torch.matmul(self.a, self.b)


def measure_config(preset, seg, batch, backends, ctx, mode, threads, rates, seed) -> dict:
    from infini_export import InfiniConfig

    cfg = InfiniConfig.from_name(preset, segment_len=seg)
    fpt = flops_per_token(cfg)
    seg_flops = fpt["total"] * seg * batch
    ckpt_dir = ctx["art_root"] / f"ckpt_{preset}_{seg}"
    rng = np.random.default_rng(seed)
    pool = [rng.integers(0, cfg.vocab_size, (batch, seg), dtype=np.int64) for _ in range(8)]
    runners = []
    for name in backends:
        if name != "eager" and (preset, seg, name) not in ctx["dirs"]:
            r = Runner(name)
            rec = ctx["export_status"].get((preset, seg, name), {})
            r.status = "unavailable" if rec.get("status") == "unavailable" else "failed"
            r.reason = f"export {rec.get('status', 'missing')}: {rec.get('error', '')}"[:400]
            runners.append(r)
            continue
        # a backend far too slow for this config (portable kernels on the 20M model) is predicted from
        # the FLOP rate it reached on a smaller config, and skipped with the prediction recorded
        if name in rates and seg_flops / rates[name] > mode["first_call_cap"]:
            r = Runner(name)
            r.status = "skipped"
            r.predicted_segment_seconds = seg_flops / rates[name]
            r.reason = (f"predicted {r.predicted_segment_seconds:.0f} s per segment from the "
                        f"{rates[name] / 1e9:.2f} GFLOP/s it reached on a smaller config (cap "
                        f"{mode['first_call_cap']:g} s)")
            runners.append(r)
            continue
        r = open_runner(name, (preset, seg), ckpt_dir, ctx["dirs"].get((preset, seg, name)), batch, threads)
        runners.append(r)
    live = [r for r in runners if r.status == "ok"]
    # first call (cold), then a second warm call to size each backend's time slice
    for r in live:
        try:
            t0 = time.perf_counter()
            r.session.stream(pool[0])
            r.first_call = time.perf_counter() - t0
            t0 = time.perf_counter()
            r.session.stream(pool[1])
            r.warm = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001
            r.status, r.reason = "failed", f"{type(exc).__name__}: {str(exc)[:300]}"
    live = [r for r in live if r.status == "ok"]
    # a GEMM slice takes its turn in the round-robin too: the machine's rate under the same conditions
    gemm = Runner("_gemm")
    gemm.session = _GemmSlice(mode["interleaved_gemm_n"])
    gemm.session.stream(None)
    t0 = time.perf_counter()
    gemm.session.stream(None)
    gemm.warm = time.perf_counter() - t0
    live.append(gemm)
    for r in live:
        r.k = max(1, min(64, round(mode["slice_seconds"] / max(r.warm, 1e-6)))) if mode["slice_seconds"] else 1
    t_start, rep = time.perf_counter(), 0
    while live and rep < mode["max_reps"]:
        if rep >= mode["min_reps"] and time.perf_counter() - t_start > mode["config_budget"]:
            break
        order = live[rep % len(live):] + live[:rep % len(live)]  # rotate: no backend always goes first
        for r in order:
            for j in range(r.k):
                ids = pool[(rep * r.k + j) % len(pool)]
                t0 = time.perf_counter()
                r.session.stream(ids)
                r.lat.append(time.perf_counter() - t0)
        rep += 1
    g_rates = gemm.session.flops / np.array(gemm.lat)
    interleaved = {"n": gemm.session.n, "slices": len(gemm.lat), "median_gflops": round(float(np.median(g_rates)) / 1e9, 2),
                   "best_gflops": round(float(g_rates.max()) / 1e9, 2)}
    results = {}
    for r in runners:
        rec = {"status": r.status}
        if r.status != "ok":
            rec["reason"] = r.reason
            if hasattr(r, "predicted_segment_seconds"):
                rec["predicted_segment_seconds"] = round(r.predicted_segment_seconds, 1)
            results[r.name] = rec
            continue
        lat = np.array(r.lat)
        tps = batch * seg * len(lat) / lat.sum()
        tps_med = batch * seg / float(np.median(lat))
        rate = tps * fpt["total"]
        rates[r.name] = max(rates.get(r.name, 0.0), rate)
        rec.update(tokens_per_second=round(tps, 1), tokens_per_second_from_median=round(tps_med, 1),
                   mfu_vs_interleaved_gemm=round(tps_med * fpt["total"] / (interleaved["median_gflops"] * 1e9), 4),
                   segments_measured=int(len(lat)), repetitions=rep,
                   segments_per_slice=r.k,
                   latency_ms={"median": rnd(1e3 * float(np.median(lat))), "p90": rnd(1e3 * float(np.percentile(lat, 90))),
                               "min": rnd(1e3 * float(lat.min())), "max": rnd(1e3 * float(lat.max()))},
                   first_call_ms=rnd(1e3 * r.first_call), load_seconds=rnd(r.load_seconds),
                   achieved_gflops=round(rate / 1e9, 3))
        results[r.name] = rec
    eager = results.get("eager", {}).get("tokens_per_second")
    eager_med = results.get("eager", {}).get("tokens_per_second_from_median")
    for rec in results.values():
        if rec["status"] == "ok":
            rec["ratio_to_eager"] = round(rec["tokens_per_second"] / eager, 3) if eager else None
            rec["ratio_to_eager_from_median"] = (round(rec["tokens_per_second_from_median"] / eager_med, 3)
                                                 if eager_med else None)
    for r in runners:  # free the sessions before the next config
        r.session = None
    return {"preset": preset, "segment_len": seg, "batch": batch, "parameters": ctx["params"][(preset, seg)],
            "flops_per_token": fpt["total"], "flops_breakdown": fpt["breakdown"],
            "elementwise_flops_per_token_not_counted": fpt["elementwise_not_counted"],
            "seconds": round(time.perf_counter() - t_start, 2), "interleaved_gemm": interleaved, "results": results}


# ---- memory: Infini (onnxruntime) vs full attention with a growing KV cache ------------------------
RSS_REPEATS = 3  # Infini processes per stream length (median peak RSS)


def memory_section(art_dir: Path | None, preset: str, seg: int, lengths: list[int], budget: float, threads: int,
                   timeout: float) -> dict:
    from infini_export import InfiniConfig

    cfg = InfiniConfig.from_name(preset, segment_len=seg)
    infini, baseline = [], []
    for n in lengths:
        if art_dir is None:
            infini.append({"tokens": n, "status": "unavailable", "error": "no onnxruntime fp32 artifact"})
            continue
        log(f"memory: Infini (onnxruntime) {fmt_len(n)} tokens, {RSS_REPEATS} processes")
        runs = [run_json([sys.executable, "-m", "infini_export.cli", "run", str(art_dir), "--random-tokens", str(n),
                          "--quiet", "--threads", str(threads), "--backend", "onnxruntime"], timeout=timeout)
                for _ in range(RSS_REPEATS)]
        ok = [r for r in runs if r.get("status") == "ok"]
        # one process's peak RSS varies by ~1-2 MB whatever the length (allocator and page-fault luck): the
        # median of a few processes per length is what is compared across lengths; all of them are kept
        rec = sorted(ok, key=lambda r: r["peak_rss_mb"])[len(ok) // 2] if ok else runs[0]
        rec["peak_rss_mb_runs"] = [r.get("peak_rss_mb") for r in runs]
        rec["tokens_requested"] = n
        if rec.get("tokens_per_second"):
            rec["us_per_token"] = round(1e6 / rec["tokens_per_second"], 3)
        rec.pop("last_logits_sha256", None)
        infini.append(rec)
    stop = None
    for n in lengths:
        if stop:
            baseline.append({"tokens_requested": n, "status": "not run", "stopped": f"not run: {stop}"})
            continue
        log(f"memory: full-attention baseline {fmt_len(n)} tokens (budget {budget:g} s)")
        rec = run_json([sys.executable, str(HELPER), "baseline", "--preset", preset, "--segment-len", str(seg),
                        "--tokens", str(n), "--budget", str(budget), "--threads", str(threads)],
                       timeout=budget * 3 + 120)
        baseline.append(rec)
        if rec.get("status") != "ok":
            stop = f"the {fmt_len(n)} run failed"
        elif rec.get("stopped"):
            stop = f"the {fmt_len(n)} run stopped at {rec['tokens']:,} tokens ({rec['stopped']})"
    # state vs KV cache, at every length (analytic; the KV cache also measured where the baseline got there)
    paper = 4 * cfg.n_layers * cfg.d_head * (cfg.d_head + 1) * cfg.n_heads  # d_key (d_value + 1) H per layer
    state_rows = []
    for i, n in enumerate(lengths):
        kv = 2 * cfg.n_layers * cfg.n_heads * cfg.d_head * n * 4
        measured = infini[i].get("state_bytes") if infini[i].get("status") == "ok" else None
        b = baseline[i]
        state_rows.append({"tokens": n, "infini_state_bytes": measured if measured is not None else cfg.state_bytes(1),
                           "infini_state_measured": measured is not None, "paper_formula_bytes": paper,
                           "paper_formula_numbers": paper // 4, "kv_cache_bytes": kv,
                           "kv_cache_measured": b.get("status") == "ok" and b.get("tokens") == n,
                           "kv_over_state": round(kv / (measured or cfg.state_bytes(1)), 1)})
    ok_rss = [r["peak_rss_mb"] for r in infini if r.get("status") == "ok"]
    flat = None
    if len(ok_rss) >= 2:
        flat = {"min_mb": min(ok_rss), "max_mb": max(ok_rss),
                "spread_percent": round(100 * (max(ok_rss) - min(ok_rss)) / min(ok_rss), 2),
                "first_mb": ok_rss[0], "last_mb": ok_rss[-1],
                "last_over_first_percent": round(100 * (ok_rss[-1] - ok_rss[0]) / ok_rss[0], 2)}
    done = [r for r in baseline if r.get("status") == "ok" and r.get("tokens")]
    growth = None
    if len(done) >= 2:
        x = np.array([r["tokens"] for r in done], dtype=float)
        y = np.array([r["peak_rss_mb"] for r in done], dtype=float)
        slope, icpt = np.polyfit(x, y, 1)
        pred = slope * x + icpt
        r2 = 1 - ((y - pred) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
        growth = {"mb_per_1k_tokens": round(slope * 1024, 4), "intercept_mb": round(icpt, 1), "r2": round(float(r2), 4),
                  "kv_cache_mb_per_1k_tokens": round(2 * cfg.n_layers * cfg.n_heads * cfg.d_head * 1024 * 4 / 2 ** 20, 4),
                  "points": len(done)}
    return {"preset": preset, "segment_len": seg, "config": cfg.to_dict(), "threads": threads,
            "infini_backend": "onnxruntime fp32 (`infini-export run --random-tokens N --quiet`)",
            "baseline_desc": "plain causal transformer, same width/depth/heads/FFN/vocab, eager torch, "
                             "F.scaled_dot_product_attention, chunks of segment_len, KV cache grown 1.5x when full",
            "baseline_budget_seconds": budget, "lengths": lengths, "infini": infini, "baseline": baseline,
            "state": state_rows, "infini_rss_flatness": flat, "baseline_rss_growth": growth}


# ---- targets --------------------------------------------------------------------------------------
def find(throughput, preset, seg, batch):
    for c in throughput:
        if (c["preset"], c["segment_len"], c["batch"]) == (preset, seg, batch):
            return c
    return None


def tps(conf, name):
    if conf is None:
        return None
    r = conf["results"].get(name, {})
    return r.get("tokens_per_second") if r.get("status") == "ok" else None


def evaluate_targets(throughput, memory, gemm_best) -> list[dict]:
    out = []

    def add(name, target, measured, met, note=""):
        out.append({"name": name, "target": target, "measured": measured, "met": met, "note": note})

    c = find(throughput, "small", 128, 1)
    e = tps(c, "eager")
    for b, need in (("ort-fp32", 2.0), ("et-xnnpack-fp32", 1.5)):
        v = tps(c, b)
        ratio = round(v / e, 3) if v and e else None
        add(f"{b} vs eager, small/128/b1", f">= {need}x eager tokens/s", ratio,
            None if ratio is None else ratio >= need, "" if c else "config not measured")
    for q, f in (("ort-int8", "ort-fp32"), ("et-xnnpack-int8", "et-xnnpack-fp32")):
        for key in (("small", 128, 1), ("medium", 512, 1)):
            cc = find(throughput, *key)
            a, b = tps(cc, q), tps(cc, f)
            ratio = round(a / b, 3) if a and b else None
            add(f"{q} vs {f}, {key[0]}/{key[1]}/b{key[2]}", "int8 faster than fp32 (> 1x)", ratio,
                None if ratio is None else ratio > 1.0, "" if cc else "config not measured")
    for batch in (1, 8):
        cc = find(throughput, "medium", 512, batch)
        if cc is None:
            if batch == 1:
                add("MFU of the fastest backend, medium/512/b1", ">= 50% of the measured GEMM rate", None, None,
                    "config not measured")
            continue
        ok = {k: v for k, v in cc["results"].items() if v.get("status") == "ok"}
        if not ok:
            continue
        best = max(ok, key=lambda k: ok[k]["tokens_per_second"])
        mfu = ok[best]["tokens_per_second"] * cc["flops_per_token"] / gemm_best
        add(f"MFU of the fastest backend, medium/512/b{batch}", ">= 50% of the measured GEMM rate",
            round(float(mfu), 4), bool(mfu >= 0.5),
            f"fastest: {best}" + (" (int8 kernels measured against the fp32 GEMM rate)" if "int8" in best else ""))
        fp32 = {k: v for k, v in ok.items() if "int8" not in k}
        if fp32 and "int8" in best:
            b32 = max(fp32, key=lambda k: fp32[k]["tokens_per_second"])
            m32 = fp32[b32]["tokens_per_second"] * cc["flops_per_token"] / gemm_best
            add(f"MFU of the fastest fp32 backend, medium/512/b{batch}", ">= 50% of the measured GEMM rate "
                "(like for like: fp32 model vs fp32 GEMM)", round(float(m32), 4), bool(m32 >= 0.5), f"fastest fp32: {b32}")
    if memory:
        flat = memory.get("infini_rss_flatness")
        lens = [r["tokens_requested"] for r in memory["infini"] if r.get("status") == "ok"]
        span = f"{fmt_len(lens[0])}..{fmt_len(lens[-1])}" if lens else "-"
        add(f"Infini peak RSS flat ({span})", "within 2% from 4K to 1M tokens",
            flat["spread_percent"] if flat else None, (flat["spread_percent"] <= 2.0) if flat else None,
            "" if lens and lens[-1] >= 1 << 20 else "1M not measured in this mode")
        g = memory.get("baseline_rss_growth")
        add("baseline peak RSS grows linearly", "linear in tokens (R^2 of a line through the measured points)",
            g["r2"] if g else None, (g["r2"] >= 0.98) if g else None,
            f"slope {g['mb_per_1k_tokens']} MB/1K tokens vs KV cache {g['kv_cache_mb_per_1k_tokens']}" if g else
            "fewer than 2 baseline points")
        row = memory["state"][-1]
        add(f"state vs KV cache at {fmt_len(row['tokens'])}", ">= 1000x smaller at 1M tokens",
            row["kv_over_state"], row["kv_over_state"] >= 1000 if row["tokens"] >= 1 << 20 else None,
            "KV cache bytes " + ("measured" if row["kv_cache_measured"] else "analytic (2 L H dh T x 4 B; the "
                                 "baseline did not get there)"))
    return out


# ---- plots ----------------------------------------------------------------------------------------
COLORS = {"eager": "#555555", "ort-fp32": "#1f77b4", "ort-int8": "#aec7e8", "et-xnnpack-fp32": "#d62728",
          "et-xnnpack-int8": "#ff9896", "et-portable": "#9467bd"}


def plots(result: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    thr = result["throughput"]
    if thr:
        names = list(BACKENDS)
        labels = [f"{c['preset']}/{c['segment_len']}/b{c['batch']}" for c in thr]
        fig, axes = plt.subplots(2, 1, figsize=(max(7, 1.1 * len(thr) + 3), 8), sharex=True)
        w = 0.8 / len(names)
        for i, n in enumerate(names):
            xs = np.arange(len(thr)) + (i - len(names) / 2 + 0.5) * w
            t = [c["results"].get(n, {}).get("tokens_per_second") or 0 for c in thr]
            m = [100 * (c["results"].get(n, {}).get("mfu") or 0) for c in thr]
            axes[0].bar(xs, t, w, label=n, color=COLORS[n])
            axes[1].bar(xs, m, w, label=n, color=COLORS[n])
        axes[0].set_yscale("log")
        axes[0].set_ylabel("tokens/s streamed (log)")
        axes[0].set_title(f"Throughput per backend ({result['settings']['threads']} thread(s); missing bar: "
                          "unavailable or skipped)")
        axes[0].legend(fontsize=8, ncol=3)
        axes[1].set_ylabel("model FLOP utilisation (% of best GEMM)")
        axes[1].axhline(50, color="k", lw=0.8, ls="--")
        axes[1].set_xticks(np.arange(len(thr)), labels, rotation=30, ha="right")
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=110)
        plt.close(fig)
        files.append("throughput.png")
    mem = result.get("memory")
    if mem:
        inf = [r for r in mem["infini"] if r.get("status") == "ok"]
        base = [r for r in mem["baseline"] if r.get("status") == "ok" and r.get("tokens")]
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
        ax = axes[0]
        ax.plot([r["tokens"] for r in inf], [r["peak_rss_mb"] for r in inf], "o-", label="Infini (onnxruntime)")
        ax.plot([r["tokens"] for r in base], [r["peak_rss_mb"] for r in base], "s-", label="full attention + KV cache")
        for r in base:
            if r.get("stopped"):
                ax.annotate("stopped: " + r["stopped"].split(":")[0], (r["tokens"], r["peak_rss_mb"]), fontsize=8)
        ax.set(xscale="log", yscale="log", xlabel="tokens streamed", ylabel="peak RSS (MB)", title="Peak RSS")
        ax.legend(fontsize=8)
        ax = axes[1]
        ax.plot([r["tokens"] for r in inf], [r["us_per_token"] for r in inf], "o-", label="Infini (mean)")
        ax.plot([r["tokens"] for r in base], [r["us_per_token"] for r in base], "s-", label="full attention (mean)")
        ax.plot([r["tokens"] for r in base], [r["last_chunk_us_per_token"] for r in base], "s--",
                label="full attention (last chunk)")
        ax.set(xscale="log", yscale="log", xlabel="tokens streamed", ylabel="µs per token", title="Time per token")
        ax.legend(fontsize=8)
        ax = axes[2]
        st = mem["state"]
        xs = [r["tokens"] for r in st]
        ax.plot(xs, [r["kv_cache_bytes"] for r in st], "s-", label="KV cache (2 L H dh T x 4 B)")
        ax.plot(xs, [r["infini_state_bytes"] for r in st], "o-", label="Infini state (measured)")
        ax.plot(xs, [r["paper_formula_bytes"] for r in st], "k:", label="paper: dk (dv+1) H per layer x 4 B")
        ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel="bytes", title="State vs KV cache")
        ax.legend(fontsize=8)
        fig.suptitle(f"{mem['preset']} (d={mem['config']['d_model']}, L={mem['config']['n_layers']}), segment "
                     f"{mem['segment_len']}, {mem['threads']} thread(s)")
        fig.tight_layout()
        fig.savefig(out / "memory.png", dpi=110)
        plt.close(fig)
        files.append("memory.png")
    exp = [r for r in result["export"] if r.get("status") == "ok"]
    if exp:
        labels = [f"{r['preset']}/{r['segment_len']}\n{r['backend']}" for r in exp]
        fig, axes = plt.subplots(3, 1, figsize=(max(8, 0.45 * len(exp) + 2), 9), sharex=True)
        x = np.arange(len(exp))
        col = [COLORS[r["backend"]] for r in exp]
        axes[0].bar(x, [r["wall_seconds"] for r in exp], color=col, label="wall")
        axes[0].plot(x, [r.get("cpu_seconds") or np.nan for r in exp], "k_", ms=18, mew=2, label="CPU")
        axes[0].set_ylabel("seconds")
        axes[0].legend(fontsize=8)
        axes[0].set_title("Export cost: export + parity check, " +
                          ("each in its own process" if not any(r.get("shared_process") for r in exp) else
                           "some in a shared process"), fontsize=10)
        axes[1].bar(x, [r["peak_rss_mb"] for r in exp], color=col)
        axes[1].set_ylabel("peak RSS MB")
        axes[2].bar(x, [r["artifact_bytes"] / 1e6 for r in exp], color=col)
        axes[2].set_ylabel("artifact MB")
        axes[2].set_xticks(x, labels, rotation=90, fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "export.png", dpi=110)
        plt.close(fig)
        files.append("export.png")
    return files


# ---- markdown tables (pasted into docs/benchmarks.md) --------------------------------------------
def _f(x, nd=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        if x >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{nd}g}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def tables_markdown(result: dict) -> str:
    m, v, st = result["machine"], result["versions"], result["settings"]
    lines = [f"Measured {result['created']} ({result['mode']} mode, {result['duration_seconds']:.0f} s): "
             f"{m.get('cpu_model')}, {m.get('logical_cpus')} logical CPUs, {m.get('mem_total_gb')} GB; "
             f"{st['threads']} thread(s) for every backend and the GEMM; load average {result['load_start']['loadavg_1m']}"
             f" at the start, {result['load_end']['loadavg_1m']} at the end. "
             + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".", ""]
    g = result["gemm"]
    lines += [f"Best fp32 GEMM: **{g['best_gflops']:.1f} GFLOP/s** ({g['best']['lib']}, n={g['best']['n']}, "
              f"{g['best']['when']} of the run).", ""]
    thr = result["throughput"]
    names = list(BACKENDS)
    if thr:
        lines += ["| config | params | MFLOP/token | " + " | ".join(names) + " |",
                  "|---|---|---|" + "---|" * len(names)]
        for c in thr:
            cells = []
            for n in names:
                r = c["results"].get(n, {})
                if r.get("status") == "ok":
                    cells.append(f"{r['tokens_per_second']:,.0f} ({r['ratio_to_eager']:.2f}x)")
                else:
                    cells.append(r.get("status", "-"))
            lines.append(f"| {c['preset']}/{c['segment_len']}/b{c['batch']} | {c['parameters'] / 1e6:.2f}M | "
                         f"{c['flops_per_token'] / 1e6:.2f} | " + " | ".join(cells) + " |")
        lines += ["", "tokens/s streamed (ratio to eager torch). GEMM rate interleaved with the backends, median "
                  "(best) GFLOP/s: " + "; ".join(f"{c['preset']}/{c['segment_len']}/b{c['batch']} "
                                                 f"{c['interleaved_gemm']['median_gflops']:.0f} "
                                                 f"({c['interleaved_gemm']['best_gflops']:.0f})" for c in thr) + ".",
                  "", "Per backend (x eager (medians): ratio of per-segment median latencies; MFU: against the best "
                  "GEMM rate of the run; MFU vs interleaved GEMM: median rate against the median GEMM rate of "
                  "the same round-robin, robust to load from other processes):", "",
                  "| config | backend | tokens/s | x eager | x eager (medians) | MFU | MFU vs interleaved GEMM | "
                  "latency median ms | p90 ms | first call ms | load s | segments |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in thr:
            for n in names:
                r = c["results"].get(n, {})
                key = f"{c['preset']}/{c['segment_len']}/b{c['batch']}"
                if r.get("status") != "ok":
                    lines.append(f"| {key} | {n} | {r.get('status', '-')}: {str(r.get('reason', ''))[:90]} |"
                                 " | | | | | | | | | |")
                    continue
                lines.append(f"| {key} | {n} | {r['tokens_per_second']:,.0f} | {r['ratio_to_eager']:.2f} | "
                             f"{r['ratio_to_eager_from_median']:.2f} | {100 * r['mfu']:.1f}% | "
                             f"{100 * r['mfu_vs_interleaved_gemm']:.1f}% | {_f(r['latency_ms']['median'])} | "
                             f"{_f(r['latency_ms']['p90'])} | {_f(r['first_call_ms'])} | {_f(r['load_seconds'])} | "
                             f"{r['segments_measured']} |")
        lines.append("")
    mem = result.get("memory")
    if mem:
        lines += [f"Memory: {mem['preset']}, segment {mem['segment_len']}; Infini through onnxruntime fp32 "
                  "(`infini-export run --random-tokens N --quiet`), baseline: " + mem["baseline_desc"] + ".", "",
                  "| tokens | Infini peak RSS MB (median of the processes; range) | Infini µs/token | baseline peak RSS MB | baseline µs/token "
                  "(mean / last chunk) | baseline run | Infini state B | paper formula B | KV cache B | KV / state |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for i, n in enumerate(mem["lengths"]):
            a, b, srow = mem["infini"][i], mem["baseline"][i], mem["state"][i]
            if b.get("status") == "ok":
                brun = "complete" if not b.get("stopped") else f"stopped at {b['tokens']:,} ({b['stopped']})"
                bcells = (f"{_f(b['peak_rss_mb'])} | {_f(b['us_per_token'])} / {_f(b['last_chunk_us_per_token'])}"
                          f" | {brun}")
            else:
                bcells = f"- | - | {b.get('stopped') or b.get('error') or b.get('status')}"
            kv = f"{srow['kv_cache_bytes']:,}" + ("" if srow["kv_cache_measured"] else " (analytic)")
            runs = a.get("peak_rss_mb_runs") or []
            spread = f" ({min(runs)}-{max(runs)})" if len(runs) > 1 and None not in runs else ""
            lines.append(f"| {fmt_len(n)} | {_f(a.get('peak_rss_mb'))}{spread} | {_f(a.get('us_per_token'))} | {bcells} | "
                         f"{srow['infini_state_bytes']:,} | {srow['paper_formula_bytes']:,} | {kv} | "
                         f"{srow['kv_over_state']:,.0f}x |")
        lines.append("")
    exp = result["export"]
    if exp:
        lines += ["| model | backend | wall s | CPU s | peak RSS MB | artifact MB | parity | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in exp:
            note = ", ".join(x for x in ("shared a process" if r.get("shared_process") else "",
                                         f"{r.get('concurrent_lanes')} at once" if (r.get("concurrent_lanes") or 1) > 1
                                         else "") if x)
            note += " reused" if r.get("reused") else ""
            if r.get("status") != "ok":
                lines.append(f"| {r.get('preset')}/{r.get('segment_len')} | {r.get('backend')} | {r['status']}: "
                             f"{str(r.get('error'))[:80]} | | | | | |")
                continue
            lines.append(f"| {r['preset']}/{r['segment_len']} | {r['backend']} | {_f(r['wall_seconds'])} | "
                         f"{_f(r.get('cpu_seconds'))} | {_f(r['peak_rss_mb'])} | {r['artifact_bytes'] / 1e6:.2f} | "
                         f"{'passed' if r.get('parity_passed') else 'FAILED'} | {note} |")
        lines.append("")
    lines += ["| target | wanted | measured | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        mark = {True: "**met**", False: "**missed**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['name']} | {t['target']} | {_f(t['measured'], 4)} {t['note']} | {mark} |")
    return "\n".join(lines) + "\n"


def _json_default(o):
    if isinstance(o, (np.bool_, np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


# ---- main -----------------------------------------------------------------------------------------
def main(args) -> int:
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = dict(MODES[mode_name])
    out = Path(args.out or {"smoke": "out/bench-smoke", "quick": "docs/bench/quick", "full": "docs/bench"}[mode_name])
    out = out if out.is_absolute() else (Path.cwd() / out)
    out.mkdir(parents=True, exist_ok=True)
    threads = args.threads
    if args.configs:
        mode["configs"] = [tuple(int(x) if i else x for i, x in enumerate(c.split("/"))) for c in args.configs.split(",")]
    if args.memory_lengths:
        mode["memory_lengths"] = [parse_len(x) for x in args.memory_lengths.split(",")]
    if args.baseline_budget is not None:
        mode["baseline_budget"] = args.baseline_budget
    if args.config_budget is not None:
        mode["config_budget"] = args.config_budget
    backends = args.backends.split(",") if args.backends else list(BACKENDS)
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise SystemExit(f"unknown backends {unknown}; expected a subset of {list(BACKENDS)}")
    skip = {s for s in args.skip.split(",") if s}

    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    t_run = time.perf_counter()
    result = {"schema": SCHEMA, "mode": mode_name, "created": datetime.datetime.now(datetime.timezone.utc)
              .isoformat(timespec="seconds"), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "machine": machine_info(), "versions": versions(), "git": git_info(), "load_start": other_load(),
              "settings": {"threads": threads, "backends": backends,
                           "configs": [list(c) for c in mode["configs"]],
                           **{k: mode[k] for k in ("min_reps", "max_reps", "config_budget", "slice_seconds",
                                                   "memory_lengths", "baseline_budget", "gemm_sizes", "gemm_reps",
                                                   "parity_segments", "export_lanes", "export_grouped")},
                           "memory_preset": list(mode["memory_preset"]), "seed": args.seed}}
    log(f"mode {mode_name}, {threads} thread(s), out {out}")
    result["imports"] = import_runtimes()
    gemm = measure_gemm(mode["gemm_sizes"], mode["gemm_reps"], "start")
    log(f"GEMM best so far {max(g['gflops'] for g in gemm):.1f} GFLOP/s")

    default_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "infini-export" / "bench-artifacts"
    cache = None if args.fresh else (args.artifacts or (str(default_cache) if mode_name != "full" else None))
    if cache:
        key = source_key(args.seed)
        cache_root = (ROOT / cache) if not Path(cache).is_absolute() else Path(cache)
        art_root = cache_root / key
        if cache_root.is_dir():  # artifacts of older sources are never reused: drop them
            for old in cache_root.iterdir():
                if old.is_dir() and old.name != key:
                    shutil.rmtree(old, ignore_errors=True)
        result["settings"]["artifact_cache"] = {"dir": str(art_root), "key": key}
    else:
        art_root = Path(tempfile.mkdtemp(prefix="infini-bench-"))
        result["settings"]["artifact_cache"] = None
    art_root.mkdir(parents=True, exist_ok=True)
    try:
        plan = sorted({(p, n) for p, n, _ in mode["configs"]} | ({tuple(mode["memory_preset"])}
                                                                if "memory" not in skip else set()),
                      key=lambda k: (["tiny", "small", "medium"].index(k[0]) if k[0] in ("tiny", "small", "medium")
                                     else 9, k[1]))
        exp_backends = backends if "throughput" not in skip else ["ort-fp32"]
        t0 = time.perf_counter()
        ctx, export_records = export_all(plan, exp_backends, art_root, mode, threads, args.seed)
        log(f"exports done in {time.perf_counter() - t0:.0f} s")
        ctx["art_root"] = art_root
        ctx["params"] = {k: v["parameters"] for k, v in ctx["checkpoints"].items()}
        ctx["export_status"] = {(r.get("preset"), r.get("segment_len"), r.get("backend")): r for r in export_records}
        result["export"] = [{k: v for k, v in r.items() if k not in ("out", "traceback")} for r in export_records]
        result["backends"] = {}
        for b in backends:
            recs = [r for r in export_records if r.get("backend") == b]
            if b == "eager":
                result["backends"][b] = {"available": True, "runtime": "torch (InfiniSession over EagerBackend)"}
            elif recs and all(r.get("status") == "unavailable" for r in recs):
                result["backends"][b] = {"available": False, "reason": recs[0].get("error")}
            else:
                result["backends"][b] = {"available": any(r.get("status") == "ok" for r in recs),
                                         "runtime": RUNTIME_OF[b], "export": BACKENDS[b]}

        # throughput, cheapest configs first (their FLOP rates predict which backend would be far too slow)
        throughput, rates = [], {}
        if "throughput" not in skip:
            configs = sorted(mode["configs"], key=lambda c: flops_per_token(__import__("infini_export").InfiniConfig
                                                                            .from_name(c[0], segment_len=c[1]))["total"]
                             * c[1] * c[2])
            for preset, seg, batch in configs:
                log(f"throughput {preset}/{seg}/b{batch}")
                throughput.append(measure_config(preset, seg, batch, backends, ctx, mode, threads, rates, args.seed))
                res = throughput[-1]["results"]
                log("  " + ", ".join(f"{k} {v.get('tokens_per_second', v['status'])}" for k, v in res.items()))
        gemm += measure_gemm(mode["gemm_sizes"], mode["gemm_reps"], "end")
        for c in throughput:
            ig = c["interleaved_gemm"]
            gemm.append({"lib": "torch", "n": ig["n"], "seconds": rnd(2 * ig["n"] ** 3 / ig["best_gflops"] / 1e9),
                         "gflops": ig["best_gflops"], "when": f"interleaved {c['preset']}/{c['segment_len']}/b{c['batch']}"})
        best = max(gemm, key=lambda g: g["gflops"])
        gemm_best = best["gflops"] * 1e9
        result["gemm"] = {"best_gflops": best["gflops"], "best": {"lib": best["lib"], "n": best["n"],
                                                                   "when": best["when"]},
                          "threads": threads, "samples": gemm,
                          "method": "C = A @ B, float32 square matrices, best of reps after a warm-up, "
                                    "numpy and torch, at the start and the end of the run, and torch slices "
                                    "interleaved with the backends in every throughput round-robin"}
        order = {("tiny", "small", "medium").index(c["preset"]) * 100 + c["segment_len"] // 128 * 10 + c["batch"]: c
                 for c in throughput}
        throughput = [order[k] for k in sorted(order)]
        for c in throughput:
            for rec in c["results"].values():
                if rec["status"] == "ok":
                    rec["mfu"] = round(rec["tokens_per_second"] * c["flops_per_token"] / gemm_best, 4)
        result["throughput"] = throughput

        memory = None
        if "memory" not in skip:
            mp = tuple(mode["memory_preset"])
            memory = memory_section(ctx["dirs"].get((mp[0], mp[1], "ort-fp32")), mp[0], mp[1], mode["memory_lengths"],
                                    mode["baseline_budget"], threads, mode["timeout"])
        result["memory"] = memory
        result["targets"] = evaluate_targets(throughput, memory, gemm_best)
        result["load_end"] = other_load()
        result["duration_seconds"] = round(time.perf_counter() - t_run, 1)
        result["plots"] = plots(result, out)
    finally:
        if not cache:
            shutil.rmtree(art_root, ignore_errors=True)
        if SPAWNERS is not None:
            SPAWNERS.close()
    (out / "bench.json").write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    (out / "tables.md").write_text(tables_markdown(result))
    log(f"wrote {out / 'bench.json'} and {', '.join(result['plots'])} in {result['duration_seconds']:.0f} s")
    for t in result["targets"]:
        mark = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        log(f"  [{mark}] {t['name']}: {t['measured']} (target {t['target']}) {t['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
