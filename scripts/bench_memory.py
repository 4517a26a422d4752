"""The benchmark's measurement processes (``bench.worker``), each printing one JSON line.

    python scripts/bench_memory.py export --checkpoint CKPT --jobs JOBS.json [--threads T]
    python scripts/bench_memory.py baseline --preset small --segment-len 128 --tokens 32768 --budget 60
    python scripts/bench_memory.py session ART [--tokens 16K] [--tail N] [--new 32] [--threads 2] [--low-memory]
        (peak RSS of one InfiniSession in this process: open, stream, decode; RSS by kind after each step)
"""
import sys

from benchmarks.worker import main

if __name__ == "__main__":
    sys.exit(main())
