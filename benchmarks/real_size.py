"""Real-size exports (random weights): export time, peak RSS, file and weight sizes and, for ExecuTorch, the
planned memory of every method; each export in a process of its own under an address-space limit."""
from __future__ import annotations

import resource
import time
from pathlib import Path

from runtime.measure import peak_rss_mb

from .proc import WORKER, log, run_json


def export_preset(preset: str, variant: str, out_dir: str | Path, parity_segments: int = 2,
                  n_layers: int | None = None, full_logits: bool = False, jobs: int | None = None) -> dict:
    """Export ``preset`` (random weights, seed 0) as ``variant`` in this process; what it cost and produced.
    ``peak_rss_mb``: the larger of this process's peak and the sampled memory of it and its lowering processes.

    ExecuTorch variants are planned for batch 1 (the command line's default), with the full-logits method only
    with ``full_logits``, their methods lowered by ``jobs`` processes (None: the exporter's default)."""
    import torch

    from exporters.pipeline import DEFAULT_MAX_BATCH
    from exporters.variants import get_variant
    from infini_export import InfiniConfig, InfiniTransformer

    v = get_variant(variant)
    torch.manual_seed(0)
    model = InfiniTransformer(InfiniConfig.from_name(preset, **({"n_layers": n_layers} if n_layers else {}))).eval()
    t0 = time.perf_counter()
    try:
        extra = {"full_logits": True} if full_logits and v.format == "executorch" else {}
        if jobs is not None and v.format == "executorch":
            extra["jobs"] = jobs
        manifest, report = v.export(model, out_dir, parity_segments=parity_segments,
                                    max_batch=DEFAULT_MAX_BATCH[v.format], progress=False, log=None, **extra)
    except MemoryError:
        return {"error": "MemoryError: over the address-space limit", "peak_rss_mb": round(peak_rss_mb())}
    ex = manifest.exporter  # every format records its build's seconds and stages; ExecuTorch also its lowering
    # ExecuTorch methods lowered in processes of their own: their memory with this process's, sampled while they ran
    lowering = ex["lowering"] if v.format == "executorch" else None
    peak = max(peak_rss_mb(), lowering["peak_mb"] or 0) if lowering else peak_rss_mb()
    return {"seconds_with_parity": round(time.perf_counter() - t0, 1),
            "export_seconds": ex["export_seconds"], "parameters": model.num_parameters(),
            "files": {k: f.bytes for k, f in manifest.files.items()}, "memory": manifest.memory,
            "max_batch": manifest.max_batch, "peak_rss_mb": round(peak),
            "process_peak_rss_mb": round(peak_rss_mb()), "lowering": lowering,
            "stages": ex["stages"], "build_stages": ex["stage_seconds"],  # (both formats' builds have a "prepare")
            "parity": {"passed": report.passed, "segments": parity_segments, **report.summary}}


def measure(preset: str, variant: str, work: str | Path, parity_segments: int = 2, n_layers: int | None = None,
            limit_gb: float = 10.0, full_logits: bool = False, jobs: int | None = None) -> dict:
    """``export_preset`` in a worker process limited to ``limit_gb`` of address space, with its wall and CPU
    time; a failed export is a row with ``error``."""
    out_dir = Path(work) / (f"{preset}-{variant}" + (f"-jobs{jobs}" if jobs else ""))
    cmd = [*WORKER, "real-size", "--preset", preset, "--variant", variant, "--out", str(out_dir),
           "--parity-segments", str(parity_segments)] + (["--n-layers", str(n_layers)] if n_layers else []) \
        + (["--full-logits"] if full_logits else []) + (["--lower-jobs", str(jobs)] if jobs else [])
    log(f"{variant}: {' '.join(cmd[1:])}")
    t0, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    res = run_json(cmd, timeout=None, limit_gb=limit_gb)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    row = {"wall_seconds": round(time.perf_counter() - t0, 1),
           "cpu_seconds": round(usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime, 1),
           "limit_gb": limit_gb}
    if res.get("status") != "ok":
        row["error"] = res.get("error")
    res.pop("status", None)
    res.pop("process_seconds", None)
    return {**row, **res}


__all__ = ["export_preset", "measure"]
