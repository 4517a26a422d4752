#!/usr/bin/env python
"""Text at real size: train a BPE tokenizer on the Python standard library, export a preset (random weights) with
it, and measure tokenization against a decode step and generate_text's speed and peak RSS (docs/tokenizer.md).

    PYTHONPATH=. python scripts/bench_text.py                         # small-32k, 32,000 tokens, 6 MB of text
    PYTHONPATH=. python scripts/bench_text.py --preset base-32k --threads 2
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.text import export_with_tokenizer, measure_in_child, prompt_text, stdlib_files, train_bpe


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small-32k")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--corpus-mb", type=float, default=6.0, help="MB of standard library source to train on")
    p.add_argument("--prompt-tokens", type=int, action="append", help="prompt lengths (default 1000)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work", default="out/bench-text", help="folder for the tokenizer, artifact and prompts")
    p.add_argument("--out", default="docs/tokenizer/bench_text.json", help="JSON record, one key per preset")
    args = p.parse_args()
    work = Path(args.work)
    train, held = stdlib_files(args.corpus_mb)
    tokenizer = work / f"bpe-{args.vocab}.json"
    record = {"tokenizer": None, "export": None}  # None: made by an earlier run (its record kept)
    if not tokenizer.is_file():
        record["tokenizer"] = train_bpe(train, tokenizer, args.vocab)
        print(json.dumps(record["tokenizer"]), flush=True)
    art = work / f"{args.preset}-onnx"
    if not (art / "manifest.json").is_file():
        record["export"] = export_with_tokenizer(args.preset, tokenizer, art)
        print(json.dumps(record["export"]), flush=True)
    record["runs"] = []
    for n in args.prompt_tokens or [1000]:
        prompt = work / f"prompt-{n}.txt"
        prompt.write_text(prompt_text(held, n, tokenizer), encoding="utf-8")
        record["runs"].append(measure_in_child(art, prompt, args.new_tokens, args.threads))
        print(json.dumps(record["runs"][-1]), flush=True)
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.is_file() else {}
    keep = {k: v for k, v in (old.get(args.preset) or {}).items() if record.get(k) is None}
    old[args.preset] = {**keep, **{k: v for k, v in record.items() if v is not None}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(old, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
