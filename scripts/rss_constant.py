#!/usr/bin/env python
"""Peak RSS of streaming 8K vs 1M tokens through an exported model, each in its own torch-free process.

    python scripts/rss_constant.py                     # tiny preset (random weights), 8K and 1M tokens
    python scripts/rss_constant.py --artifact out/demo/onnx --lengths 8K,1M
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(artifact: Path, tokens: int) -> dict:
    env = {**os.environ, "INFINI_EXPORT_NO_TORCH": "1"}
    out = subprocess.run([sys.executable, "-m", "infini_export.cli", "run", str(artifact), "--random-tokens",
                          str(tokens), "--quiet"], capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", help="an artifact folder (default: export the tiny preset)")
    p.add_argument("--lengths", default="8K,1M")
    p.add_argument("--repeats", type=int, default=2, help="runs per length (the smallest peak counts)")
    args = p.parse_args()
    from infini_export.passkey_eval import parse_length
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
        for text in args.lengths.split(","):
            n = parse_length(text)
            runs = [measure(art, n) for _ in range(args.repeats)]
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
