#!/usr/bin/env python
"""Build the text model's data: the split of the standard library's source by file (split.json), with more
training files from permissively licensed installed packages, and the byte-fallback BPE tokenizer trained on the
standard library's training files (tokenizer.json), both into OUT.

Deterministic: the same interpreter's standard library gives the same split and the same tokenizer, and the same
versions of the extra packages the same extra files (split.json records each package's version and licence).
The library behind this command line: ``tasks.text``.

Example::

    python scripts/text_data.py --out models/text-small --vocab-size 4096
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from tasks import text as T

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/text-small", help="folder for split.json and tokenizer.json")
    ap.add_argument("--root", default=None, help="standard-library folder (default: this interpreter's)")
    ap.add_argument("--vocab-size", type=int, default=4096, help="tokens in all, specials and byte tokens included")
    ap.add_argument("--site", default=None, help="folder of installed packages for the extra training text "
                    "(default: this interpreter's)")
    ap.add_argument("--no-extra", action="store_true", help="the standard library only, no extra packages")
    ap.add_argument("--split-only", action="store_true", help="write split.json only")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.root) if args.root else T.stdlib_root()
    split = T.make_split(root)
    if not args.no_extra:
        split["extra"] = T.make_extra(args.site or T.site_root(), T.read_texts(root, split["heldout"]))
        ex = split["extra"]
        print(f"extra: {sum(len(p['files']) for p in ex['packages'])} training files "
              f"({sum(p['bytes'] for p in ex['packages']):,} bytes) from {len(ex['packages'])} packages; "
              f"{len(ex['copies_of_heldout_files'])} copies of held-out files left out")
    (out / "split.json").write_text(json.dumps(split, indent=1) + "\n")
    print(f"split: {len(split['train'])} training files ({split['bytes']['train']:,} bytes), "
          f"{len(split['heldout'])} held out ({split['bytes']['heldout']:,} bytes); excluded {split['excluded']}")
    if args.split_only:
        return 0
    t = time.time()
    tok = T.train_tokenizer(T.read_texts(root, split["train"]), args.vocab_size)
    tok.save(str(out / "tokenizer.json"))
    held = T.read_texts(root, split["heldout"])
    n_tok = sum(len(e.ids) - 1 for e in tok.encode_batch(held))
    n_bytes = sum(len(x.encode("utf-8")) for x in held)
    print(f"tokenizer: {tok.get_vocab_size()} tokens in {time.time() - t:.0f} s; held-out text {n_bytes / n_tok:.2f} "
          f"bytes per token; wrote {out}/split.json, {out}/tokenizer.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
