"""The ExecuTorch test artifacts: the tiny preset exported once per test run in every variant the tests use.

Each (update, variant[, max_batch]) is exported when a test first asks for it, through its variant's export with the
pipeline's own parity check (``SEGMENTS`` segments), once for the whole run (tests/shared.py: under pytest-xdist the
worker that asks first exports it and the others read it). An export is 20-80 s of mostly single-threaded Python
on the tiny preset.
"""
import pytest
import torch

from tests.conftest import make_model
from tests.shared import Lazy, build_once

SEGMENTS = 50
# set to a folder to keep the exports between runs (development only: nothing checks they are current)
CACHE_ENV = "INFINI_TEST_EXECUTORCH_CACHE"
# the export variants (exporters.variants) of the ExecuTorch format
FP32, PORTABLE = "executorch-xnnpack-fp32", "executorch-portable-fp32"
INT8, INT4 = "executorch-xnnpack-int8", "executorch-xnnpack-int4"
# the quantized programs as the exporter makes them by default: one sequence (a static batch of 1, with the decode
# method; a static program also lowers in ~2/3 of a dynamic one's time)
INT8_JOB, INT4_JOB = ("delta", INT8, 1), ("delta", INT4, 1)
# every (update, variant[, max_batch]) the tests use: the delta rule in every variant (float32 and portable under a
# dynamic batch), and the linear rule as the float32 static batch-1 program (max_batch=1), which also carries the
# linear rule's parity through ExecuTorch
JOBS = [INT8_JOB, INT4_JOB, ("delta", FP32), ("delta", PORTABLE), ("linear", FP32, 1)]
# the two-layer model where the layers matter (the dynamic-batch float32 program: every layer's state wired through
# ExecuTorch); one layer elsewhere, which shows the variant's behaviour at about 60% of the lowering time
TWO_LAYERS = {("delta", FP32)}
# the batch-1 program's decode method is planned for fewer tokens than a segment, so that a feed of more is split
# into calls (tests/test_decode_chunk.py); every other program takes up to a segment minus one token per call
DECODE_CHUNK = {("linear", FP32, 1): 4}


def job_model(job):
    """The eager model a job exports: the tiny preset with the job's update rule and layers."""
    return make_model(job[0], n_layers=2 if tuple(job) in TWO_LAYERS else 1)


def _export(job, out_dir) -> dict:
    """Export + the pipeline's own parity check; returns plain data."""
    from exporters.options import DECODE_CHUNK as DEFAULT_CHUNK, ExportOptions
    from exporters.pipeline import export_artifact
    from exporters.variants import get_variant
    torch.set_num_threads(1)
    variant = get_variant(job[1])
    # jobs=1: the methods lowered in this process (the suite's processes already use the cores; the lowering
    # in processes of their own is tested by tests/test_executorch_lower.py)
    options = ExportOptions(variant.format, **variant.export_options(), max_batch=job[2] if len(job) > 2 else 64,
                            jobs=1, parity_segments=SEGMENTS, decode_chunk=DECODE_CHUNK.get(tuple(job), DEFAULT_CHUNK))
    manifest, report = export_artifact(job_model(job), out_dir, progress=False, log=None, options=options)
    return {"manifest": manifest.to_dict(), "report": report.to_dict()}


def artifacts(root) -> Lazy:
    """{(update, variant[, max_batch]): (model, artifact_dir, manifest, pipeline parity report)}, each exported on
    first access; a failed export is its traceback (a str), which ``get`` reports."""
    def make(job):
        try:
            folder, res = build_once(root, "et-" + "_".join(str(x) for x in job), lambda d: _export(job, d))
        except RuntimeError as exc:
            return str(exc)
        return job_model(job), folder, res["manifest"], res["report"]
    return Lazy(JOBS, make)


def get(et_artifacts, job):
    value = et_artifacts[job]
    if isinstance(value, str):
        pytest.fail(f"export of {job} failed:\n{value}")
    return value
