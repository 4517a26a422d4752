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

import sys


def main(argv: list[str] | None = None) -> int:
    from training.commands import text_main

    return text_main(__doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
