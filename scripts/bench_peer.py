#!/usr/bin/env python
"""Our runtime against onnxruntime-genai on the Llama twin of a preset (same shape, random weights), fp32 and int4:
decode ms/token after each context, prefill tokens/s, each side's peak RSS in its own process, our fp32 decode's
read rate against the machine's; alternating rounds, ratios side by side.

onnxruntime-genai and transformers are a benchmark dependency only; put them in a separate environment:

    python3.11 -m venv out/peer-venv && out/peer-venv/bin/pip install torch==2.13.0 && \\
        out/peer-venv/bin/pip install onnxruntime-genai==0.18.0 transformers onnx-ir onnxscript
    python scripts/bench_peer.py --preset small-32k --contexts 1K,4K+1K --rounds 1 --out out/peer-small  # quick
    nice -n 5 python scripts/bench_peer.py --preset base-32k --out docs/peer                          # ~1 hour

Writes PRESET.json (every timing), PRESET.png (ms/token against the context) and PRESET.md (the table) into --out.
Models are built and exported once into --cache and reused.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks import peer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base-32k")
    p.add_argument("--contexts", default="1K,4K+1K,16K+1K",
                   help="PREFIX+TAIL: ours streams PREFIX then TAIL (its next token at in-segment position TAIL), "
                        "theirs holds all of them in its K/V cache")
    p.add_argument("--precisions", default="fp32,int4")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=32, help="greedy tokens timed after each context")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=2048, help="tokens per onnxruntime-genai append_tokens call")
    p.add_argument("--peer-python", default="out/peer-venv/bin/python",
                   help="python of the environment with onnxruntime-genai and transformers")
    p.add_argument("--cache", default="out/peer", help="folder for both sides' models")
    p.add_argument("--out", default="out/peer-results")
    args = p.parse_args()
    if not Path(args.peer_python).exists():
        p.error(f"{args.peer_python} not found: create the benchmark environment first (see above)")
    record = peer.run(args.preset, contexts=peer.parse_contexts(args.contexts),
                      precisions=[x for x in args.precisions.split(",") if x], rounds=args.rounds,
                      new_tokens=args.new_tokens, threads=args.threads, chunk=args.chunk,
                      peer_python=str(Path(args.peer_python).absolute()), cache=Path(args.cache).absolute(),
                      on_precision=lambda rec: peer.write(rec, Path(args.out)))  # each precision as it completes
    paths = peer.write(record, Path(args.out))
    print(peer.table(record))
    if record["bandwidth"]:
        bw = record["bandwidth"]
        print(f"read bandwidth ({args.threads} threads, after each round): "
              f"{', '.join(f'{b:.1f}' for b in bw['read_bandwidth_gb_s'])} GB/s; our fp32 decode: " +
              ", ".join(f"{c['context']} {c['ours_gb_s']:.1f} GB/s ({c['ours_fraction']:.0%})" for c in bw["contexts"]))
    print(json.dumps({"load_start": record["loadavg_start"], "load_end": record["loadavg_end"],
                      "minutes": record["minutes"]}))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
