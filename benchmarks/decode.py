"""Token-level generation speed: the decode program against the segment re-run it replaces, side by side.

Measured in one process, alternating, so both paths see the same machine load:
- decode tok/s and ms/token with the decode program (one call per token) and with ``use_decode=False``
  (a partial segment re-run padded for every token);
- the memory-bandwidth bound: bytes of weights read per token / a measured large-array copy rate;
- per-token latency after 1K, 32K, 1M tokens of context (flat: the state does not grow).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from runtime.atomic import atomic_write
from runtime.measure import current_rss_mb, peak_rss_mb

from .machine import copy_bandwidth


def _decode_ms(session, n: int, seed: int) -> list[float]:
    """Per-token wall times (ms) of ``n`` greedy tokens generated from where the session is."""
    times, t = [], time.perf_counter()
    for _ in session.generate_iter(np.zeros((session.batch_size, 0), np.int64), n, seed=seed):
        now = time.perf_counter()
        times.append(1000 * (now - t))
        t = now
    return times


def measure(artifact: Path, *, new_tokens: int = 64, rerun_tokens: int = 8, prompt: int = 300, rounds: int = 2,
            contexts: list[int] | None = None, threads: int | None = None, log=print) -> dict:
    """Decode vs segment re-run on one artifact; optionally latency after each context length."""
    from runtime.session import InfiniSession

    opts = {"threads": threads} if threads else {}
    fast = InfiniSession.open(artifact, **opts)
    slow = InfiniSession.open(artifact, use_decode=False, **opts)
    if not fast.decoding:
        raise ValueError(f"{artifact} has no decode program; export it again with this version")
    V, N = fast.vocab_size, fast.segment_len
    ids = np.random.default_rng(0).integers(0, V, prompt, dtype=np.int64)
    dec, rerun, prefill = [], [], []
    for r in range(rounds):
        for s in (fast, slow):
            s.reset()
            t = time.perf_counter()
            s.stream(ids)
            prefill.append(prompt / (time.perf_counter() - t))
        dec += _decode_ms(fast, new_tokens, r)
        rerun += _decode_ms(slow, rerun_tokens, r)
        log(f"round {r + 1}/{rounds}: decode {np.median(dec):.2f} ms/token, segment re-run "
            f"{np.median(rerun):.2f} ms/token")
    man = fast.manifest
    weight_bytes = sum(f.bytes for k, f in man.files.items() if k == "weights")
    bw = copy_bandwidth()
    bound = bw / 2 / weight_bytes if weight_bytes else float("nan")  # tokens/s if each token reads every weight once
    out = {"artifact": str(artifact), "segment_len": N, "vocab_size": V,
           "model": man.model.get("config"), "weights_bytes": weight_bytes,
           "decode_ms_median": float(np.median(dec)), "rerun_ms_median": float(np.median(rerun)),
           "decode_tok_s": 1000 / float(np.median(dec)), "rerun_tok_s": 1000 / float(np.median(rerun)),
           "speedup": float(np.median(rerun) / np.median(dec)), "copy_bandwidth_gb_s": bw / 1e9,
           "bandwidth_bound_tok_s": bound, "fraction_of_bound": (1000 / float(np.median(dec))) / bound,
           "prefill_tok_s": float(np.median(prefill)), "contexts": []}
    # latency after each context: one session per context, measured round-robin (the same machine load for each)
    at = {}
    for ctx in contexts or []:
        s = fast.fork()
        s.reset()
        t = time.perf_counter()
        chunk = 16 * N
        for start in range(0, ctx, chunk):
            s.stream(np.random.default_rng(start).integers(0, V, min(chunk, ctx - start), dtype=np.int64))
        at[ctx] = (s, time.perf_counter() - t, [])
        log(f"context {ctx:,} streamed in {at[ctx][1]:.1f} s")
    for r in range(rounds if at else 0):
        for ctx, (s, _, ms) in at.items():
            ms += _decode_ms(s.fork(), new_tokens, r)
    for ctx, (s, seconds, ms) in at.items():
        out["contexts"].append({"context": ctx, "decode_ms_median": float(np.median(ms)), "prefill_seconds": seconds,
                                "state_bytes": _state_bytes(s)})
        log(f"context {ctx:,}: decode {np.median(ms):.2f} ms/token")
    return out


def _state_bytes(session) -> int:
    return int(sum(a.nbytes for a in session._state) + sum(c.nbytes for c in session._cache))


def plot(results: list[dict], path: Path) -> None:
    results = [r for r in results if "artifact" in r]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = [Path(r["artifact"]).name for r in results]
    x = np.arange(len(results))
    axes[0].bar(x - 0.2, [r["decode_tok_s"] for r in results], 0.4, label="decode program")
    axes[0].bar(x + 0.2, [r["rerun_tok_s"] for r in results], 0.4, label="segment re-run")
    axes[0].scatter(x, [r["bandwidth_bound_tok_s"] for r in results], color="k", marker="_", s=600,
                    label="bandwidth bound")
    axes[0].set_xticks(x, names)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("tokens/s (log)")
    axes[0].legend()
    axes[0].set_title("generation speed, batch 1")
    for r, name in zip(results, names):
        if r["contexts"]:
            axes[1].plot([c["context"] for c in r["contexts"]], [c["decode_ms_median"] for c in r["contexts"]],
                         "o-", label=name)
    axes[1].set_xscale("log")
    ctx_ms = [c["decode_ms_median"] for r in results for c in r["contexts"]]
    axes[1].set_ylim(0, 1.2 * max(ctx_ms) if ctx_ms else 1)
    axes[1].set_xlabel("tokens of context")
    axes[1].set_ylabel("ms per generated token")
    axes[1].set_title("latency vs context (must be flat)")
    if any(r["contexts"] for r in results):
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: list[dict], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1) + "\n"
    atomic_write(out_dir / "bench_decode.json", lambda f: f.write(text.encode()))
    plot(results, out_dir / "bench_decode.png")


def lucidrains_comparison(out_dir: Path, new_tokens: int = 128, rounds: int = 2, threads: int = 1,
                          segment_len: int = 128, log=print) -> dict:
    """infini-transformer-pytorch's own ``generate`` (eager, its K/V cache inside the segment) against our decode
    program on the same weights (exported through the adapter), at the ``small`` preset's shape, side by side.

    Their ``generate`` samples (top-p, temperature 1) and ours is greedy: both run the model once per token, and the
    sampling is a few vector ops of 256 logits. Their progress bar is switched off (its cost would count as theirs).
    The artifact is exported into ``out_dir/lucidrains-small`` once and reused, unless its decode program is not the
    form the adapter exports now (an artifact from before its decode read the cache in place is exported again)."""
    import functools

    import torch
    from infini_transformer_pytorch import InfiniTransformer, InfiniTransformerWrapper
    from infini_transformer_pytorch import wrapper as their_wrapper

    from exporters.pipeline import export_artifact
    from infini_export.adapters.lucidrains import LucidrainsStep
    from runtime.manifest import Manifest
    from runtime.session import InfiniSession

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    theirs = InfiniTransformer(num_tokens=256, dim=128, depth=3, dim_head=32, heads=4, ff_mult=4).eval()
    wrapper = InfiniTransformerWrapper(theirs, segment_length=segment_len).eval()
    adapter = LucidrainsStep(theirs, segment_len).eval()
    art = out_dir / "lucidrains-small"
    in_place = "fused" in adapter.decode_forms()
    if not (art / "manifest.json").is_file() or Manifest.load(art).decode.cache_in_place != in_place:
        export_artifact(adapter, art, "onnx", parity_segments=4, progress=False, log=None)
    ours = InfiniSession.open(art, threads=threads)
    prompt = torch.randint(0, 256, (1, 1))
    t_theirs, t_ours = [], []
    quiet = functools.partial(their_wrapper.tqdm, disable=True)
    for r in range(rounds):
        saved, their_wrapper.tqdm = their_wrapper.tqdm, quiet  # their generate draws a progress bar per token
        try:
            t = time.perf_counter()
            with torch.no_grad():
                wrapper.generate(seq_len=1 + new_tokens, prompt=prompt)
            t_theirs.append((time.perf_counter() - t) / new_tokens)
        finally:
            their_wrapper.tqdm = saved
        ours.reset()
        t = time.perf_counter()
        ours.generate(prompt.numpy(), new_tokens)
        t_ours.append((time.perf_counter() - t) / new_tokens)
        log(f"round {r + 1}/{rounds}: infini-transformer-pytorch generate {1000 * t_theirs[-1]:.2f} ms/token, "
            f"our decode program {1000 * t_ours[-1]:.2f} ms/token")
    return {"their_ms_per_token": 1000 * float(np.median(t_theirs)), "our_ms_per_token": 1000 * float(np.median(t_ours)),
            "speedup": float(np.median(t_theirs) / np.median(t_ours)), "new_tokens": new_tokens, "rounds": rounds,
            "threads": threads, "in_place_cache": in_place}


def sharing_child(artifact: Path, share: bool) -> dict:
    """In a fresh process: resident memory after open and at peak, a segment step and a decode token, with the
    graphs' weights shared (one mapping) or loaded by each graph."""
    from runtime.session import InfiniSession

    s = InfiniSession.open(artifact, share_weights=share)
    opened = current_rss_mb()
    N, V = s.segment_len, s.vocab_size
    ids = np.random.default_rng(0).integers(0, V, 2 * N + 5, dtype=np.int64)
    s.stream(ids[:N])
    t = time.perf_counter()
    s.stream(ids[N:2 * N])
    seg = time.perf_counter() - t
    s.stream(ids[2 * N:])
    ms = _decode_ms(s, 16, 0)
    return {"share_weights": share, "rss_after_open_mb": opened, "peak_rss_mb": peak_rss_mb(),
            "segment_seconds": seg, "decode_ms_median": float(np.median(ms))}
