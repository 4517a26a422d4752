"""fp32 MatMul vs 4-bit MatMulNBits (accuracy levels 0 and 4) on one weight matrix, side by side.

    python scripts/bench_matmul_nbits.py --k 768 --n 32000      # the LM head of base-32k at M = 1
"""
import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.matmul_nbits import measure


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=768, help="in_features")
    p.add_argument("--n", type=int, default=32000, help="out_features")
    p.add_argument("--m", type=int, default=1, help="rows of the input (1: one decode token)")
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("-o", "--out", help="write the results as JSON here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.k, args.n, m=args.m, block_size=args.block_size, threads=args.threads,
                         rounds=args.rounds, folder=Path(tmp))
    fp32 = result["fp32"]["ms"]
    for name, r in result.items():
        print(f"{name:>12}: {r['ms']:7.3f} ms ({fp32 / r['ms']:.2f}x fp32), max abs error {r['max_abs_error']:.2e}")
    if args.out:
        from runtime.atomic import atomic_write
        text = json.dumps({"shape": [args.m, args.k, args.n], "threads": args.threads, "results": result}, indent=1)
        atomic_write(args.out, lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
