#!/usr/bin/env python
"""Train the text model (``models/text-small``): an Infini-Transformer language model on the Python standard
library's source, BPE tokens (``scripts/text_data.py`` builds the split and the tokenizer first).

Recipe: next-token cross-entropy on windows of ``--segments`` segments drawn at random from the training stream
(files in path order, ``<bos> text <eos>`` each), full back-propagation through the memory across every segment of
a window; AdamW (the gates at their own learning rate), warm-up + cosine to 0.1x over the wall-time budget,
gradient clip 1.0. Stopped runs (SIGTERM / Ctrl-C: the step finishes and everything is saved) continue with
``--resume``. The library behind this command line: ``training.text_loop``.

Examples::

    python scripts/text_data.py --out models/text-small
    nice -n 5 python scripts/train_text.py --out out/text-run --minutes 80
    python scripts/train_text.py --out out/text-run --minutes 80 --resume
    python scripts/train_text.py --preset tiny --steps 5 --out /tmp/smoke     # smoke run

OUT gets config.json + model.safetensors, tokenizer.json, split.json, train_report.json / .png and train_state.pt
(optimizer, step, RNG: for --resume; do not commit it).
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    import torch

    from training.config import TrainingSetupError
    from training.text_config import add_arguments, from_arguments
    from training.text_loop import train_text

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        tc = from_arguments(args)
    except TrainingSetupError as exc:
        ap.error(str(exc))
    torch.set_num_threads(tc.threads)
    try:
        train_text(tc, sys.argv if argv is None else [sys.argv[0], *argv])
    except TrainingSetupError as exc:
        raise SystemExit(str(exc)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
