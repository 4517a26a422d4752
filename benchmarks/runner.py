"""Throughput: every backend of a config side by side.

All sessions of a config are open at once and take turns segment slice by segment slice (round-robin, the
order rotated every repetition), all with the same thread count, with a GEMM slice taking its turn too.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from exporters.variants import MAIN, get_variant

from .flops import flops_per_token
from .machine import rnd

BACKENDS = ("eager", *MAIN)  # the eager model itself, then the main export variants


class Runner:
    """One backend's session for one config, plus its measurements."""

    def __init__(self, name: str):
        self.name, self.session, self.lat, self.status, self.reason = name, None, [], "ok", None
        self.load_seconds = self.first_call = None


def open_runner(name: str, ckpt_dir: Path, art_dir: Path | None, batch: int, threads: int) -> Runner:
    """A session of backend ``name`` (eager: the checkpoint; else the artifact), or why there is none."""
    r = Runner(name)
    t0 = time.perf_counter()
    try:
        if name == "eager":
            from infini_export.checkpoint import load_checkpoint
            from infini_export.eager import eager_session
            r.session = eager_session(load_checkpoint(ckpt_dir).eval(), batch_size=batch)
        else:
            from runtime.session import InfiniSession
            r.session = InfiniSession.open(art_dir, backend=get_variant(name).runtime, batch_size=batch,
                                           threads=threads)
        r.load_seconds = time.perf_counter() - t0
    except ImportError as exc:
        r.status, r.reason = "unavailable", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a backend that cannot open is recorded, not hidden
        cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else None
        r.status = "unavailable" if cause else "failed"
        r.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return r


class _GemmSlice:
    """Looks like a session to the round-robin: ``stream`` runs one n x n float32 matmul."""

    def __init__(self, n: int):
        import torch

        self.n, self.flops = n, 2.0 * n ** 3
        g = torch.Generator().manual_seed(n)
        self.a, self.b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)

    def stream(self, _ids):
        import torch

        torch.matmul(self.a, self.b)


def measure_config(preset, seg, batch, backends, ctx, mode, threads, rates, seed) -> dict:
    """Tokens/s, latency, first call, load time and ratio to eager of every backend of one config, measured
    round-robin; ``rates`` (backend -> best FLOP/s so far) predicts which backend would be far too slow."""
    from infini_export import InfiniConfig

    cfg = InfiniConfig.from_name(preset, segment_len=seg)
    fpt = flops_per_token(cfg)
    seg_flops = fpt["total"] * seg * batch
    ckpt_dir = ctx["art_root"] / f"ckpt_{preset}_{seg}"
    rng = np.random.default_rng(seed)
    pool = [rng.integers(0, cfg.vocab_size, (batch, seg), dtype=np.int64) for _ in range(8)]
    runners = []
    for name in backends:
        if name != "eager" and (preset, seg, name) not in ctx["dirs"]:
            r = Runner(name)
            rec = ctx["export_status"].get((preset, seg, name), {})
            r.status = "unavailable" if rec.get("status") == "unavailable" else "failed"
            r.reason = f"export {rec.get('status', 'missing')}: {rec.get('error', '')}"[:400]
            runners.append(r)
            continue
        # a backend far too slow for this config (portable kernels on the 20M model) is predicted from
        # the FLOP rate it reached on a smaller config, and skipped with the prediction recorded
        if name in rates and seg_flops / rates[name] > mode["first_call_cap"]:
            r = Runner(name)
            r.status = "skipped"
            r.predicted_segment_seconds = seg_flops / rates[name]
            r.reason = (f"predicted {r.predicted_segment_seconds:.0f} s per segment from the "
                        f"{rates[name] / 1e9:.2f} GFLOP/s it reached on a smaller config (cap "
                        f"{mode['first_call_cap']:g} s)")
            runners.append(r)
            continue
        r = open_runner(name, ckpt_dir, ctx["dirs"].get((preset, seg, name)), batch, threads)
        runners.append(r)
    live = [r for r in runners if r.status == "ok"]
    # first call (cold), then a second warm call to size each backend's time slice
    for r in live:
        try:
            t0 = time.perf_counter()
            r.session.stream(pool[0])
            r.first_call = time.perf_counter() - t0
            t0 = time.perf_counter()
            r.session.stream(pool[1])
            r.warm = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001
            r.status, r.reason = "failed", f"{type(exc).__name__}: {str(exc)[:300]}"
    live = [r for r in live if r.status == "ok"]
    # a GEMM slice takes its turn in the round-robin too: the machine's rate under the same conditions
    gemm = Runner("_gemm")
    gemm.session = _GemmSlice(mode["interleaved_gemm_n"])
    gemm.session.stream(None)
    t0 = time.perf_counter()
    gemm.session.stream(None)
    gemm.warm = time.perf_counter() - t0
    live.append(gemm)
    for r in live:
        r.k = max(1, min(64, round(mode["slice_seconds"] / max(r.warm, 1e-6)))) if mode["slice_seconds"] else 1
    t_start, rep = time.perf_counter(), 0
    while live and rep < mode["max_reps"]:
        if rep >= mode["min_reps"] and time.perf_counter() - t_start > mode["config_budget"]:
            break
        order = live[rep % len(live):] + live[:rep % len(live)]  # rotate: no backend always goes first
        for r in order:
            for j in range(r.k):
                ids = pool[(rep * r.k + j) % len(pool)]
                t0 = time.perf_counter()
                r.session.stream(ids)
                r.lat.append(time.perf_counter() - t0)
        rep += 1
    g_rates = gemm.session.flops / np.array(gemm.lat)
    interleaved = {"n": gemm.session.n, "slices": len(gemm.lat), "median_gflops": round(float(np.median(g_rates)) / 1e9, 2),
                   "best_gflops": round(float(g_rates.max()) / 1e9, 2)}
    results = {}
    for r in runners:
        rec = {"status": r.status}
        if r.status != "ok":
            rec["reason"] = r.reason
            if hasattr(r, "predicted_segment_seconds"):
                rec["predicted_segment_seconds"] = round(r.predicted_segment_seconds, 1)
            results[r.name] = rec
            continue
        lat = np.array(r.lat)
        tps = batch * seg * len(lat) / lat.sum()
        tps_med = batch * seg / float(np.median(lat))
        rate = tps * fpt["total"]
        rates[r.name] = max(rates.get(r.name, 0.0), rate)
        rec.update(tokens_per_second=round(tps, 1), tokens_per_second_from_median=round(tps_med, 1),
                   mfu_vs_interleaved_gemm=round(tps_med * fpt["total"] / (interleaved["median_gflops"] * 1e9), 4),
                   segments_measured=int(len(lat)), repetitions=rep,
                   segments_per_slice=r.k,
                   latency_ms={"median": rnd(1e3 * float(np.median(lat))), "p90": rnd(1e3 * float(np.percentile(lat, 90))),
                               "min": rnd(1e3 * float(lat.min())), "max": rnd(1e3 * float(lat.max()))},
                   first_call_ms=rnd(1e3 * r.first_call), load_seconds=rnd(r.load_seconds),
                   achieved_gflops=round(rate / 1e9, 3))
        results[r.name] = rec
    eager = results.get("eager", {}).get("tokens_per_second")
    eager_med = results.get("eager", {}).get("tokens_per_second_from_median")
    for rec in results.values():
        if rec["status"] == "ok":
            rec["ratio_to_eager"] = round(rec["tokens_per_second"] / eager, 3) if eager else None
            rec["ratio_to_eager_from_median"] = (round(rec["tokens_per_second_from_median"] / eager_med, 3)
                                                 if eager_med else None)
    for r in runners:  # free the sessions before the next config
        r.session = None
    return {"preset": preset, "segment_len": seg, "batch": batch, "parameters": ctx["params"][(preset, seg)],
            "flops_per_token": fpt["total"], "flops_breakdown": fpt["breakdown"],
            "elementwise_flops_per_token_not_counted": fpt["elementwise_not_counted"],
            "seconds": round(time.perf_counter() - t_start, 2), "interleaved_gemm": interleaved, "results": results}
