#!/usr/bin/env python
"""Export a real-size preset (random weights) in each precision: export time, peak RSS, file and weight sizes,
and for ExecuTorch the planned memory of every method. Each export runs in its own process under an
address-space limit, so one that would need too much memory fails alone instead of taking the machine.

    python scripts/real_size.py --preset base-32k --variants onnx-fp32,onnx-int4,onnx-int8 \\
        --limit-gb 10 --out docs/real_size.json
    python scripts/real_size.py --preset base-32k --variants executorch-xnnpack-int4,executorch-xnnpack-fp32 \\
        --limit-gb 10

ExecuTorch variants are planned for batch 1 (the CLI default). Results are merged into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from exporters.variants import VARIANTS, variants_argument
from benchmarks.real_size import measure
from runtime.atomic import atomic_write


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base-32k")
    p.add_argument("--n-layers", type=int, default=None, help="override the preset's depth")
    p.add_argument("--variants", type=variants_argument, default="onnx-fp32,onnx-int4,onnx-int8", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--parity-segments", type=int, default=2)
    p.add_argument("--full-logits", action="store_true",
                   help="ExecuTorch: also export the full-logits method (forward)")
    p.add_argument("--jobs", type=lambda t: [int(x) for x in t.split(",")], default=[None],
                   help="ExecuTorch: processes that lower the methods, a comma list to compare (e.g. 1,2; default: "
                        "the exporter's, one per method up to the cores)")
    p.add_argument("--limit-gb", type=float, default=10.0, help="address-space limit of each export process")
    p.add_argument("--work", default="out/real_size", help="where the artifacts are written")
    p.add_argument("--out", default="docs/real_size.json")
    args = p.parse_args()
    variants = args.variants
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    key = args.preset + (f" (n_layers={args.n_layers})" if args.n_layers else "")
    runs = [(v, j) for v in variants for j in (args.jobs if v.format == "executorch" else [None])]
    for v, jobs in runs:
        row = measure(args.preset, v.name, args.work, args.parity_segments, args.n_layers, args.limit_gb,
                      args.full_logits, jobs)
        print(json.dumps(row, default=float), flush=True)
        results.setdefault(key, {})[v.name + (f" (jobs={jobs})" if jobs else "")] = row
        text = json.dumps(results, indent=2, default=float) + "\n"
        atomic_write(out, lambda f: f.write(text.encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
