#!/usr/bin/env python
"""Write the byte-level tokenizer.json (byte b is id b) of a byte-level model, e.g. the bundled one:

    python scripts/write_byte_tokenizer.py models/passkey-small/tokenizer.json
"""
from __future__ import annotations

import argparse

from exporters.tokenizer import write_byte_level_tokenizer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", nargs="?", default="models/passkey-small/tokenizer.json")
    args = p.parse_args()
    print(f"wrote {write_byte_level_tokenizer(args.path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
