"""One benchmark run: settings, exports, throughput, GEMM, memory, targets; writes bench.json, tables.md and PNGs.

Sections of the JSON: ``machine``/``versions``/``settings``; ``gemm`` (best fp32 GEMM rate, measured at the start
and the end of the run); ``throughput`` (per config, per backend: tokens/s streamed, per-segment latency median
and p90, first-call latency, session load time, ratio to eager, model-FLOP utilisation); ``memory`` (Infini
through onnxruntime vs a full-attention transformer with a growing KV cache, each length in its own
process); ``export`` (wall time, peak RSS, artifact bytes of every export); ``targets`` (met or missed).
"""
from __future__ import annotations

import datetime
import json
import shutil
import time
from pathlib import Path

import numpy as np

from exporters.variants import get_variant
from runtime.atomic import atomic_write

from .exports import DEFAULT_CACHE, SCHEMA, artifact_root, export_all
from .flops import flops_per_token
from .machine import git_info, import_runtimes, machine_info, measure_gemm, other_load, rnd, versions
from .memory import memory_section
from .proc import log
from .report import plots, tables_markdown
from .runner import BACKENDS, measure_config
from .targets import evaluate_targets

PRESET_ORDER = ("tiny", "small", "medium")
MODES = {
    "smoke": dict(configs=[("tiny", 16, 1)], min_reps=1, max_reps=1, config_budget=0.0, slice_seconds=0.0,
                  memory_preset=("tiny", 16), memory_lengths=[4096], baseline_budget=10.0,
                  gemm_sizes=[256, 512], gemm_reps=2, parity_segments=2, export_lanes=3, export_grouped=True,
                  interleaved_gemm_n=256, first_call_cap=20.0, timeout=300),
    "quick": dict(configs=[("small", 128, 1), ("medium", 512, 1)], min_reps=3, max_reps=40, config_budget=25.0,
                  slice_seconds=0.25, memory_preset=("small", 128), memory_lengths=[4096, 32768],
                  baseline_budget=45.0, gemm_sizes=[1024, 2048], gemm_reps=3, parity_segments=2, export_lanes=2,
                  export_grouped=True, interleaved_gemm_n=1024, first_call_cap=30.0, timeout=1200),
    "full": dict(configs=[(p, n, b) for p in PRESET_ORDER for n in (128, 512) for b in (1, 8)],
                 min_reps=3, max_reps=60, config_budget=20.0, slice_seconds=0.3, memory_preset=("small", 128),
                 memory_lengths=[4096, 32768, 131072, 1048576], baseline_budget=90.0,
                 gemm_sizes=[1024, 2048, 3072], gemm_reps=5, parity_segments=2, export_lanes=2, export_grouped=False,
                 interleaved_gemm_n=1024, first_call_cap=60.0, timeout=3600),
}
def _preset_rank(preset: str) -> int:
    return PRESET_ORDER.index(preset) if preset in PRESET_ORDER else len(PRESET_ORDER)


DEFAULT_OUT = {"smoke": "out/bench-smoke", "quick": "docs/bench/quick", "full": "docs/bench"}


def parse_backends(text: str | None) -> list[str]:
    """``eager`` and export variant names (earlier spellings accepted) from a comma list; all when empty."""
    if not text:
        return list(BACKENDS)
    names = [b.strip() if b.strip() == "eager" else get_variant(b).name for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backends {unknown}; expected a subset of {list(BACKENDS)}")
    return list(dict.fromkeys(names))


def parse_configs(text: str) -> list[tuple[str, int, int]]:
    """``preset/segment_len/batch`` triples from a comma list, e.g. ``small/128/1,medium/512/8``."""
    out = []
    for c in text.split(","):
        parts = c.strip().split("/")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise ValueError(f"bad config {c!r}: expected preset/segment_len/batch, e.g. small/128/1")
        out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def _json_default(o):
    if isinstance(o, (np.bool_, np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _backend_records(backends: list[str], export_records: list[dict]) -> dict:
    out = {}
    for b in backends:
        if b == "eager":
            out[b] = {"available": True, "runtime": "torch (InfiniSession over EagerBackend)"}
            continue
        v = get_variant(b)
        out[b] = {"available": any(r.get("status") == "ok" for r in export_records if r.get("backend") == b),
                  "runtime": v.runtime, "export": {"format": v.format, **v.export_options()}}
    return out


def _gemm_section(gemm: list[dict], throughput: list[dict], threads: int) -> dict:
    for c in throughput:
        ig = c["interleaved_gemm"]
        gemm.append({"lib": "torch", "n": ig["n"], "seconds": rnd(2 * ig["n"] ** 3 / ig["best_gflops"] / 1e9),
                     "gflops": ig["best_gflops"], "when": f"interleaved {c['preset']}/{c['segment_len']}/b{c['batch']}"})
    best = max(gemm, key=lambda g: g["gflops"])
    return {"best_gflops": best["gflops"], "best": {"lib": best["lib"], "n": best["n"], "when": best["when"]},
            "threads": threads, "samples": gemm,
            "method": "C = A @ B, float32 square matrices, best of reps after a warm-up, numpy and torch, at the "
                      "start and the end of the run, and torch slices interleaved with the backends in every "
                      "throughput round-robin"}


def run(mode_name: str, *, out: str | Path | None = None, threads: int = 1, backends: list[str] | None = None,
        configs: list[tuple[str, int, int]] | None = None, memory_lengths: list[int] | None = None,
        baseline_budget: float | None = None, config_budget: float | None = None, timeout: float | None = None,
        skip: set[str] = frozenset(),
        cache: str | None = None, seed: int = 0, command: str = "") -> dict:
    """Run the benchmark in ``mode_name`` ("smoke", "quick" or "full"); write ``bench.json``, ``tables.md`` and
    the PNGs into ``out`` (default per mode) and return the result. ``cache``: a folder of exports reused while
    their sources are unchanged (None: export afresh into a temporary folder). ``skip``: any of "throughput",
    "memory"."""
    mode = dict(MODES[mode_name])
    for key, value in (("configs", configs), ("memory_lengths", memory_lengths),
                       ("baseline_budget", baseline_budget), ("config_budget", config_budget), ("timeout", timeout)):
        if value is not None:
            mode[key] = value
    out = Path(out or DEFAULT_OUT[mode_name]).absolute()
    out.mkdir(parents=True, exist_ok=True)
    backends = backends or list(BACKENDS)

    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    t_run = time.perf_counter()
    result = {"schema": SCHEMA, "mode": mode_name, "created": datetime.datetime.now(datetime.timezone.utc)
              .isoformat(timespec="seconds"), "command": command,
              "machine": machine_info(), "versions": versions(), "git": git_info(), "load_start": other_load(),
              "settings": {"threads": threads, "backends": backends, "configs": [list(c) for c in mode["configs"]],
                           **{k: mode[k] for k in ("min_reps", "max_reps", "config_budget", "slice_seconds",
                                                   "memory_lengths", "baseline_budget", "gemm_sizes", "gemm_reps",
                                                   "parity_segments", "export_lanes", "export_grouped")},
                           "memory_preset": list(mode["memory_preset"]), "seed": seed}}
    log(f"mode {mode_name}, {threads} thread(s), out {out}")
    result["imports"] = import_runtimes()
    gemm = measure_gemm(mode["gemm_sizes"], mode["gemm_reps"], "start")
    log(f"GEMM best so far {max(g['gflops'] for g in gemm):.1f} GFLOP/s")
    art_root, result["settings"]["artifact_cache"] = artifact_root(cache, seed)
    try:
        # one artifact per (preset, segment_len), for the largest batch the configs run it at (the memory run: 1)
        largest: dict[tuple[str, int], int] = {}
        for p, n, b in mode["configs"]:
            largest[(p, n)] = max(b, largest.get((p, n), 1))
        if "memory" not in skip:
            largest.setdefault(tuple(mode["memory_preset"]), 1)
        plan = sorted(((p, n, b) for (p, n), b in largest.items()), key=lambda k: (_preset_rank(k[0]), k[1]))
        variants = [b for b in backends if b != "eager"] if "throughput" not in skip else ["onnx-fp32"]
        t0 = time.perf_counter()
        ctx, export_records = export_all(plan, variants, art_root, mode, threads, seed)
        log(f"exports done in {time.perf_counter() - t0:.0f} s")
        ctx["art_root"] = art_root
        ctx["params"] = {k: v["parameters"] for k, v in ctx["checkpoints"].items()}
        ctx["export_status"] = {(r.get("preset"), r.get("segment_len"), r.get("backend")): r for r in export_records}
        result["export"] = [{k: v for k, v in r.items() if k not in ("out", "traceback")} for r in export_records]
        result["backends"] = _backend_records(backends, export_records)

        # throughput, cheapest configs first (their FLOP rates predict which backend would be far too slow)
        throughput, rates = [], {}
        if "throughput" not in skip:
            from infini_export import InfiniConfig

            def cost(c):
                return flops_per_token(InfiniConfig.from_name(c[0], segment_len=c[1]))["total"] * c[1] * c[2]

            for preset, seg, batch in sorted(mode["configs"], key=cost):
                log(f"throughput {preset}/{seg}/b{batch}")
                throughput.append(measure_config(preset, seg, batch, backends, ctx, mode, threads, rates, seed))
                res = throughput[-1]["results"]
                log("  " + ", ".join(f"{k} {v.get('tokens_per_second', v['status'])}" for k, v in res.items()))
        gemm += measure_gemm(mode["gemm_sizes"], mode["gemm_reps"], "end")
        result["gemm"] = _gemm_section(gemm, throughput, threads)
        gemm_best = result["gemm"]["best_gflops"] * 1e9
        throughput.sort(key=lambda c: (_preset_rank(c["preset"]), c["segment_len"], c["batch"]))
        for c in throughput:
            for rec in c["results"].values():
                if rec["status"] == "ok":
                    rec["mfu"] = round(rec["tokens_per_second"] * c["flops_per_token"] / gemm_best, 4)
        result["throughput"] = throughput

        memory = None
        if "memory" not in skip:
            mp = tuple(mode["memory_preset"])
            memory = memory_section(ctx["dirs"].get((mp[0], mp[1], "onnx-fp32")), mp[0], mp[1],
                                    mode["memory_lengths"], mode["baseline_budget"], threads, mode["timeout"])
        result["memory"] = memory
        result["targets"] = evaluate_targets(throughput, memory, gemm_best)
        result["load_end"] = other_load()
        result["duration_seconds"] = round(time.perf_counter() - t_run, 1)
        result["plots"] = plots(result, out)
    finally:
        if not cache:
            shutil.rmtree(art_root, ignore_errors=True)
    text = json.dumps(result, indent=1, default=_json_default) + "\n"
    atomic_write(out / "bench.json", lambda f: f.write(text.encode()))
    tables = tables_markdown(result)
    atomic_write(out / "tables.md", lambda f: f.write(tables.encode()))
    log(f"wrote {out / 'bench.json'} and {', '.join(result['plots'])} in {result['duration_seconds']:.0f} s")
    for t in result["targets"]:
        mark = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        log(f"  [{mark}] {t['name']}: {t['measured']} (target {t['target']}) {t['note']}")
    return result


def default_cache(mode_name: str, fresh: bool, artifacts: str | None) -> str | None:
    """The export cache a run uses: none with ``fresh``; else ``artifacts``; else the user cache for the
    smoke and quick modes and none (export afresh) for the full run."""
    if fresh:
        return None
    return artifacts or (str(DEFAULT_CACHE) if mode_name != "full" else None)


__all__ = ["MODES", "run", "parse_backends", "parse_configs", "default_cache"]
