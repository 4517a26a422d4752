"""Memory: Infini through onnxruntime (constant state) vs full attention with a growing KV cache, each stream
length in processes of its own; the state against the KV cache at every length."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from runtime.measure import format_length

from .proc import RUN_STREAM, WORKER, log, run_json

def stream_run(art_dir: str | Path, tokens: int, *, threads: int | None = None, backend: str | None = None,
               timeout: float | None = None) -> dict:
    """``infini-export run ART --random-tokens N --quiet`` in a torch-free process of its own: its summary
    (``peak_rss_mb``, ``tokens_per_second``, ``state_bytes``, ...) with ``status`` "ok", or a failure record."""
    cmd = [*RUN_STREAM, str(Path(art_dir).absolute()), "--random-tokens", str(tokens), "--quiet"]
    cmd += (["--threads", str(threads)] if threads else []) + (["--backend", backend] if backend else [])
    return run_json(cmd, timeout, env={**os.environ, "INFINI_EXPORT_NO_TORCH": "1"})


RSS_REPEATS = 3  # Infini processes per stream length (median peak RSS)


def memory_section(art_dir: Path | None, preset: str, seg: int, lengths: list[int], budget: float, threads: int,
                   timeout: float) -> dict:
    """Peak RSS and time per token of both, per stream length (the baseline stops at its time budget), and
    the state and KV-cache bytes at every length."""
    from infini_export import InfiniConfig

    cfg = InfiniConfig.from_name(preset, segment_len=seg)
    infini, baseline = [], []
    for n in lengths:
        if art_dir is None:
            infini.append({"tokens": n, "status": "unavailable", "error": "no onnxruntime fp32 artifact"})
            continue
        log(f"memory: Infini (onnxruntime) {format_length(n)} tokens, {RSS_REPEATS} processes")
        runs = [stream_run(art_dir, n, threads=threads, backend="onnxruntime", timeout=timeout)
                for _ in range(RSS_REPEATS)]
        ok = [r for r in runs if r.get("status") == "ok"]
        # one process's peak RSS varies by ~1-2 MB whatever the length (allocator and page-fault luck): the
        # median of a few processes per length is what is compared across lengths; all of them are kept
        rec = sorted(ok, key=lambda r: r["peak_rss_mb"])[len(ok) // 2] if ok else runs[0]
        rec["peak_rss_mb_runs"] = [r.get("peak_rss_mb") for r in runs]
        rec["tokens_requested"] = n
        if rec.get("tokens_per_second"):
            rec["us_per_token"] = round(1e6 / rec["tokens_per_second"], 3)
        rec.pop("last_logits_sha256", None)
        infini.append(rec)
    stop = None
    for n in lengths:
        if stop:
            baseline.append({"tokens_requested": n, "status": "not run", "stopped": f"not run: {stop}"})
            continue
        log(f"memory: full-attention baseline {format_length(n)} tokens (budget {budget:g} s)")
        rec = run_json([*WORKER, "baseline", "--preset", preset, "--segment-len", str(seg),
                        "--tokens", str(n), "--budget", str(budget), "--threads", str(threads)],
                       timeout=budget * 3 + 120)
        baseline.append(rec)
        if rec.get("status") != "ok":
            stop = f"the {format_length(n)} run failed"
        elif rec.get("stopped"):
            stop = f"the {format_length(n)} run stopped at {rec['tokens']:,} tokens ({rec['stopped']})"
    # state vs KV cache, at every length (analytic; the KV cache also measured where the baseline got there)
    paper = 4 * cfg.n_layers * cfg.d_head * (cfg.d_head + 1) * cfg.n_heads  # d_key (d_value + 1) H per layer
    state_rows = []
    for i, n in enumerate(lengths):
        kv = 2 * cfg.n_layers * cfg.n_heads * cfg.d_head * n * 4
        measured = infini[i].get("state_bytes") if infini[i].get("status") == "ok" else None
        b = baseline[i]
        state_rows.append({"tokens": n, "infini_state_bytes": measured if measured is not None else cfg.state_bytes(1),
                           "infini_state_measured": measured is not None, "paper_formula_bytes": paper,
                           "paper_formula_numbers": paper // 4, "kv_cache_bytes": kv,
                           "kv_cache_measured": b.get("status") == "ok" and b.get("tokens") == n,
                           "kv_over_state": round(kv / (measured or cfg.state_bytes(1)), 1)})
    ok_rss = [r["peak_rss_mb"] for r in infini if r.get("status") == "ok"]
    flat = None
    if len(ok_rss) >= 2:
        flat = {"min_mb": min(ok_rss), "max_mb": max(ok_rss),
                "spread_percent": round(100 * (max(ok_rss) - min(ok_rss)) / min(ok_rss), 2),
                "first_mb": ok_rss[0], "last_mb": ok_rss[-1],
                "last_over_first_percent": round(100 * (ok_rss[-1] - ok_rss[0]) / ok_rss[0], 2)}
    done = [r for r in baseline if r.get("status") == "ok" and r.get("tokens")]
    growth = None
    if len(done) >= 2:
        x = np.array([r["tokens"] for r in done], dtype=float)
        y = np.array([r["peak_rss_mb"] for r in done], dtype=float)
        slope, icpt = np.polyfit(x, y, 1)
        pred = slope * x + icpt
        r2 = 1 - ((y - pred) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
        growth = {"mb_per_1k_tokens": round(slope * 1024, 4), "intercept_mb": round(icpt, 1), "r2": round(float(r2), 4),
                  "kv_cache_mb_per_1k_tokens": round(2 * cfg.n_layers * cfg.n_heads * cfg.d_head * 1024 * 4 / 2 ** 20, 4),
                  "points": len(done)}
    return {"preset": preset, "segment_len": seg, "config": cfg.to_dict(), "threads": threads,
            "infini_backend": "onnxruntime fp32 (`infini-export run --random-tokens N --quiet`)",
            "baseline_desc": "plain causal transformer, same width/depth/heads/FFN/vocab, eager torch, "
                             "F.scaled_dot_product_attention, chunks of segment_len, KV cache grown 1.5x when full",
            "baseline_budget_seconds": budget, "lengths": lengths, "infini": infini, "baseline": baseline,
            "state": state_rows, "infini_rss_flatness": flat, "baseline_rss_growth": growth}


def _resident_mb(weights_path: str | None) -> dict:
    """Resident MB now by kind: the mapped weights file, other files (libraries), anonymous memory (heap, arenas)."""
    out, kind = {"weights_file": 0, "files": 0, "anon": 0}, "anon"
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if not head[0].endswith(":"):  # a mapping's first line: address range, perms, offset, dev, inode[, path]
                path = head[5] if len(head) > 5 else ""
                kind = "weights_file" if path == weights_path else "files" if path.startswith("/") else "anon"
            elif head[0] == "Rss:":
                out[kind] += int(head[1])
    return {k: round(v / 1024, 1) for k, v in out.items()}


def session_peak(art_dir: str | Path, tokens: int, tail: int = 0, new_tokens: int = 32, threads: int = 2,
                 **options) -> dict:
    """This process's peak RSS (VmHWM, MB) over a session of its own: open, stream ``tokens`` random tokens in
    segments (the last-token program), ``tail`` more in one call (the decode program), then ``new_tokens``
    greedy tokens; RSS by kind after each step, the peak against the artifact's weight bytes."""
    from runtime.measure import current_rss_mb, peak_rss_mb
    from runtime.session import InfiniSession

    steps = {}
    session = InfiniSession.open(art_dir, threads=threads, **options)
    shared = session.manifest.shared_weights  # the weights file every graph maps (None: weights inside the graphs)
    weights_path = str(session.manifest.file_path(shared.file).resolve()) if shared else None
    weights = session.manifest.files[shared.file].bytes if shared else None

    def mark(name):
        steps[name] = {"rss_mb": round(current_rss_mb(), 1), "peak_mb": round(peak_rss_mb(), 1),
                       **_resident_mb(weights_path)}

    mark("open")
    ids = np.random.default_rng(0).integers(0, session.vocab_size, tokens + tail)
    for i in range(0, tokens, session.segment_len):
        session.stream(ids[i:i + session.segment_len])
        if i == 0:
            mark("first segment")
    mark(f"{format_length(tokens)} tokens")
    if tail:
        session.stream(ids[tokens:])
        mark(f"+{tail} in one call")
    for k, _ in enumerate(session.generate_iter(np.zeros((1, 0), np.int64), new_tokens)):
        if k == 0:
            mark("first decoded token")
    mark(f"{new_tokens} decoded")
    peak = peak_rss_mb()
    return {"artifact": str(art_dir), "tokens": tokens, "tail": tail, "new_tokens": new_tokens, "threads": threads,
            "options": options, "steps": steps, "peak_rss_mb": round(peak, 1), "weight_bytes": weights,
            "peak_over_weights": round(peak * 2 ** 20 / weights, 3) if weights else None}
