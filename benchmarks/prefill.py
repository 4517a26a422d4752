"""Prefill with and without the last-token program: segment tokens/s side by side, peak RSS of streaming in
fresh torch-free processes, and an ExecuTorch program's planned memory per method against its weights.

``python -m benchmarks.prefill --child ART TOKENS [--full] [--threads T]`` is the child process of
``stream_rss``: it streams random tokens and prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from runtime.cli.run import random_tokens
from runtime.manifest import Manifest
from runtime.measure import peak_rss_mb
from runtime.session import InfiniSession


def _open(artifact, threads: int | None, **options) -> InfiniSession:
    return InfiniSession.open(artifact, **options, **({"threads": threads} if threads else {}))


def segment_speed(artifact: str | Path, repeats: int = 5, threads: int | None = None, seed: int = 0) -> dict:
    """One whole segment through the full step (all N logits) and through the last-token program, alternately
    (the order swapped every repeat) on the same input: median seconds and tokens/s of each."""
    session = _open(artifact, threads)
    if not session.last_logits_program:
        raise ValueError(f"{artifact} has no last-token program (manifest 'last_logits'); export it again")
    if not session.manifest.full_logits:
        raise ValueError(f"{artifact} has no full-logits program to compare with (an ExecuTorch program exported "
                         "without --full-logits); export it with --full-logits")
    backend, N = session.backend, session.segment_len
    ids = np.random.default_rng(seed).integers(0, session.vocab_size, (1, N), dtype=np.int64)
    state = [np.zeros(e.concrete_shape(1), np.dtype(e.dtype)) for e in session.manifest.state]
    programs = {"full": backend.run, "last": backend.run_last}
    for run in programs.values():  # warm-up: first-call allocations and packing
        run(ids, state)
    seconds: dict = {k: [] for k in programs}
    for r in range(repeats):
        for name in (("full", "last") if r % 2 == 0 else ("last", "full")):
            t0 = time.perf_counter()
            programs[name](ids, state)
            seconds[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    return {"segment_len": N, "vocab_size": session.vocab_size, "repeats": repeats, "threads": threads,
            "seconds": seconds, "full_tok_s": N / med["full"], "last_tok_s": N / med["last"],
            "speedup": med["full"] / med["last"]}


def last_program_speed(artifacts: list, repeats: int = 5, threads: int | None = None, seed: int = 0,
                       gemm_n: int = 2048, options: list[dict] | None = None) -> dict:
    """One whole segment through each artifact's last-token program, alternating between the artifacts (the
    order rotated every repeat) on the same input, and the machine's float32 GEMM rate measured in the same run:
    per artifact the median seconds, tokens/s, the FLOPs the graph computes per token (``flops_per_token``: the
    LM head on the last row, the local attention as the exporter blocked it) and their fraction of the GEMM rate.
    ``options``: per artifact, the session options it is opened with (the same folder may come twice)."""
    from infini_export.config import InfiniConfig

    from .flops import flops_per_token
    from .machine import measure_gemm

    options = options or [{} for _ in artifacts]
    sessions = [_open(a, threads, **o) for a, o in zip(artifacts, options)]
    seconds: list[list[float]] = [[] for _ in sessions]
    gemm: list[dict] = []
    inputs = []
    for s in sessions:
        ids = np.random.default_rng(seed).integers(0, s.vocab_size, (1, s.segment_len), dtype=np.int64)
        state = [np.zeros(e.concrete_shape(1), np.dtype(e.dtype)) for e in s.manifest.state]
        s.backend.run_last(ids, state)  # warm-up: first-call allocations and packing
        inputs.append((ids, state))
    for r in range(repeats):
        order = list(range(len(sessions)))
        order = order[r % len(order):] + order[:r % len(order)]
        for k in order:
            t0 = time.perf_counter()
            sessions[k].backend.run_last(*inputs[k])
            seconds[k].append(time.perf_counter() - t0)
        gemm += measure_gemm([gemm_n], 1, f"repeat {r}")
    rate = max(g["gflops"] for g in gemm) * 1e9
    out = {"gemm_flops_per_s": rate, "gemm_n": gemm_n, "repeats": repeats, "threads": threads, "artifacts": []}
    for a, s, secs, opts in zip(artifacts, sessions, seconds, options):
        man = s.manifest
        rows = man.exporter.get("attention_rows", 0)
        fpt = flops_per_token(InfiniConfig.from_dict(man.model["config"]), last_only=True, attention_rows=rows)
        tok_s = s.segment_len / statistics.median(secs)
        out["artifacts"].append({"artifact": str(a), "options": opts, "attention_rows": rows, "seconds": secs,
                                 "tok_s": tok_s,
                                 "flops_per_token": fpt["total"], "flops_breakdown": fpt["breakdown"],
                                 "fraction_of_gemm": tok_s * fpt["total"] / rate})
    return out


def compare_entry(text: str) -> tuple[str, str, dict]:
    """``"FOLDER"`` or ``"FOLDER@option=value[@...]"`` -> (label, folder, session options); values are JSON where
    they parse (``low_memory=true``), else strings (``execution_order=default``)."""
    folder, *pairs = text.split("@")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{text!r}: expected FOLDER@option=value, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return Path(folder).name + "".join(f" ({k}={v})" for k, v in options.items()), folder, options


def weight_bytes(manifest: Manifest) -> int:
    """The bytes of the weights an artifact loads: ExecuTorch's measured constants, else the ONNX weight file."""
    if manifest.memory:
        return int(manifest.memory["weights_bytes"])
    files = manifest.files
    return int(files["weights"].bytes if "weights" in files else files["program"].bytes)


def stream_rss(artifact: str | Path, tokens: int, use_last: bool = True, threads: int | None = None,
               **options) -> dict:
    """Stream ``tokens`` random tokens through ``artifact`` in a fresh process (torch-free for ONNX): its peak RSS
    (VmHWM), tokens/s and the weight bytes. ``options``: backend options for ``InfiniSession.open`` (JSON values)."""
    root = Path(__file__).resolve().parents[1]  # the folder holding this package, for the child's imports
    cmd = [sys.executable, "-m", "benchmarks.prefill", "--child", str(artifact), str(tokens)]
    cmd += ([] if use_last else ["--full"]) + (["--threads", str(threads)] if threads else [])
    cmd += ["--options", json.dumps(options)] if options else []
    env = {**os.environ, "INFINI_EXPORT_NO_TORCH": "1",
           "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"streaming {tokens} tokens through {artifact} failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(artifact: str, tokens: int, use_last: bool, threads: int | None, options: dict) -> None:
    session = _open(artifact, threads, use_last=use_last, **options)
    t0 = time.perf_counter()
    for ids in random_tokens(tokens, session.vocab_size, seed=0, chunk=16 * session.segment_len):
        session.stream(ids)
    seconds = time.perf_counter() - t0
    print(json.dumps({"tokens": tokens, "last_logits_program": session.last_logits_program,
                      "seconds": round(seconds, 2), "tokens_per_second": round(tokens / seconds, 1),
                      "peak_rss_mb": round(peak_rss_mb(), 1), "weights_bytes": weight_bytes(session.manifest),
                      "torch_loaded": "torch" in sys.modules, "options": options}))


def planned_memory(artifact: str | Path) -> dict:
    """An ExecuTorch artifact's planned memory per method (manifest ``memory``), each also as a share of the
    weight bytes."""
    memory = Manifest.load(artifact).memory
    if not memory:
        raise ValueError(f"{artifact} has no planned-memory record (an ExecuTorch artifact has one)")
    w = memory["weights_bytes"]
    return {"weights_bytes": w, "methods": {name: {**m, "of_weights": m["planned_bytes"] / w}
                                             for name, m in memory["methods"].items()}}


def plot(results: dict, path: str | Path) -> None:
    """Prefill tokens/s (full vs last) and peak RSS against the stream length, one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(results.get("speed", {}))
    for i, name in enumerate(names):
        sp = results["speed"][name]
        ax1.bar([i - 0.2, i + 0.2], [sp["full_tok_s"], sp["last_tok_s"]], width=0.4,
                color=["tab:gray", "tab:blue"], label=["all N logits", "last token's logits"] if i == 0 else None)
        ax1.text(i + 0.2, sp["last_tok_s"], f"{sp['speedup']:.2f}x", ha="center", va="bottom")
    for i, row in enumerate(results.get("compare", {}).get("artifacts", [])):
        names.append(row.get("label") or Path(row["artifact"]).name)
        ax1.bar(i, row["tok_s"], color="tab:blue")
        ax1.text(i, row["tok_s"], f"{row['fraction_of_gemm']:.0%} of GEMM", ha="center", va="bottom")
    ax1.set_xticks(range(len(names)), names)
    ax1.set_ylabel("prefill tokens/s (one segment)")
    if results.get("speed"):
        ax1.legend()
    drawn = set()
    for name, rows in results.get("rss", {}).items():
        if not rows:  # no stream lengths asked for
            continue
        ax2.plot([r["tokens"] for r in rows], [r["peak_rss_mb"] for r in rows], "o-", label=name)
        w = rows[0]["weights_bytes"] / 1e6
        if w not in drawn:  # one line per weight size: the 1.5x-weights target
            drawn.add(w)
            ax2.axhline(1.5 * w, ls="--", color="gray", lw=0.8, label=f"1.5x weights ({w:,.0f} MB)")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("tokens streamed")
    ax2.set_ylabel("peak RSS (MB)")
    if drawn:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--child", nargs=2, metavar=("ARTIFACT", "TOKENS"), required=True)
    p.add_argument("--full", action="store_true", help="ignore the last-token program")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--options", default="{}", help="backend options as JSON")
    args = p.parse_args(argv)
    _child(args.child[0], int(args.child[1]), not args.full, args.threads, json.loads(args.options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
