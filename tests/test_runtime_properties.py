"""Property-based tests of the runtime API: every input either works or raises the documented error,
and a failed call leaves the session exactly as it was."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime import InfiniRuntimeError, InfiniSession, InputError, StateError
from tests.conftest import FUZZ_COUNTS

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def cases(pytestconfig):
    """Counts the property cases run; the count is printed in the terminal summary (tests/conftest.py)."""
    counts = pytestconfig.stash.setdefault(FUZZ_COUNTS, {})
    counts.setdefault("runtime properties", 0)

    def one():
        counts["runtime properties"] += 1
    return one


@pytest.fixture(scope="module")
def session(onnx_artifacts):
    _, art = onnx_artifacts["delta"]
    s = InfiniSession.open(art)
    s.feed(np.arange(37) % 256)  # a non-trivial state with a pending partial segment
    return s


def snapshot(s):
    return s.state, s.pending_tokens, s.tokens_consumed, s.batch_size


def assert_same(s, snap):
    state, pend, count, batch = snap
    for k, v in s.state.items():
        np.testing.assert_array_equal(v, state[k])
    np.testing.assert_array_equal(s.pending_tokens, pend)
    assert s.tokens_consumed == count and s.batch_size == batch


dtypes = st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                          np.float16, np.float32, np.float64, np.bool_, np.complex64])


@SETTINGS
@given(ids=hnp.arrays(dtype=dtypes, shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40),
                      elements=None))
def test_feed_any_array(session, cases, ids):
    cases()
    work = session.fork()
    snap = snapshot(work)
    ok_dtype = np.issubdtype(ids.dtype, np.integer)
    ok_shape = ids.ndim == 1 or (ids.ndim == 2 and ids.shape[0] == 1)
    in_range = ids.size == 0 or (ok_dtype and ids.min() >= 0 and ids.max() < 256)
    try:
        out = work.feed(ids)
    except InputError:
        assert not (ok_dtype and ok_shape and in_range), f"valid ids refused: {ids.dtype} {ids.shape}"
        assert_same(work, snap)
        return
    assert ok_dtype and ok_shape and in_range
    T = ids.shape[-1]
    assert out.shape == ((T, 256) if ids.ndim == 1 else (1, T, 256))
    assert np.isfinite(out).all()
    assert work.tokens_consumed == snap[2] + T


@SETTINGS
@given(n=st.integers(0, 70), lo=st.integers(-2**40, 2**40), span=st.integers(0, 600))
def test_feed_values(session, cases, n, lo, span):
    cases()
    work = session.fork()
    snap = snapshot(work)
    ids = (np.arange(n, dtype=np.int64) % (span + 1)) + lo
    valid = n == 0 or (ids.min() >= 0 and ids.max() < 256)
    try:
        work.feed(ids)
        assert valid
    except InputError as exc:
        assert not valid and "[0, 256)" in str(exc)
        assert_same(work, snap)


@SETTINGS
@given(name=st.sampled_from(["memory.0", "norm.0", "memory.1", "norm.1"]),
       kind=st.sampled_from(["shape", "dtype", "nan", "inf", "missing", "extra", "list", "ok"]))
def test_set_state_checks(session, cases, name, kind):
    cases()
    work = session.fork()
    snap = snapshot(work)
    state = work.state
    if kind == "shape":
        state[name] = state[name][..., :-1]
    elif kind == "dtype":
        state[name] = state[name].astype(np.float16)
    elif kind == "nan":
        state[name].flat[0] = np.nan
    elif kind == "inf":
        state[name].flat[-1] = np.inf
    elif kind == "missing":
        del state[name]
    elif kind == "extra":
        state["memory.9"] = state[name]
    elif kind == "list":
        state[name] = state[name].tolist()
    if kind == "ok":
        work.set_state(state, work.pending_tokens, work.tokens_consumed)
        assert_same(work, snap)
        return
    with pytest.raises(StateError):
        work.set_state(state)
    assert_same(work, snap)


@SETTINGS
@given(max_new=st.one_of(st.integers(-3, 4), st.floats(allow_nan=True), st.none(), st.booleans()),
       temperature=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3), st.none()),
       top_k=st.one_of(st.none(), st.integers(-3, 300), st.floats(0, 5)),
       top_p=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
       seed=st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_generate_arguments(session, cases, max_new, temperature, top_k, top_p, seed):
    cases()
    work = session.fork()
    snap = snapshot(work)
    try:
        out = work.generate(np.array([65, 66]), max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed)
    except InputError:
        assert_same(work, snap)
        return
    assert isinstance(max_new, int) and not isinstance(max_new, bool) and max_new >= 0
    assert out.shape == (1, max_new) and ((out >= 0) & (out < 256)).all()


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-30])
def test_the_smallest_temperatures_sample_the_largest_logit(temperature):
    """Scaled by a tiny temperature, a logit overflows unless the largest is subtracted first: the draw is then the
    argmax, with no NaN and no warning."""
    import warnings

    from runtime.sampling import sample
    logits = np.random.default_rng(0).normal(size=(3, 40)).astype(np.float32) * 30
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for top_k, top_p in ((None, None), (5, 0.9)):
            got = sample(logits, temperature, top_k, top_p, np.random.default_rng(1))
            np.testing.assert_array_equal(got, logits.argmax(-1))
