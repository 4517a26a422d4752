#!/usr/bin/env python
"""Score the text model through its exported ONNX artifact and the torch-free runtime: held-out bits per byte (with
the memory, with its read off, int8 and int4 exports), against xz -9e and zstd -19 --long on the same text, and
the curves along the held-out stream (a PNG). The library behind this command line: ``tasks.text_eval``.

Example::

    python scripts/text_eval.py models/text-small --work out/text-eval
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from tasks import text_eval as E

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="checkpoint folder with tokenizer.json and split.json")
    ap.add_argument("--work", default="out/text-eval", help="folder for the exported artifacts")
    ap.add_argument("--quantize", default="int8,int4", help="quantized exports to score too ('' for none)")
    ap.add_argument("--jobs", type=int, default=4, help="processes scoring the variants side by side")
    ap.add_argument("--max-tokens", type=int, default=0, help="score the first tokens of the stream only (0: all)")
    ap.add_argument("--exclude", default="", help="held-out files (paths as in split.json, comma-separated) left out "
                    "of everything scored, the compressors' text included")
    ap.add_argument("--json", default=None, help="results file (default CHECKPOINT/text_eval.json)")
    ap.add_argument("--png", default=None, help="curves (default CHECKPOINT/text_eval.png)")
    args = ap.parse_args(argv)
    quant = tuple(q for q in args.quantize.split(",") if q)
    exclude = tuple(f for f in args.exclude.split(",") if f)
    res = E.evaluate(args.checkpoint, args.work, quant, max_tokens=args.max_tokens, jobs=args.jobs, exclude=exclude)
    js = Path(args.json or Path(args.checkpoint) / "text_eval.json")
    js.write_text(json.dumps(res, indent=1) + "\n")
    E.plot_curves(res, args.png or Path(args.checkpoint) / "text_eval.png")
    print(json.dumps({k: res[k] for k in ("bpb", "compressors", "bytes_per_token", "tokens")}, indent=1))
    print("wrote", js)
    return 0


if __name__ == "__main__":
    sys.exit(main())
