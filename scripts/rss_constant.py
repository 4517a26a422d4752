#!/usr/bin/env python
"""Peak RSS of streaming 8K vs 1M tokens through an exported model, each in its own torch-free process.

    python scripts/rss_constant.py                     # tiny preset (random weights), 8K and 1M tokens
    python scripts/rss_constant.py --artifact out/demo/onnx --lengths 8K,1M
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.memory import stream_run
from runtime.measure import parse_length


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", help="an artifact folder (default: export the tiny preset)")
    p.add_argument("--lengths", default="8K,1M")
    p.add_argument("--repeats", type=int, default=2, help="runs per length (the smallest peak counts)")
    args = p.parse_args()
    try:
        lengths = [parse_length(text) for text in args.lengths.split(",")]
    except ValueError as exc:
        p.error(str(exc))
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(args.artifact) if args.artifact else Path(tmp) / "tiny"
        if not args.artifact:
            import torch

            from exporters.pipeline import export_artifact
            from infini_export import InfiniConfig, InfiniTransformer
            torch.manual_seed(0)
            export_artifact(InfiniTransformer(InfiniConfig.from_name("tiny")).eval(), art, "onnx",
                            parity_segments=8, progress=False, log=None)
        rows = []
        for n in lengths:
            runs = [stream_run(art.absolute(), n) for _ in range(args.repeats)]
            failed = [r for r in runs if r["status"] != "ok"]
            if failed:
                print(f"streaming {n:,} tokens failed: {failed[0]['error']}", file=sys.stderr)
                return 2
            best = min(runs, key=lambda r: r["peak_rss_mb"])
            rows.append({"tokens": n, "peak_rss_mb": best["peak_rss_mb"], "tokens_per_second": best["tokens_per_second"],
                         "all_peaks_mb": [r["peak_rss_mb"] for r in runs], "state_bytes": best["state_bytes"]})
            print(f"{n:>10,} tokens: peak RSS {best['peak_rss_mb']:.1f} MB, {best['tokens_per_second']:,.0f} tok/s",
                  flush=True)
    growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"] - 1
    print(f"peak RSS growth {rows[0]['tokens']:,} -> {rows[-1]['tokens']:,} tokens: {100 * growth:+.2f}% "
          f"(target: under 2%)")
    print(json.dumps({"rows": rows, "growth": growth}))
    return 0 if abs(growth) < 0.02 else 1


if __name__ == "__main__":
    sys.exit(main())
