#!/usr/bin/env python
"""Train an Infini-Transformer on passkey retrieval (byte tokens), with a length curriculum.

Recipe: AdamW, warm-up + cosine to 0.1x, clip 1.0, a separate higher learning
rate for the gates (``*.beta``), full back-propagation through the memory across every segment, and
three helpers:
  1. a loss on the key's second mention inside the needle (a local copy learnt first);
  2. a quarter of the batches with no filler (and no instruction): the whole task fits in one segment;
  3. the input length grows only when the training exact match on the current length is > 0.8;
plus a small LM loss on every predictable byte.

Optional lever for lengths far beyond the training inputs (``--extrapolate-frac``): on a share of the rows
whose needle lies well before the answer, the state entering the answer's segment gets ``k`` more segments'
worth of filler added, ``k`` log-uniform up to ``--extrapolate-to`` tokens: ``M += k * dM``, ``z += k * dz``
with ``(dM, dz)`` the (detached) state increment of a filler segment of the same row. This is first-order
extrapolation of what a long filler stream does to the memory (the linear rule's exact effect of repeating
that segment; an approximation for the delta rule), so the answer must be read against the dilution of a
1M-token input while back-propagation still covers only ~4K tokens. The exported model is unchanged.
``--extrapolate-before-needle F`` also opens the lever to needles in the last segments: the extra filler then
goes into the state entering the needle's segment (a share F of the rows that could take either placement).
``--extrapolate-mode doubling`` replaces ``k * dM`` by doubling Euler steps that re-run the filler from the
growing state (``grow_filler``); with ``--extrapolate-block 7`` each step runs 7 segments of the row's filler, and
the state lands within ~1% of a real 1M-token stream's (``scripts/extrapolation_check.py --block 7``).
The library behind this command line: ``training``.

Choosing what ships: ``--ema D`` keeps an exponential moving average of the weights (``torch.optim.swa_utils``,
decay D per step); model.safetensors, the held-out evaluations and the proxy then use the averaged weights (the
raw ones stay in train_state.pt and go on training). ``--proxy-every MIN`` scores the weights every MIN minutes on
a cheap stand-in for a 1M-token input (``long_proxy``: depth-0 prompts, 4K tokens run for real, the rest of the
filler added by the lever's doubling steps; ~110 segment runs instead of 8,192) and keeps the best-scoring weights
in OUT/best/ (with proxy.json). The held-out evaluation (<= 16K tokens) saturates long before 1M does.

Examples::

    python scripts/train_passkey.py --out models/passkey-small --minutes 50
    python scripts/train_passkey.py --out models/passkey-small --minutes 60 --resume   # continue to 60 min in all
    python scripts/train_passkey.py --out models/passkey-small --evaluate --eval-lengths 8192,32768
    python scripts/train_passkey.py --out RUN --resume --minutes 620 --ema 0.998 --proxy-every 8   # + the lever's flags
    python scripts/train_passkey.py --out RUN --resume --init-weights SOUP --minutes 600 --ema 0.998   # RUN's schedule, SOUP's weights
    python scripts/train_passkey.py --out RUN2 --init-weights models/passkey-small --start-len 4096 --lr 1e-4 \
        --gate-lr 1e-3 --minutes 45 --ema 0.998 --answer-weights 1,1,1,1,2,2   # fine-tune the bundle, fresh optimizer

The output folder gets config.json + model.safetensors (``save_checkpoint``), train_report.json,
train_report.png and train_state.pt (optimizer, step, curriculum, RNG: for ``--resume``; do not commit it).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from training.commands import passkey_main

    return passkey_main(__doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
