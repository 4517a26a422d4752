"""The ExecuTorch test artifacts: the tiny preset exported once per test run in every variant the tests use.

An export is 20-80 s of mostly single-threaded Python on the tiny preset, so the seven run two at a time in worker
processes (~2 min on an idle 2-core machine), each through its variant's export with the pipeline's own parity
check (``SEGMENTS`` segments).
"""
import json
import multiprocessing
import os
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.conftest import make_model

SEGMENTS = 50
# set to a folder to keep the exports between runs (development only: nothing checks they are current)
CACHE_ENV = "INFINI_TEST_EXECUTORCH_CACHE"
# the export variants (exporters.variants) of the ExecuTorch format
FP32, PORTABLE = "executorch-xnnpack-fp32", "executorch-portable-fp32"
INT8, INT4 = "executorch-xnnpack-int8", "executorch-xnnpack-int4"
# every (update, variant[, max_batch]) exported; longest first, so the two workers finish together
JOBS = [("delta", INT8), ("delta", INT4), ("delta", FP32), ("linear", FP32), ("delta", PORTABLE), ("linear", PORTABLE),
        ("linear", FP32, 1)]  # last: max_batch=1


def _export_job(update, variant, max_batch, out_dir):
    """Runs in a worker process: export + the pipeline's own parity check; returns plain data."""
    try:
        from exporters.variants import get_variant
        torch.set_num_threads(1)
        cached = Path(out_dir) / "pipeline_report.json"
        if CACHE_ENV in os.environ and cached.is_file():  # a developer's cache of earlier exports
            return json.loads(cached.read_text())
        manifest, report = get_variant(variant).export(make_model(update), out_dir, max_batch=max_batch,
                                                       parity_segments=SEGMENTS, progress=False, log=None)
        result = {"manifest": manifest.to_dict(), "report": report.to_dict(), "error": None}
        if CACHE_ENV in os.environ:
            cached.write_text(json.dumps(result, default=float))
        return result
    except Exception:
        return {"error": traceback.format_exc()}


def export_all(base: Path) -> dict:
    """{(update, variant[, max_batch]): (model, artifact_dir, manifest, pipeline parity report)}."""
    dirs = {job: base / "_".join(str(x) for x in job) for job in JOBS}
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {job: pool.submit(_export_job, *job[:2], job[2] if len(job) > 2 else 64, str(dirs[job]))
                   for job in JOBS}
        results = {job: f.result() for job, f in futures.items()}
    out = {}
    for job, res in results.items():
        if res["error"]:
            out[job] = res["error"]
        else:
            out[job] = (make_model(job[0]), dirs[job], res["manifest"], res["report"])
    return out


def get(et_artifacts, job):
    value = et_artifacts[job]
    if isinstance(value, str):
        pytest.fail(f"export of {job} failed:\n{value}")
    return value
