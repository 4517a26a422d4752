#!/usr/bin/env python
"""Decode speed vs the segment re-run, the bandwidth bound, and latency vs context, for exported artifacts.

    python scripts/bench_decode.py out/small-onnx --contexts 1K,32K,1M
    python scripts/bench_decode.py --export base-32k          # export a preset first (random weights) into --cache
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.decode import measure, write
from runtime.measure import parse_length


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifacts", nargs="*", help="ONNX artifact folders with a decode program")
    p.add_argument("--export", action="append", default=[], metavar="PRESET",
                   help="export this preset or config JSON (random weights, parity skipped) into -o/NAME first")
    p.add_argument("--name", action="append", default=[], help="folder name for each --export (default: the preset)")
    p.add_argument("-o", "--out", default="out/bench-decode", help="folder for bench_decode.json and .png")
    p.add_argument("--cache", default="out/bench-decode", help="folder for the artifacts this script exports")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rerun-tokens", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--contexts", default="", help="e.g. 1K,32K,1M: latency after that much context")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--positions", default="",
                   help="e.g. 1,512,1024,1536,2040: ms/token from these in-segment positions, every artifact side by "
                        "side, and their mean (the segment average); skips the default measurement")
    p.add_argument("--context-segments", default="",
                   help="e.g. 0,15,511: latency of the last artifact after that many segments + --context-at tokens "
                        "(beyond --real-segments the state is scaled, not fed); skips the default measurement")
    p.add_argument("--context-at", type=int, default=1024)
    p.add_argument("--real-segments", type=int, default=64)
    p.add_argument("--lucidrains", action="store_true",
                   help="also time infini-transformer-pytorch's own generate against our decode on the same weights "
                        "(--new-tokens tokens, --rounds rounds, --threads or 1 thread)")
    args = p.parse_args()
    arts = [Path(a) for a in args.artifacts]
    for i, preset in enumerate(args.export):
        from exporters.pipeline import export_preset
        arts.append(export_preset(preset, Path(args.cache) / (args.name[i] if i < len(args.name) else preset)))
    if args.positions or args.context_segments:
        from benchmarks import decode_positions as bp
        out = {"threads": args.threads}
        if args.positions:
            out["positions"] = bp.positions(arts, [int(x) for x in args.positions.split(",")], tokens=args.new_tokens,
                                            rounds=args.rounds, threads=args.threads)
        if args.context_segments:
            out["contexts"] = bp.contexts(arts[-1], [int(x) for x in args.context_segments.split(",")],
                                          at=args.context_at, real_limit=args.real_segments, tokens=args.new_tokens,
                                          rounds=args.rounds, threads=args.threads)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench_decode_positions.json").write_text(json.dumps(out, indent=1) + "\n")
        print(json.dumps(out))
        return 0
    contexts = [parse_length(c) for c in args.contexts.split(",") if c]
    results = [measure(a, new_tokens=args.new_tokens, rerun_tokens=args.rerun_tokens, rounds=args.rounds,
                       contexts=contexts, threads=args.threads) for a in arts]
    if args.lucidrains:
        from benchmarks.decode import lucidrains_comparison
        results.append({"lucidrains": lucidrains_comparison(Path(args.cache), new_tokens=args.new_tokens,
                                                            rounds=args.rounds, threads=args.threads or 1)})
    write(results, Path(args.out))
    for r in results:
        print(json.dumps({k: v for k, v in r.items() if k != "model"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
