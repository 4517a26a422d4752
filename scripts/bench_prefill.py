#!/usr/bin/env python
"""Prefill with the last-token program vs all N logits (one segment, side by side), peak RSS of streaming
(fresh processes, with and without it), and an ExecuTorch program's planned memory per method.

    python scripts/bench_prefill.py --onnx out/last/base-32k-onnx-fp32 --pte out/last/base-32k-executorch-fp32 \\
        --lengths 4K,16K,64K --threads 2 --out docs/real_size
    python scripts/bench_prefill.py --preset small-32k --onnx out/small-32k-onnx      # exports it first
    python scripts/bench_prefill.py --compare out/a,out/b --lengths 4K --threads 2   # last-token programs side by
                                                                  # side, their share of the GEMM rate, peak RSS

Writes ``prefill.json`` and ``prefill.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.prefill import compare_entry, last_program_speed, planned_memory, plot, segment_speed, stream_rss
from runtime.measure import parse_length


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", help="an ONNX artifact folder (exported from --preset if missing)")
    p.add_argument("--pte", help="an ExecuTorch artifact folder")
    p.add_argument("--preset", default=None, help="export --onnx from this preset (random weights) if it is missing")
    p.add_argument("--lengths", default="4K,16K", help="stream lengths for the peak-RSS runs ('' to skip)")
    p.add_argument("--rss-full", action="store_true", help="also stream without the last-token program")
    p.add_argument("--low-memory", action="store_true", help="also stream with InfiniSession.open(low_memory=True)")
    p.add_argument("--compare", default="", help="comma-separated artifact folders: their last-token programs side "
                                                  "by side against the measured GEMM rate, then peak RSS of each; "
                                                  "FOLDER@option=value opens a folder with a session option "
                                                  "(e.g. out/a@execution_order=default)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="out/bench_prefill")
    args = p.parse_args()
    if args.onnx and args.preset and not Path(args.onnx, "manifest.json").is_file():
        from exporters.pipeline import export_preset
        export_preset(args.preset, args.onnx)
    arts = {name: a for name, a in (("onnx", args.onnx), ("executorch", args.pte)) if a}
    results: dict = {"threads": args.threads, "speed": {}, "rss": {}, "planned_memory": None}
    if args.compare:
        entries = [compare_entry(x) for x in args.compare.split(",")]
        arts = {label: a for label, a, opts in entries if not opts}  # peak RSS: each folder once, as it opens
        results["compare"] = cmp = last_program_speed([a for _, a, _ in entries], args.repeats, args.threads,
                                                      options=[o for _, _, o in entries])
        for (label, _, _), row in zip(entries, cmp["artifacts"]):
            row["label"] = label
            print(f"{label}: prefill {row['tok_s']:.0f} tok/s (last-token program, attention rows "
                  f"{row['attention_rows']}): {row['fraction_of_gemm']:.0%} of the {cmp['gemm_flops_per_s'] / 1e9:.0f} "
                  "GFLOP/s GEMM rate", flush=True)
    for name, art in ({} if args.compare else arts).items():
        results["speed"][name] = sp = segment_speed(art, args.repeats, args.threads)
        print(f"{name}: prefill {sp['full_tok_s']:.0f} tok/s with all logits, {sp['last_tok_s']:.0f} with the last "
              f"token's ({sp['speedup']:.2f}x)", flush=True)
    lengths = [parse_length(x) for x in args.lengths.split(",") if x]
    runs = [(True, {}), *([(False, {})] if args.rss_full else []), *([(True, {"low_memory": True})]
                                                                     if args.low_memory else [])]
    for name, art in arts.items():
        for use_last, options in runs:
            key = name + ("" if use_last else " (all logits)") + (" (low memory)" if options else "")
            results["rss"][key] = rows = []
            for n in lengths:
                rows.append(stream_rss(art, n, use_last, args.threads, **options))
                print(f"{key}: {n:,} tokens peak RSS {rows[-1]['peak_rss_mb']:.1f} MB "
                      f"({rows[-1]['tokens_per_second']:.0f} tok/s)", flush=True)
    if args.pte:
        results["planned_memory"] = pm = planned_memory(args.pte)
        for m, row in pm["methods"].items():
            print(f"executorch {m}: planned {row['planned_bytes']:,} B = {row['of_weights']:.1%} of the weights")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefill.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out / "prefill.png")
    print(f"wrote {out / 'prefill.json'} and {out / 'prefill.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
