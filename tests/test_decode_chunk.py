"""A decode program planned for fewer tokens than a segment (ExecuTorch's ``decode_chunk``): the runtime splits
longer chunks, the numbers stay those of the eager model, a failed feed leaves the session unchanged, and a call
or a manifest beyond the bound is refused by name."""
import json

import numpy as np
import pytest
import torch

from runtime import InfiniSession
from runtime.errors import InfiniRuntimeError, InputError, ManifestError
from tests.conftest import rehash_manifest
from tests.et_artifacts import DECODE_CHUNK, FP32, get

BATCH1 = ("linear", FP32, 1)  # the shared batch-1 program (tests/et_artifacts.py), its decode planned for CHUNK tokens
CHUNK = DECODE_CHUNK[BATCH1]


@pytest.fixture
def chunked(et_artifacts):
    model, art, _, _ = get(et_artifacts, BATCH1)
    return model, art


def _eager_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids))[0].numpy()


def test_manifest_records_the_bound_and_long_chunks_are_split(chunked):
    model, art = chunked
    man = json.loads((art / "manifest.json").read_text())
    assert man["decode"]["max_chunk"] == CHUNK and man["exporter"]["decode_chunk"] == CHUNK
    # the decode method reads its inputs (the K/V cache above all) where the caller keeps them: none in its arena;
    # the last-token method's inputs are copied into its own
    methods = man["memory"]["methods"]
    assert man["exporter"]["methods"] == ["step_last", "decode"]
    assert methods["decode"]["input_bytes"] > 0 and methods["decode"]["planned_input_bytes"] == 0
    assert methods["step_last"]["planned_input_bytes"] == methods["step_last"]["input_bytes"] > 0
    N = model.cfg.segment_len
    ids = np.random.default_rng(0).integers(0, model.cfg.vocab_size, (1, 5 + 13 + 2 * N + 1))
    session = InfiniSession.open(art)
    calls = []
    run = session.backend.run_decode
    session.backend.run_decode = lambda x, p, *a: calls.append((x.shape[1], p)) or run(x, p, *a)
    got = np.concatenate([session.feed(ids[:, :5]), session.feed(ids[:, 5:18]), session.feed(ids[:, 18:])], axis=1)
    # 5 from 0; then 11 to the boundary in 4 + 4 + 3 and 2 after it; then 14 to the boundary, a segment (no
    # full-logits method: all its logits from decode calls), 3 more
    assert calls == [(4, 0), (1, 4), (4, 5), (4, 9), (3, 13), (2, 0), (4, 2), (4, 6), (4, 10), (2, 14),
                     (4, 0), (4, 4), (4, 8), (4, 12), (3, 0)]
    np.testing.assert_allclose(got, _eager_logits(model, ids), atol=2e-4, rtol=1e-4)
    assert session.position == 3


def test_a_failed_chunked_feed_leaves_the_session_unchanged(chunked):
    model, art = chunked
    ids = np.random.default_rng(1).integers(0, model.cfg.vocab_size, (1, 30))
    session = InfiniSession.open(art)
    session.feed(ids[:, :6])
    before = ({k: v.copy() for k, v in session.state.items()}, session.position, [c.copy() for c in session._cache])
    run, count = session.backend.run_decode, [0]

    def failing(*a):
        count[0] += 1
        if count[0] == 4:  # past the boundary: the rows in use were overwritten by then
            raise RuntimeError("injected")
        return run(*a)

    session.backend.run_decode = failing
    with pytest.raises(InfiniRuntimeError, match="injected"):
        session.feed(ids[:, 6:25])
    assert session.position == before[1]
    for k, v in before[0].items():
        np.testing.assert_array_equal(session.state[k], v, err_msg=k)
    for c, b in zip(session._cache, before[2]):
        np.testing.assert_array_equal(c[:, :, :before[1]], b[:, :, :before[1]])
    session.backend.run_decode = run
    fresh = InfiniSession.open(art)
    fresh.feed(ids[:, :6])
    np.testing.assert_array_equal(session.feed(ids[:, 6:25]), fresh.feed(ids[:, 6:25]))


def test_a_call_beyond_the_bound_is_refused(chunked):
    model, art = chunked
    session = InfiniSession.open(art)
    with pytest.raises(InputError, match=f"at most {CHUNK} per call"):
        session.backend.run_decode(np.zeros((1, CHUNK + 1), np.int64), 0, session._state, session._cache)


@pytest.mark.parametrize("bad", [0, 17, 2.5, True])
def test_a_manifest_bound_out_of_range_is_refused(chunked, tmp_path, bad):
    import shutil
    _, art = chunked
    copy = tmp_path / "art"
    shutil.copytree(art, copy)
    man = json.loads((copy / "manifest.json").read_text())
    man["decode"]["max_chunk"] = bad
    (copy / "manifest.json").write_text(json.dumps(man))
    rehash_manifest(copy)
    with pytest.raises(ManifestError, match="max_chunk"):
        InfiniSession.open(copy)
