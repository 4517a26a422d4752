"""Threads over one loaded artifact; half-precision weights with a float32 state."""
import threading

import numpy as np
import pytest
import torch

from runtime import InfiniSession
from tests.conftest import make_model


def test_threads_share_weights_not_state(onnx_artifacts):
    _, art = onnx_artifacts["delta"]
    base = InfiniSession.open(art)
    inputs = [np.random.default_rng(i).integers(0, 256, 300 + 17 * i) for i in range(4)]
    sequential = []
    for ids in inputs:
        s = base.fork()
        sequential.append((s.feed(ids), s.state))
    sessions = [base.fork() for _ in inputs]
    results = [None] * len(inputs)

    def work(i):
        out = None
        for start in range(0, len(inputs[i]), 23):  # many small calls interleave across threads
            part = sessions[i].feed(inputs[i][start:start + 23])
            out = part if out is None else np.concatenate([out, part])
        results[i] = out

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (ref_logits, ref_state), got, s in zip(sequential, results, sessions):
        np.testing.assert_allclose(got, ref_logits, rtol=0, atol=1e-6)
        for k, v in ref_state.items():  # 23-token calls sum a segment's memory write in another order
            np.testing.assert_allclose(s.state[k], v, rtol=1e-5, atol=1e-5)
    assert all(s.backend is base.backend for s in sessions)  # one loaded program


def test_float16_weights_float32_state_validated(tmp_path):
    from exporters.pipeline import export_artifact
    model = make_model("delta").half()
    manifest, report = export_artifact(model, tmp_path / "fp16", "onnx", parity_segments=20, progress=False,
                                       log=None)
    manifest = manifest.to_dict()
    assert report.passed, report.failures
    assert manifest["weights_dtype"] == "float16"
    assert all(s["dtype"] == "float32" for s in manifest["state"])
    s = InfiniSession.open(tmp_path / "fp16")
    s.feed(np.arange(100) % 256)
    assert all(v.dtype == np.float32 for v in s.state.values())


def test_float16_state_is_refused(onnx_artifacts):
    _, art = onnx_artifacts["delta"]
    s = InfiniSession.open(art)
    st = {k: v.astype(np.float16) for k, v in s.state.items()}
    with pytest.raises(ValueError, match="overflows float16"):
        s.set_state(st)
    model = make_model("delta")
    state = tuple(type(m)(m.memory.half(), m.norm.half()) for m in model.init_state(1))
    with pytest.raises(ValueError, match="z grows"):
        model.step(torch.zeros(1, 4, dtype=torch.long), state)
