"""Methods lowered in processes of their own and merged into one program: the same program as one process makes,
and every way a lowering process can fail named in the parent."""
import os

import numpy as np
import pytest

from exporters import executorch_lower
from exporters.executorch_lower import Lowered, lower_methods
from exporters.pte_merge import PteMergeError, merge_programs
from runtime import InfiniSession
from tests.et_artifacts import DECODE_CHUNK, FP32, get, job_model

BATCH1 = ("linear", FP32, 1)


def test_processes_make_the_program_one_process_makes(et_artifacts, tmp_path):
    """The fixture's batch-1 program was lowered in one process; lowered one method per process and merged, the
    same model gives the same methods, plans and numbers, and its weights once."""
    from exporters.executorch import export_executorch

    model, art1, one, _ = get(et_artifacts, BATCH1)
    assert one["exporter"]["lowering"]["processes"] == 1
    merged_manifest = export_executorch(job_model(BATCH1), tmp_path / "merged", max_batch=1, jobs=2,
                                        decode_chunk=DECODE_CHUNK[BATCH1])
    merged_manifest.write()
    manifest, art = merged_manifest.to_dict(), tmp_path / "merged"
    assert manifest["exporter"]["lowering"]["processes"] == 2
    assert set(manifest["exporter"]["lowering"]["method_seconds"]) == {"step_last", "decode"}
    assert one["memory"]["methods"] == manifest["memory"]["methods"]  # every method's plan, input and output bytes
    # the weights are stored once in the merged program (the embedding table is read by two methods)
    assert abs(manifest["memory"]["weights_bytes"] - one["memory"]["weights_bytes"]) < 1024
    assert one["exporter"]["non_delegated_ops"] == manifest["exporter"]["non_delegated_ops"]
    ids = np.random.default_rng(3).integers(0, model.cfg.vocab_size, size=(1, 2 * model.cfg.segment_len + 5))
    merged, single = InfiniSession.open(art), InfiniSession.open(art1)
    np.testing.assert_array_equal(merged.feed(ids), single.feed(ids))  # decode calls, then step_last below
    for name, a in merged.state.items():
        np.testing.assert_array_equal(a, single.state[name], err_msg=name)
    np.testing.assert_array_equal(merged.stream(ids), single.stream(ids))  # whole segments through step_last


def test_merging_a_method_twice_is_refused(et_artifacts):
    _, art, _, _ = get(et_artifacts, BATCH1)
    blob = (art / "model.pte").read_bytes()
    with pytest.raises(PteMergeError, match=r"method '(step_last|decode)' is in more than one program"):
        merge_programs([blob, blob])


def test_merging_named_data_that_differs_is_refused(et_artifacts):
    from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary

    _, art, _, _ = get(et_artifacts, BATCH1)
    blob = (art / "model.pte").read_bytes()
    other = deserialize_pte_binary(blob)
    for plan in other.program.execution_plan:
        plan.name += "_other"
    key, entry = next(iter(other.named_data.pte_data.items()))
    other.named_data.buffers[entry.buffer_index] = bytes(len(other.named_data.buffers[entry.buffer_index]))
    changed = bytes(serialize_pte_binary(other, extract_delegate_segments=True))
    with pytest.raises(PteMergeError, match=f"named data '{key}' differs"):
        merge_programs([blob, changed])


def _fake_programs():
    return {"step_last": "program a", "decode": "program b"}


def test_a_failing_lowering_process_is_named(monkeypatch):
    def fail(programs, *args):
        if "decode" in programs:
            raise NotImplementedError("no kernel for decode")
        return Lowered(b"", {}, {}, {})

    monkeypatch.setattr(executorch_lower, "_lower", fail)  # the forked processes inherit it
    with pytest.raises(RuntimeError, match=r"lowering the method 'decode' failed \(NotImplementedError\)"
                                           r"(.|\n)*no kernel for decode"):
        lower_methods(_fake_programs(), {}, [], {}, jobs=2)


def test_a_lowering_process_that_dies_is_named(monkeypatch):
    def die(programs, *args):
        if "decode" in programs:
            os._exit(9)  # as a process killed for memory: no result, no traceback
        return Lowered(b"", {}, {}, {})

    monkeypatch.setattr(executorch_lower, "_lower", die)
    with pytest.raises(RuntimeError, match="the process lowering 'decode' exited with code 9 without a result"):
        lower_methods(_fake_programs(), {}, [], {}, jobs=2)


def test_jobs_is_checked():
    with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
        lower_methods(_fake_programs(), {}, [], {}, jobs=0)


def test_without_the_merge_the_methods_are_lowered_here(monkeypatch):
    """Should ExecuTorch's serializer move (the merge uses its private module), the export still completes: the
    methods are lowered again in this process, as with jobs=1."""
    calls = []

    def lower(programs, *args):
        calls.append((os.getpid(), tuple(programs)))
        return Lowered(b"program", {}, {}, {})

    def moved(blobs):
        raise ImportError("cannot import name 'deserialize_pte_binary'")

    monkeypatch.setattr(executorch_lower, "_lower", lower)
    monkeypatch.setattr(executorch_lower, "merge_programs", moved)
    out = lower_methods(_fake_programs(), {}, [], {}, jobs=2)
    assert out.buffer == b"program" and out.processes == 1
    assert calls == [(os.getpid(), ("step_last", "decode"))]  # the forked processes' calls are not seen here


def _collect_garbage():
    import faulthandler
    import gc
    faulthandler.disable()  # the crash this child may show is expected: no traceback dump into the run's output
    gc.collect()


def test_a_forked_lowering_process_never_frees_what_it_inherits(onnx_artifacts):
    """An onnxruntime session left in a reference cycle by earlier work, freed by a forked child's garbage collector,
    crashes or hangs the child (its thread pool is not there); ``start_forked`` frees it in this process first."""
    import gc
    import multiprocessing

    from exporters.executorch_lower import start_forked
    _, art = onnx_artifacts["delta"]
    ctx = multiprocessing.get_context("fork")
    enabled = gc.isenabled()
    gc.disable()
    try:
        for start in (lambda p: p.start(), start_forked):
            cycle = {"session": InfiniSession.open(art)}
            cycle["self"] = cycle
            cycle["session"].feed(np.arange(40) % 256)
            del cycle
            proc = ctx.Process(target=_collect_garbage, daemon=True)
            start(proc)
            proc.join(60)
            if proc.is_alive():
                proc.kill()
                proc.join()
            if start is start_forked:
                assert proc.exitcode == 0
            else:  # the hazard is real here: the child that frees the session fails
                assert proc.exitcode != 0
                gc.collect()
    finally:
        if enabled:
            gc.enable()
