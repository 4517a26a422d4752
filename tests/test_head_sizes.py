"""Every head size exports: where onnxruntime's GroupQueryAttention does not take a head size (it needs multiples
of 16), the ONNX decode program is written in standard ops instead, the manifest and ``info`` say which, and the
artifact passes the same parity; greedy generation equals the eager model's."""
import numpy as np
import pytest
import torch

from exporters.onnx_gqa import choose_decode_form
from exporters.pipeline import export_artifact
from infini_export import InfiniConfig, InfiniTransformer
from infini_export.eager import eager_session
from runtime import InfiniSession

HEAD_SIZES = (24, 40, 64, 72)


def _model(d_head: int) -> InfiniTransformer:
    torch.manual_seed(d_head)
    cfg = InfiniConfig.from_name("tiny", d_head=d_head, n_heads=2, d_model=2 * d_head, n_layers=1, vocab_size=64)
    return InfiniTransformer(cfg).eval()


@pytest.mark.parametrize("d_head", HEAD_SIZES)
def test_the_decode_form_follows_the_head_size(d_head):
    form, why = choose_decode_form(_model(d_head))
    assert form == ("fused" if d_head % 16 == 0 else "rows")
    assert (str(d_head) in why) and ("multiple of 16" in why) == (form == "rows")


@pytest.mark.parametrize("fmt", ["onnx", "executorch"])
@pytest.mark.parametrize("d_head", HEAD_SIZES)
def test_every_head_size_exports_and_generates_as_eager(tmp_path, fmt, d_head):
    if fmt == "executorch" and d_head in (24, 64):  # ExecuTorch writes one form for every head size: two suffice
        pytest.skip("ExecuTorch's decode program has one form for every head size; 40 and 72 cover it")
    model = _model(d_head)
    per_format = {"max_batch": 1, "jobs": 1} if fmt == "executorch" else {"max_batch": 4}
    manifest, report = export_artifact(model, tmp_path / "art", fmt, parity_segments=3, progress=False, log=None,
                                       **per_format)
    assert report.passed and report.decode["calls"] > 0, report.failures[:3]
    expected = "fused" if fmt == "onnx" and d_head % 16 == 0 else "rows"
    assert (manifest.decode.form or "rows") == expected
    assert manifest.decode.cache_in_place == (expected == "fused")
    session = InfiniSession.open(tmp_path / "art")
    prompt = np.random.default_rng(d_head).integers(0, 64, 21)  # crosses a segment boundary while generating
    ours = [int(t[0]) for t in session.generate_iter(prompt, 20)]
    ref = [int(t[0]) for t in eager_session(model).generate_iter(prompt, 20)]
    assert ours == ref
