#!/usr/bin/env python
"""Export a real-size preset (random weights) in each precision: export time, peak RSS, file and weight sizes,
and for ExecuTorch the planned memory of every method. Each export runs in its own process under an
address-space limit, so one that would need too much memory fails alone instead of taking the machine.

    python scripts/real_size.py --preset base-32k --variants onnx-fp32,onnx-int4,onnx-int8 \\
        --limit-gb 10 --out docs/real_size.json
    python scripts/real_size.py --preset base-32k --variants executorch-int4,executorch-fp32 --limit-gb 10

ExecuTorch variants are planned for batch 1 (the CLI default). Results are merged into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"onnx-fp32": ("onnx", None), "onnx-int8": ("onnx", "int8"), "onnx-int4": ("onnx", "int4"),
            "executorch-fp32": ("executorch", None), "executorch-int8": ("executorch", "int8"),
            "executorch-int4": ("executorch", "int4")}


def _child(preset: str, overrides: dict, variant: str, out_dir: str, parity_segments: int) -> None:
    """One export (in a child process): prints one JSON line."""
    sys.path.insert(0, str(ROOT))
    import torch

    from exporters.pipeline import DEFAULT_MAX_BATCH, export_artifact
    from infini_export import InfiniConfig, InfiniTransformer
    torch.manual_seed(0)
    model = InfiniTransformer(InfiniConfig.from_name(preset, **overrides)).eval()
    fmt, quant = VARIANTS[variant]
    t0 = time.perf_counter()
    manifest, report = export_artifact(model, out_dir, fmt, quantize=quant, parity_segments=parity_segments,
                                       max_batch=DEFAULT_MAX_BATCH[fmt], progress=False, log=None)
    print(json.dumps({"seconds_with_parity": round(time.perf_counter() - t0, 1),
                      "export_seconds": manifest["exporter"].get("export_seconds"),
                      "parameters": model.num_parameters(),
                      "files": {k: v["bytes"] for k, v in manifest["files"].items()},
                      "memory": manifest.get("memory"), "max_batch": manifest["batch"]["max"],
                      "parity": {"passed": report.passed, "segments": parity_segments, **report.summary}},
                     default=float))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base-32k")
    p.add_argument("--n-layers", type=int, default=None, help="override the preset's depth")
    p.add_argument("--variants", default="onnx-fp32,onnx-int4,onnx-int8")
    p.add_argument("--parity-segments", type=int, default=2)
    p.add_argument("--limit-gb", type=float, default=10.0, help="address-space limit of each export process")
    p.add_argument("--work", default="out/real_size", help="where the artifacts are written")
    p.add_argument("--out", default="docs/real_size.json")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    overrides = {"n_layers": args.n_layers} if args.n_layers else {}
    if args.child:
        _child(args.preset, overrides, args.child[0], args.child[1], args.parity_segments)
        return 0
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    key = args.preset + (f" (n_layers={args.n_layers})" if args.n_layers else "")
    for variant in args.variants.split(","):
        limit = int(args.limit_gb * 1e9)
        cmd = ["/usr/bin/time", "-f", "PEAK_RSS_KB %M", sys.executable, __file__, "--preset", args.preset,
               "--parity-segments", str(args.parity_segments),
               "--child", variant, str(Path(args.work) / f"{args.preset}-{variant}")]
        if args.n_layers:
            cmd += ["--n-layers", str(args.n_layers)]
        print(f"== {variant}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        row = {"wall_seconds": round(time.perf_counter() - t0, 1),
               "cpu_seconds": round(usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime, 1),
               "limit_gb": args.limit_gb}
        peak = [ln.split()[-1] for ln in proc.stderr.splitlines() if ln.startswith("PEAK_RSS_KB")]
        if peak:
            row["peak_rss_mb"] = round(int(peak[-1]) / 1024)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
        else:
            row.update(json.loads(lines[-1]))
        print(json.dumps(row, default=float), flush=True)
        results.setdefault(key, {})[variant] = row
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
