#!/usr/bin/env python
"""Score checkpoints on the cheap 1M-token passkey proxy that ``train_passkey.py --proxy-every`` uses.

Depth-0 prompts (key in the first segment, then filler): the first ``--source`` tokens run for real, the rest of
the filler is added by the training lever's doubling steps (``grow_filler``, ``--block``-segment block), then the
question and the answer, teacher-forced. About 110 segment runs per prompt instead of 8,192 at 1M. ``score`` is
the mean over prompts of the lowest p(correct digit); EM is teacher-forced exact match. Also per answer token
(the space, then the five digits): the mean p, and how many prompts have their lowest p there.
The library behind it: ``training.proxy.long_proxy``.

    python scripts/proxy_score.py models/passkey-small models/passkey-small/ingredients/{G,H,I} --prompts 64
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    from runtime.measure import parse_length

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--length", default="1M", type=parse_length)
    p.add_argument("--source", default="4K", type=parse_length)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--seed", type=int, default=31337, help="keys (keep apart from the evaluation seeds)")
    p.add_argument("--block", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    import torch

    from infini_export import load_checkpoint
    from training.proxy import long_proxy
    from training.report import write_json
    torch.set_num_threads(args.threads)
    rows = []
    print(f"| checkpoint | proxy score | mean p | EM | mean p per answer token (space, digits 1-5) | prompts whose "
          f"lowest p is there |  ({args.prompts} prompts, {args.length:,} tokens, seed {args.seed})")
    for ck in args.checkpoints:
        t = time.time()
        try:
            res = long_proxy(load_checkpoint(ck), args.length, args.prompts, args.seed, source=args.source,
                             block=args.block)
        except ValueError as exc:
            p.error(f"--length / --source: {exc}")
        rows.append({"checkpoint": ck, "seconds": round(time.time() - t, 1), **res})
        per = " / ".join(f"{x:.3f}" for x in res["p_per_token"])
        weak = " / ".join(str(x) for x in res["weakest_token_counts"])
        print(f"| {ck} | {res['score']:.3f} | {res['mean_p']:.3f} | {res['exact_match']:.2f} | {per} | {weak} |",
              flush=True)
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
