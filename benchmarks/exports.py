"""The artifacts the benchmark measures: random-weight checkpoints, their exports (each in a worker process),
and a cache of them keyed by everything they depend on."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from exporters.variants import get_variant

from .machine import versions
from .proc import ROOT, WORKER, log, run_json

SCHEMA = "infini-export-bench/2"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "infini-export" / "bench-artifacts"


def save_model_checkpoint(preset: str, seg: int, seed: int, directory: Path) -> dict:
    """A random-weight checkpoint of ``preset`` at segment length ``seg`` (written once); its config and size."""
    import torch

    from infini_export import InfiniConfig, InfiniTransformer, load_checkpoint, save_checkpoint

    cfg = InfiniConfig.from_name(preset, segment_len=seg)
    if not (directory / "model.safetensors").exists():
        torch.manual_seed(seed)
        model = InfiniTransformer(cfg)
        with torch.no_grad():  # gates off 0 so the heads mix differently, like a trained model
            for block in model.blocks:
                block.attn.beta.copy_(torch.linspace(-1.0, 1.0, block.attn.beta.numel()))
        save_checkpoint(model, directory)
    n_params = sum(p.numel() for p in load_checkpoint(directory).parameters())
    return {"config": cfg.to_dict(), "parameters": n_params}


def source_key(seed: int) -> str:
    """What an exported artifact depends on: model and exporter sources, library versions, seed, schema."""
    h = hashlib.sha256(json.dumps([SCHEMA, seed, versions()], sort_keys=True).encode())
    files = sorted((ROOT / "exporters").glob("*.py")) + [ROOT / "infini_export" / f"{m}.py" for m in (
        "config", "model", "protocol", "state", "checkpoint")] + [ROOT / "benchmarks" / "worker.py"]
    for f in files:
        if f.exists():
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def artifact_root(cache: str | None, seed: int) -> tuple[Path, dict | None]:
    """(folder for the exports, cache record or None). With a cache, exports of older sources are dropped;
    without one, a fresh temporary folder (the caller removes it)."""
    if not cache:
        return Path(tempfile.mkdtemp(prefix="infini-bench-")), None
    key = source_key(seed)
    cache_root = Path(cache) if Path(cache).is_absolute() else ROOT / cache
    if cache_root.is_dir():  # artifacts of older sources are never reused
        for old in cache_root.iterdir():
            if old.is_dir() and old.name != key:
                shutil.rmtree(old, ignore_errors=True)
    art_root = cache_root / key
    art_root.mkdir(parents=True, exist_ok=True)
    return art_root, {"dir": str(art_root), "key": key}


def export_all(plan: list[tuple[str, int, int]], variants: list[str], art_root: Path, mode: dict, threads: int,
               seed: int) -> tuple[dict, list[dict]]:
    """Export every (preset, segment_len, max_batch) x variant, each for batches up to its ``max_batch``; returns
    ({"checkpoints", "dirs"}, one record per export).

    ``dirs`` maps (preset, segment_len, variant) to the artifact folder of every successful export. An export
    already in ``art_root`` is reused with the cost measured then.
    """
    ckpts, records, todo = {}, [], []
    for preset, seg, max_batch in plan:
        ckpt = art_root / f"ckpt_{preset}_{seg}"
        ckpts[(preset, seg)] = save_model_checkpoint(preset, seg, seed, ckpt)
        for name in variants:
            out = art_root / f"{preset}_{seg}_b{max_batch}_{name}"
            rec_file = out / "bench_export.json"
            if rec_file.exists():
                records.append({**json.loads(rec_file.read_text()), "reused": True})
            else:
                todo.append({"variant": name, "out": str(out), "parity_segments": mode["parity_segments"],
                             "max_batch": max_batch, "preset": preset, "segment_len": seg,
                             "checkpoint": str(ckpt)})
    lanes = mode["export_lanes"]
    if mode["export_grouped"]:  # smoke/quick: jobs share processes (grouped by runtime); timings overlap
        groups: dict[tuple, list] = {}
        for job in todo:
            v = get_variant(job["variant"])
            groups.setdefault((job["checkpoint"], v.format, v.quantize if v.format == "executorch" else None),
                              []).append(job)
        batches = sorted(groups.values(), key=lambda g: -sum(3 if "executorch" in j["variant"] else 1 for j in g))
    else:  # full: one process per export (its own peak RSS; wall time with `lanes` single-threaded exports
        # running at once, CPU time unaffected)
        batches = [[job] for job in todo]

    def run_batch(batch):
        fd, name = tempfile.mkstemp(prefix="jobs_", suffix=".json", dir=art_root)
        jobs_file = Path(name)
        with os.fdopen(fd, "w") as f:
            json.dump(batch, f)
        log(f"export {'; '.join(j['preset'] + '/' + str(j['segment_len']) + ' ' + j['variant'] for j in batch)}")
        res = run_json([*WORKER, "export", "--checkpoint", batch[0]["checkpoint"], "--jobs", str(jobs_file),
                        "--threads", str(threads)], timeout=mode["timeout"])
        jobs_file.unlink()
        out = res["jobs"] if res.get("status") == "ok" else [
            {"status": "failed", "error": res.get("error")} for _ in batch]
        for job, rec in zip(batch, out):
            rec.update(preset=job["preset"], segment_len=job["segment_len"], backend=job["variant"],
                       shared_process=len(batch) > 1, concurrent_lanes=lanes, reused=False)
            if rec.get("status") == "ok":
                Path(job["out"], "bench_export.json").write_text(json.dumps(rec))
        return out

    with ThreadPoolExecutor(max_workers=max(1, lanes)) as pool:
        for out in pool.map(run_batch, batches):
            records.extend(out)
    dirs = {(r["preset"], r["segment_len"], r["backend"]): Path(r["out"]) for r in records if r.get("status") == "ok"}
    return {"checkpoints": ckpts, "dirs": dirs}, records
