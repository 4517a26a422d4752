"""The folder of traced ONNX programs: a program read from it is the program a trace makes, and anything the trace
reads (weights, ties, attributes outside the weights, the inputs, the dynamic shapes) changes its key."""
from concurrent.futures import ThreadPoolExecutor

import onnx
import pytest
import torch

from exporters import trace_cache
from exporters.options import ExportOptions
from exporters.pipeline import export_artifact
from tests.conftest import make_model
from tests.tiny_rnn import TinyRNN

PROGRAMS = ("model.onnx",)


def _export(module, out, cache):
    return export_artifact(module, out, "onnx", progress=False, log=None,
                           options=ExportOptions("onnx", parity_segments=2, trace_cache=cache))


def test_a_program_read_from_the_cache_is_the_traced_one(tmp_path, monkeypatch):
    monkeypatch.delenv(trace_cache.ENV, raising=False)  # the reference: traced, no cache anywhere
    _export(TinyRNN().eval(), tmp_path / "ref", None)
    assert not list(tmp_path.glob("cache*"))
    _export(TinyRNN().eval(), tmp_path / "first", tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.onnx"))) == 1  # the segment step, kept

    def no_trace(*args, **kwargs):
        raise AssertionError("traced again: the cache was not read")
    monkeypatch.setattr(torch.onnx, "export", no_trace)
    manifest, report = _export(TinyRNN().eval(), tmp_path / "second", tmp_path / "cache")
    assert report.passed, report.failures[:3]
    for name in PROGRAMS:
        ref = onnx.load(str(tmp_path / "ref" / name))
        for run in ("first", "second"):
            assert onnx.load(str(tmp_path / run / name)) == ref, (run, name)
    with pytest.raises(AssertionError, match="traced again"):  # another module is a miss
        _export(TinyRNN(seed=1).eval(), tmp_path / "other", tmp_path / "cache")


def test_concurrent_exports_of_one_program_trace_it_once(tmp_path, monkeypatch):
    """Two exports of one module at the same time: one traces the program under its key's lock, the other waits
    for it and reads it back."""
    traced, real = [], torch.onnx.export

    def counting(*args, **kwargs):
        traced.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(torch.onnx, "export", counting)
    modules = [TinyRNN().eval() for _ in range(2)]  # made here: their seeding uses torch's global random generator
    with ThreadPoolExecutor(2) as pool:  # an export that raises raises here
        results = list(pool.map(lambda i: _export(modules[i], tmp_path / str(i), tmp_path / "cache"), range(2)))
    assert len(traced) == 1
    assert all(report.passed for _, report in results)
    assert onnx.load(str(tmp_path / "0" / "model.onnx")) == onnx.load(str(tmp_path / "1" / "model.onnx"))


def _key(model, batch=2, max_batch=64):
    from infini_export.protocol import FlatStep
    flat = FlatStep(model).eval()
    spec = model.step_spec()
    return trace_cache.trace_key(flat, flat.example_inputs(batch), input_names=spec.input_names(),
                                 output_names=spec.output_names(), dynamic_shapes=flat.dynamic_shapes(max_batch),
                                 opset_version=18, custom_translation_table=None)


def test_the_key_changes_with_what_the_trace_reads():
    base = _key(make_model("delta", n_layers=1))
    assert _key(make_model("delta", n_layers=1)) == base  # the same module made again: the same key
    changed = make_model("delta", n_layers=1)
    with torch.no_grad():
        changed.blocks[0].attn.beta[0] += 1e-3  # one weight
    assert _key(changed) != base
    assert _key(make_model("delta", n_layers=1, memory_eps=1e-5)) != base  # a value outside the weights
    assert _key(make_model("linear", n_layers=1)) != base
    untied = make_model("delta", n_layers=1)
    assert untied.lm_head.weight is untied.embed.weight
    untied.lm_head.weight = torch.nn.Parameter(untied.embed.weight.detach().clone())  # the same values, two tensors
    assert _key(untied) != base
    assert _key(make_model("delta", n_layers=1), batch=3) != base  # the example inputs
    assert _key(make_model("delta", n_layers=1), max_batch=8) != base  # the dynamic shapes


def test_an_executorch_export_takes_no_trace_cache(tmp_path):
    with pytest.raises(ValueError, match="trace_cache applies to ONNX"):
        ExportOptions("executorch", trace_cache=tmp_path)
