"""Benchmarks: speed and memory of every backend against eager torch, against full attention, and against the
machine's limit. Writes ``bench.json``, ``tables.md`` and PNG plots into ``--out``.

    python scripts/bench.py --smoke    # seconds: every backend once on tiny; well-formed JSON (CI)
    python scripts/bench.py --quick    # < 5 min: small/128/b1 + medium/512/b1, memory up to 32K tokens
    python scripts/bench.py            # < 30 min: everything; the numbers in docs/benchmarks.md

Backends are measured side by side: all sessions of a config are open at once and take turns segment
slice by segment slice (round-robin, the order rotated every repetition), all with the same thread count.
Backends: ``eager`` and the export variants of ``exporters.variants.MAIN``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="seconds: tiny preset, every backend once")
    mode.add_argument("--quick", action="store_true", help="under 5 minutes: a subset")
    p.add_argument("--out", default=None, help="output folder (default: docs/bench for the full run, "
                                                "docs/bench/quick for --quick, out/bench-smoke for --smoke)")
    p.add_argument("--threads", type=int, default=1, help="threads for every backend and the GEMM (default 1)")
    p.add_argument("--artifacts", default=None,
                   help="cache of exported artifacts, reused while the exporter and model sources and the library "
                        "versions are unchanged (default for --smoke and --quick: ~/.cache/infini-export/bench-artifacts; "
                        "the full run exports afresh into a temporary folder unless this is given)")
    p.add_argument("--fresh", action="store_true", help="export afresh into a temporary folder (no cache)")
    p.add_argument("--configs", default=None, help="comma list of preset/segment_len/batch, e.g. small/128/1")
    p.add_argument("--backends", default=None, help="comma list: eager and export variants, e.g. "
                                                    "eager,onnx-fp32,executorch-xnnpack-int8 (default: all)")
    p.add_argument("--memory-lengths", default=None, help="comma list of stream lengths, e.g. 4K,32K,128K,1M")
    p.add_argument("--baseline-budget", type=float, default=None, help="seconds per baseline length")
    p.add_argument("--config-budget", type=float, default=None, help="seconds of round-robin per config")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds each measured process may take (default: 300 smoke, 1200 quick, 3600 full)")
    p.add_argument("--skip", default="", help="comma list of sections to skip: throughput,memory")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy / torch load
        os.environ[var] = str(args.threads)
    from benchmarks.run import default_cache, parse_backends, parse_configs, run
    from runtime.measure import parse_length

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    try:
        backends = parse_backends(args.backends)
        configs = parse_configs(args.configs) if args.configs else None
        lengths = [parse_length(x) for x in args.memory_lengths.split(",")] if args.memory_lengths else None
    except ValueError as exc:
        raise SystemExit(f"bench.py: {exc}") from None
    run(mode, out=args.out, threads=args.threads, backends=backends, configs=configs, memory_lengths=lengths,
        baseline_budget=args.baseline_budget, config_budget=args.config_budget, timeout=args.timeout,
        skip={s for s in args.skip.split(",") if s}, cache=default_cache(mode, args.fresh, args.artifacts),
        seed=args.seed, command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
