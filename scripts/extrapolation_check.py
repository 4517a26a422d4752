#!/usr/bin/env python
"""How faithful is the training lever's first-order extrapolation of a long filler stream?

``train_passkey.py --extrapolate-frac`` trains the answer against ``M + k * dM, z + k * dz`` (``dM, dz``: what
one filler segment wrote) instead of the state a real long input leaves. This script streams real depth-0 passkey
prompts (key in the first segment, then filler) through the eager model and, at each checkpoint length, asks the
question: the prompt's last segment then the answer, teacher-forced. At ``--source`` tokens it also builds the
extrapolated state for the full length, asks the same question from it, and at the end compares that state with
the real one, layer by layer. Both of the lever's modes are measured: ``first-order`` (k times the source
segment's increment) and ``doubling`` (``grow_filler``: the increment re-measured from the growing state).
The library behind it: ``training.proxy.extrapolation_check``.

    python scripts/extrapolation_check.py --checkpoint models/passkey-small            # 1M tokens, 8 prompts
    python scripts/extrapolation_check.py --checkpoint models/passkey-small --length 128K --prompts 4
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from runtime.measure import parse_length

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="models/passkey-small")
    p.add_argument("--length", default="1M", type=parse_length, help="prompt length (a multiple of the segment length)")
    p.add_argument("--source", default="4K", type=parse_length,
                   help="input length whose last filler segment is extrapolated")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--seed", type=int, default=77)
    p.add_argument("--block", type=int, default=1, help="doubling mode's filler block, segments")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    import torch

    from infini_export import load_checkpoint
    from training.proxy import extrapolation_check, extrapolation_table
    from training.report import write_json
    torch.set_num_threads(args.threads)
    try:
        res = extrapolation_check(load_checkpoint(args.checkpoint).eval(), args.length, args.prompts, args.source,
                                  args.seed, block=args.block)
    except ValueError as exc:
        p.error(f"--length / --source: {exc}")
    res = {"checkpoint": str(args.checkpoint), **res}
    print(extrapolation_table(res))
    if args.json:
        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
