"""The benchmark's measurement processes; each command prints one JSON line (its last line on stdout).

    python -m benchmarks.worker export --checkpoint CKPT --jobs JOBS.json [--threads T]
        export the checkpoint once per job ({variant, out, parity_segments}); one process for all the jobs
        of the list (the full benchmark gives one job per process)
    python -m benchmarks.worker baseline --preset small --segment-len 128 --tokens 32768 --budget 60
        stream random tokens through a plain causal transformer of the same width and depth as the preset,
        eager torch + F.scaled_dot_product_attention, in chunks of segment_len with a growing KV cache;
        stops early (and says so) when the time budget or the KV-cache memory limit is exceeded
    python -m benchmarks.worker real-size --preset base-32k --variant onnx-int4 --out DIR
        export a preset (random weights) as one variant: time, sizes, planned memory (``real_size.measure``)

Peak RSS is ``runtime.measure.peak_rss_mb`` (this process's VmHWM).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import traceback
from pathlib import Path

from runtime.manifest import Manifest
from runtime.measure import parse_length, peak_rss_mb


def cpu_seconds() -> float:
    """CPU time of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_export_jobs(checkpoint: str, jobs: list[dict], threads: int) -> dict:
    """Export ``checkpoint`` once per job; wall and CPU time, peak RSS and file sizes of each."""
    import torch

    torch.set_num_threads(threads)
    from exporters.pipeline import ExportParityError
    from exporters.variants import get_variant
    from infini_export.checkpoint import load_checkpoint

    results = []
    for job in jobs:
        variant = get_variant(job["variant"])
        rec = {"variant": variant.name, "format": variant.format, "quantize": variant.quantize,
               "delegate": variant.delegate, "max_batch": job["max_batch"], "out": job["out"]}
        rss_before = peak_rss_mb()
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        try:
            model = load_checkpoint(checkpoint).eval()
            _, report = variant.export(model, job["out"], parity_segments=job.get("parity_segments", 2),
                                       max_batch=job["max_batch"], progress=False, log=None)
            rec.update(status="ok", parity_passed=bool(report.passed))
        except ExportParityError as exc:  # the artifact is written; its manifest records the failure
            rec.update(status="ok", parity_passed=False, parity_error=str(exc)[:300])
        except Exception as exc:  # noqa: BLE001 - recorded, never hidden
            rec.update(status="failed", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                       traceback=traceback.format_exc()[-2000:])
        rec["wall_seconds"] = round(time.perf_counter() - t0, 3)
        rec["cpu_seconds"] = round(cpu_seconds() - cpu0, 3)
        rec["peak_rss_mb"] = round(peak_rss_mb(), 1)
        rec["peak_rss_mb_before"] = round(rss_before, 1)  # > import size when several jobs share a process
        if rec["status"] == "ok":
            files = {p.name: p.stat().st_size for p in sorted(Path(job["out"]).iterdir()) if p.is_file()}
            rec["files"] = files
            rec["artifact_bytes"] = sum(files.values())
            rec["exporter_seconds"] = Manifest.load(job["out"]).exporter.get("export_seconds")
        results.append(rec)
    return {"jobs": results, "peak_rss_mb": round(peak_rss_mb(), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--jobs", required=True, help="JSON list of {variant, out, parity_segments, ...}")
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("baseline")
    p.add_argument("--preset", default="small")
    p.add_argument("--segment-len", type=int, default=128)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--budget", type=float, default=60.0, help="seconds; stop (and say so) past it")
    p.add_argument("--max-kv-gb", type=float, default=8.0, help="stop before the KV cache exceeds this")
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("real-size")
    p.add_argument("--preset", required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--parity-segments", type=int, default=2)
    p.add_argument("--n-layers", type=int, default=None)
    p.add_argument("--full-logits", action="store_true")
    p.add_argument("--lower-jobs", type=int, default=None)
    p = sub.add_parser("session", help="peak RSS of one InfiniSession in this process: open, stream, decode")
    p.add_argument("artifact")
    p.add_argument("--tokens", type=parse_length, default=16384)
    p.add_argument("--tail", type=int, default=0, help="tokens more in one call (the decode program)")
    p.add_argument("--new", type=int, default=32, help="greedy tokens decoded at the end")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--low-memory", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "session":
        from .memory import session_peak
        out = session_peak(args.artifact, args.tokens, args.tail, args.new, args.threads,
                           **({"low_memory": True} if args.low_memory else {}))
    elif args.command == "export":
        out = run_export_jobs(args.checkpoint, json.loads(Path(args.jobs).read_text()), args.threads)
    elif args.command == "baseline":
        from .baseline import run_baseline
        out = run_baseline(args)
    else:
        from .real_size import export_preset
        out = export_preset(args.preset, args.variant, args.out, args.parity_segments, args.n_layers, args.full_logits,
                            args.lower_jobs)
    sys.stdout.flush()
    print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
