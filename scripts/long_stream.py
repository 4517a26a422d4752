#!/usr/bin/env python
"""Very long streams: eager torch and the exported ONNX model side by side over millions of tokens.

Checks: no NaN/inf in state or logits; ||z|| grows linearly with tokens (z is a running sum of
sigma(k) > 0) and ||M|| as the update rule says; eager-vs-exported parity of logits and state still
within tolerance at the end. Writes JSON and a PNG of the state norms against tokens.

    python scripts/long_stream.py --tokens 10M          # the full run (minutes)
    python scripts/long_stream.py --tokens 200K         # what CI runs (tests/test_long_stream.py)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks.long_stream import plot, run
from runtime.atomic import atomic_write
from runtime.measure import parse_length


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="10M")
    p.add_argument("--segment-len", type=int, default=128)
    p.add_argument("--update", choices=["linear", "delta"], default="delta")
    p.add_argument("--out", default="docs/long_stream")
    args = p.parse_args()
    torch.set_num_threads(1)
    try:
        tokens = parse_length(args.tokens)
    except ValueError as exc:
        p.error(str(exc))
    result = run(tokens, args.segment_len, args.update, progress=sys.stderr.isatty())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    atomic_write(out / f"long_stream_{args.update}.json", lambda f: f.write(text.encode()))
    plot(result, out / f"long_stream_{args.update}.png")
    f = result["final"]
    print(f"{result['tokens']:,} tokens ({args.update}) in {result['seconds']:.0f} s: finite={result['finite']}, "
          f"final logits err {f['logits_max_abs_err']:.2e}, state rel err {f['state_max_rel_err']:.2e}, "
          f"top-1 {f['top1_agree']:.3f}, parity {'OK' if result['parity_ok'] else 'FAILED'}")
    print("growth exponents of ||x|| vs tokens:", {k: round(v, 3) for k, v in result["growth_exponent"].items()})
    print("final norms:", {k: f"{v:.4g}" for k, v in f["state_norms"].items()})
    return 0 if result["finite"] and result["parity_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
