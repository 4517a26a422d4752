"""What a session does, the same on every backend: streaming equals the model's forward, any chunking gives the
same outputs and state, stream/generate agree with feed, and save/load/fork/reset carry the state exactly."""
import json

import numpy as np
import pytest

from runtime import InfiniSession
from tests.conftest import check_session_matches_forward
from tests.et_artifacts import FP32, PORTABLE, get

BACKENDS = ["onnxruntime", "executorch-xnnpack", "executorch-portable"]
# the shared ExecuTorch artifact of each (backend, update rule) (tests/et_artifacts.py): the linear rule is the
# static batch-1 program; the portable kernels are exported for the delta rule only
ET_JOBS = {("executorch-xnnpack", "delta"): ("delta", FP32), ("executorch-xnnpack", "linear"): ("linear", FP32, 1),
           ("executorch-portable", "delta"): ("delta", PORTABLE)}
# chunked feeds sum a segment's memory write in another order: logits agree to this (absolute), by backend
CHUNK_ATOL = {"onnxruntime": 1e-6, "executorch-xnnpack": 1e-5, "executorch-portable": 1e-5}


@pytest.fixture
def artifact(request, onnx_artifacts):
    """(model, artifact folder) of the tiny preset for the backend and update rule the test asks for."""
    backend, update = request.param
    if backend == "onnxruntime":
        return onnx_artifacts[update]
    model, art, _, _ = get(request.getfixturevalue("et_artifacts"), ET_JOBS[backend, update])
    return model, art


def cases(*updates):
    pairs = [(b, u) for b in BACKENDS for u in updates if b == "onnxruntime" or (b, u) in ET_JOBS]
    return pytest.mark.parametrize("artifact", pairs, ids=[f"{b}-{u}" for b, u in pairs], indirect=True)


@cases("linear", "delta")
def test_session_feed_equals_eager_forward(artifact):
    """Independent path: the session's streaming loop vs the model's own forward over 50 segments, batch 2
    (batch 1 for a program of batch 1)."""
    model, art = artifact
    max_batch = json.loads((art / "manifest.json").read_text())["batch"]["max"]
    check_session_matches_forward(model, art, batch=min(2, max_batch))


@cases("delta")
def test_chunking_invariance(artifact, request):
    _, art = artifact
    atol = CHUNK_ATOL[request.node.callspec.params["artifact"][0]]
    ids = np.random.default_rng(0).integers(0, 256, 1000)
    whole = InfiniSession.open(art)
    ref = whole.feed(ids)
    for sizes in ([1, 7, 333], [16, 15, 17, 1], [999, 1]):
        s = InfiniSession.open(art)
        parts, pos, k = [], 0, 0
        while pos < len(ids):
            n = sizes[k % len(sizes)]
            parts.append(s.feed(ids[pos:pos + n]))
            pos, k = pos + n, k + 1
        np.testing.assert_allclose(np.concatenate(parts), ref, rtol=0, atol=atol)
        for name, value in whole.state.items():
            np.testing.assert_allclose(s.state[name], value, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(s.pending_tokens, whole.pending_tokens)


@cases("delta")
def test_stream_matches_feed_and_generate_is_greedy(artifact):
    _, art = artifact
    ids = np.random.default_rng(1).integers(0, 256, 77)
    a, b = InfiniSession.open(art), InfiniSession.open(art)
    np.testing.assert_allclose(a.feed(ids)[-1], b.stream(ids)[0], rtol=0, atol=1e-5)
    out = b.generate(ids[:0], 5)  # continue from the pending token
    manual, t = [], InfiniSession.open(art)
    logits = t.feed(ids)[-1]
    for _ in range(5):
        tok = int(logits.argmax())
        manual.append(tok)
        logits = t.feed(np.array([tok]))[-1]
    assert out[0].tolist() == manual
    sampled = [InfiniSession.open(art).generate(ids, 8, temperature=1.0, top_k=20, top_p=0.9, seed=3)
               for _ in range(2)]
    assert sampled[0].shape == (1, 8) and np.array_equal(*sampled)


@cases("linear", "delta")
def test_save_load_fork_reset(artifact, tmp_path):
    _, art = artifact
    ids = np.random.default_rng(2).integers(0, 256, 250)
    s = InfiniSession.open(art)
    s.feed(ids[:203])
    s.save_state(tmp_path / "st.npz")
    twin = s.fork()
    a = s.feed(ids[203:])
    np.testing.assert_array_equal(twin.feed(ids[203:]), a)
    r = InfiniSession.open(art)
    r.load_state(tmp_path / "st.npz")
    assert r.tokens_consumed == 203 and r.pending_tokens.shape == (1, 203 % 16)
    np.testing.assert_array_equal(r.feed(ids[203:]), a)
    s.reset()
    assert all(not v.any() for v in s.state.values()) and s.tokens_consumed == 0
    assert not list(tmp_path.glob("*.tmp"))
