#!/usr/bin/env python
"""Memory and speed of an ONNX artifact with its graphs' weights shared (one mapping of weights.bin) or loaded
by each graph, each setting in its own process, alternating.

    python scripts/bench_shared_weights.py out/bench-decode-base/base-32k --repeats 2
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.decode import sharing_child


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--child", choices=["shared", "separate"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(sharing_child(Path(args.artifact), args.child == "shared")))
        return 0
    rows = []
    for _ in range(args.repeats):
        for mode in ("shared", "separate"):
            out = subprocess.run([sys.executable, __file__, args.artifact, "--child", mode], capture_output=True,
                                 text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
