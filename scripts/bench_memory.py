"""The benchmark's measurement processes (``bench.worker``), each printing one JSON line.

    python scripts/bench_memory.py export --checkpoint CKPT --jobs JOBS.json [--threads T]
    python scripts/bench_memory.py baseline --preset small --segment-len 128 --tokens 32768 --budget 60
    python scripts/bench_memory.py session ART [--tokens 16K] [--tail N] [--new 32] [--threads 2] [--low-memory]
        (peak RSS of one InfiniSession in this process: open, stream, decode; RSS by kind after each step)
"""
import argparse
import json
import sys

from benchmarks.worker import main


def session(argv: list[str]) -> int:
    from benchmarks.memory import session_peak
    from runtime.measure import parse_length

    p = argparse.ArgumentParser(prog="bench_memory.py session")
    p.add_argument("artifact")
    p.add_argument("--tokens", type=parse_length, default=16384)
    p.add_argument("--tail", type=int, default=0)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--low-memory", action="store_true")
    a = p.parse_args(argv)
    options = {"low_memory": True} if a.low_memory else {}
    print(json.dumps(session_peak(a.artifact, a.tokens, a.tail, a.new, a.threads, **options)))
    return 0


if __name__ == "__main__":
    sys.exit(session(sys.argv[2:]) if sys.argv[1:2] == ["session"] else main())
