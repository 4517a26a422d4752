"""The decode program: eager decode vs the model's forward, the exported program vs eager, the session's use."""
import numpy as np
import pytest
import torch

from conftest import make_model
from infini_export.eager import EagerBackend
from infini_export.parity import tolerance_for
from infini_export.parity_decode import decode_calls, validate_decode
from infini_export.state import LayerCache
from runtime import InfiniSession, InputError, StateError


def _decode_all(model, ids, chunks):
    """Drive the eager decode over ``ids`` in chunks that never cross a segment; return logits and state."""
    N = model.step_spec().segment_len
    state, cache = model.init_decode_state(ids.shape[0])
    out, t, k = [], 0, 0
    with torch.no_grad():
        while t < ids.shape[1]:
            p = t % N
            n = min(chunks[k % len(chunks)], N - p, ids.shape[1] - t)
            logits, state, rows = model.decode(ids[:, t:t + n], torch.tensor([p]), state, cache)
            where = torch.arange(p, p + n)
            cache = tuple(LayerCache(c.key.index_copy(2, where, r.key), c.value.index_copy(2, where, r.value))
                          for c, r in zip(cache, rows))
            out.append(logits)
            t, k = t + n, k + 1
    return torch.cat(out, 1), state


@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("chunks", [[1], [3, 1, 7], [16]])
def test_eager_decode_equals_forward(update, chunks):
    model = make_model(update)
    N = model.cfg.segment_len
    ids = torch.randint(0, 256, (2, 3 * N + 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_logits, _ = model(ids)
        _, ref_state = model(ids[:, :3 * N])
    logits, state = _decode_all(model, ids, chunks)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    # after 3 complete segments + 5 tokens: memory is that of the 3 segments, the 5 tokens' write is pending
    for st, ref in zip(state, ref_state):
        torch.testing.assert_close(st.memory, ref.memory, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(st.norm, ref.norm, atol=1e-5, rtol=1e-5)
        assert st.pending_norm.abs().sum() > 0


def test_decode_parity_schedule_alternates_one_token_and_long_calls():
    """Long segments are checked in 32 calls a segment, one token and N/16 - 1 tokens in turn, none crossing a
    boundary; short ones token by token over three boundaries."""
    from exporters.pipeline import decode_parity
    assert decode_parity(128) == {"decode_segments": 3, "decode_chunk": 1}
    args = decode_parity(2048)
    assert args == {"decode_segments": 2, "decode_chunk": (1, 127)}
    calls = decode_calls(2 * 2048, 2048, args["decode_chunk"])
    assert len(calls) == 64 and sum(n for _, n in calls) == 4096
    assert all(t // 2048 == (t + n - 1) // 2048 for t, n in calls)  # no call crosses a boundary
    assert [t + n for t, n in calls[:-1]] == [t for t, _ in calls[1:]]
    short = decode_calls(80, 40, (1, 15))
    assert short[:6] == [(0, 1), (1, 15), (16, 1), (17, 15), (32, 1), (33, 7)] and short[6] == (40, 1)


def test_decode_rejects_bad_position():
    model = make_model()
    state, cache = model.init_decode_state(1)
    ids = torch.zeros(1, 2, dtype=torch.int64)
    for p in (-1, 15, 16):
        with pytest.raises(ValueError, match="position"):
            model.decode(ids, torch.tensor([p]), state, cache)
    with pytest.raises(ValueError, match="cache must be a tuple of 2"):  # a missing layer would be skipped silently
        model.decode(ids, torch.tensor([0]), state, cache[:1])


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_exported_decode_parity_and_manifest(onnx_artifacts, update):
    model, art = onnx_artifacts[update]
    s = InfiniSession.open(art)
    dec = s.manifest.decode
    assert s.decoding and dec.max_tokens == model.cfg.segment_len
    assert [e.name for e in dec.state][:4] == ["memory.0", "norm.0", "pending_memory.0", "pending_norm.0"]
    assert all(e.dtype == "float32" for e in dec.state)  # the state stays float32
    parity = s.manifest.parity.measured
    assert parity is not None
    rep = validate_decode(s.backend, model, tolerance_for("onnxruntime", "float32"), segments=3, batch=2)
    assert rep["failures"] == [] and rep["boundaries"] == 3 and rep["calls"] == 3 * model.cfg.segment_len
    assert rep["logits_max_abs"] < 1e-4 and rep["top1"] == 1.0


class _PassThroughPending:
    """A decode program whose pending write output returns its input: the validator must name it."""

    def __init__(self, backend, index):
        self.inner, self.index, self.name = backend, index, backend.name

    def run(self, ids, state):
        return self.inner.run(ids, state)

    def run_decode(self, ids, position, state, cache):
        logits, new, rows = self.inner.run_decode(ids, position, state, cache)
        new = list(new)
        new[self.index] = state[self.index]
        return logits, new, rows


def test_decode_wiring_failure_is_named(onnx_artifacts):
    model, art = onnx_artifacts["delta"]
    s = InfiniSession.open(art)
    names = [e.name for e in s.manifest.decode.state]
    broken = _PassThroughPending(s.backend, names.index("pending_memory.1"))
    rep = validate_decode(broken, model, tolerance_for("onnxruntime", "float32"), segments=1)
    assert any("pending_memory.1" in f and "passes its input through" in f for f in rep["wiring"]["failures"])


class _WritesInsideSegment(_PassThroughPending):
    """A decode program that writes its memory before the boundary (and so misses the segment step's state)."""

    def run_decode(self, ids, position, state, cache):
        logits, new, rows = self.inner.run_decode(ids, position, state, cache)
        new = list(new)
        new[self.index] = new[self.index] + 1e-2
        return logits, new, rows


def test_decode_parity_against_the_segment_step_names_a_mid_segment_write(onnx_artifacts):
    """The reference is the eager segment step: a memory written inside the segment is named at its first call,
    and the boundary state then differs from the step's."""
    model, art = onnx_artifacts["linear"]
    s = InfiniSession.open(art)
    names = [e.name for e in s.manifest.decode.state]
    rep = validate_decode(_WritesInsideSegment(s.backend, names.index("memory.1")), model,
                          tolerance_for("onnxruntime", "float32"), segments=1, chunk=(1, 5))
    assert rep["failures"][0].startswith("decode token 0: state memory.1 changed by 1.000e-02 inside the segment")
    assert any(f.startswith("segment boundary at token") and "memory.1" in f for f in rep["failures"])
    N = model.cfg.segment_len
    assert rep["calls"] == len(decode_calls(N, N, (1, 5))) and rep["chunk"] == [1, 5]


def test_generate_one_call_per_token_and_equals_eager_rerun(onnx_artifacts):
    model, art = onnx_artifacts["delta"]
    N = model.cfg.segment_len
    prompt = np.random.default_rng(2).integers(0, 256, 21)
    s = InfiniSession.open(art)
    calls = {"step": 0, "decode": 0}
    run, run_last, run_decode = s.backend.run, s.backend.run_last, s.backend.run_decode

    def count(kind, fn):
        def wrapped(*a):
            calls[kind] += 1
            return fn(*a)
        return wrapped

    s.backend.run, s.backend.run_decode = count("step", run), count("decode", run_decode)
    s.backend.run_last = count("step", run_last)  # the prefill's whole segment: the last-token step
    n_new = 3 * N  # crosses three segment boundaries
    out = s.generate(prompt, n_new)[0]
    # prompt: one step (16 tokens) + one decode call (5 tokens); then one decode call per generated token
    assert calls == {"step": 1, "decode": 1 + n_new}
    ids = torch.tensor(prompt)[None]
    with torch.no_grad():  # the eager model re-run on the whole prefix, token after token
        for tok in out:
            logits, _ = model(ids)
            assert int(logits[0, -1].argmax()) == int(tok)
            ids = torch.cat([ids, torch.tensor([[int(tok)]])], 1)


def test_state_file_round_trip_is_exact_and_old_files_migrate(onnx_artifacts, tmp_path):
    model, art = onnx_artifacts["linear"]
    ids = np.random.default_rng(3).integers(0, 256, 16 * 2 + 9)
    a = InfiniSession.open(art)
    a.feed(ids)
    a.save_state(tmp_path / "v2.npz")
    b = InfiniSession.open(art)
    b.load_state(tmp_path / "v2.npz")
    nxt = np.array([5, 6, 7])
    np.testing.assert_array_equal(a.fork().feed(nxt), b.feed(nxt))
    # a segment-state file (version 1, pending tokens) continues by running its pending tokens
    old = InfiniSession.open(art, use_decode=False)
    old.feed(ids)
    old.save_state(tmp_path / "v1.npz")
    c = InfiniSession.open(art)
    c.load_state(tmp_path / "v1.npz")
    assert c.position == 9 and c.tokens_consumed == len(ids)
    np.testing.assert_allclose(c.feed(nxt), a.feed(nxt), atol=1e-5, rtol=1e-5)
    with pytest.raises(StateError, match="decode state"):
        old.load_state(tmp_path / "v2.npz")


def test_bad_decode_inputs_are_typed_and_leave_session_unchanged(onnx_artifacts, tmp_path):
    model, art = onnx_artifacts["delta"]
    s = InfiniSession.open(art)
    s.feed(np.arange(20))
    before, pos = s.state, s.position
    backend, dec = s.backend, s.manifest.decode
    state = [np.zeros(e.concrete_shape(1), np.float32) for e in dec.state]
    cache = [np.zeros(e.concrete_shape(1), np.float32) for e in dec.cache]
    ids = np.zeros((1, 1), np.int64)
    with pytest.raises(InputError, match="position"):
        backend.run_decode(ids, 16, state, cache)
    with pytest.raises(InputError, match="position"):
        backend.run_decode(np.zeros((1, 4), np.int64), 14, state, cache)
    with pytest.raises(InputError, match="key.0"):
        backend.run_decode(ids, 0, state, [cache[0][:, :, :8], *cache[1:]])
    # a saved decode state with a wrong-shaped cache, or of another model
    s.save_state(tmp_path / "st.npz")
    with np.load(tmp_path / "st.npz") as f:
        arrays = dict(f)
    arrays["cache/key.0"] = arrays["cache/key.0"][:, :, :2]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(StateError, match=r"cache/(key|value)\.0"):
        s.load_state(tmp_path / "bad.npz")
    other = InfiniSession.open(onnx_artifacts["linear"][1])
    other.save_state(tmp_path / "other.npz")
    with pytest.raises(StateError, match="another model"):
        s.load_state(tmp_path / "other.npz")
    assert s.position == pos
    for k, v in before.items():
        np.testing.assert_array_equal(s.state[k], v)


def test_eager_session_decodes_like_the_artifact(onnx_artifacts):
    from infini_export.eager import eager_session
    model, art = onnx_artifacts["delta"]
    assert EagerBackend(model).has_decode
    ids = np.random.default_rng(4).integers(0, 256, 40)
    e, s = eager_session(model), InfiniSession.open(art)
    assert e.decoding
    np.testing.assert_array_equal(e.generate(ids, 20), s.generate(ids, 20))


def test_executorch_decode_method(et_artifacts, onnx_artifacts):
    """The shared XNNPACK program (tests/et_artifacts.py) decodes as the model does, and as the ONNX artifact."""
    from tests.et_artifacts import FP32, get
    model, art, _, _ = get(et_artifacts, ("delta", FP32))
    s = InfiniSession.open(art)
    assert s.decoding and s.manifest.decode.program.method == "decode"
    parity = s.manifest.parity
    assert parity.passed and parity.decode["calls"] > 0 and parity.decode["wiring"]["passed"]
    rep = validate_decode(s.backend, model, tolerance_for("executorch", "float32"), segments=3)
    assert rep["failures"] == [] and rep["top1"] == 1.0
    prompt = np.random.default_rng(5).integers(0, 256, 23)
    onnx = InfiniSession.open(onnx_artifacts["delta"][1])
    np.testing.assert_array_equal(s.generate(prompt, 40), onnx.generate(prompt, 40))


@pytest.mark.parametrize("name", ["linear", "delta", "delta_learned"])
def test_adapter_decode_equals_its_step(name):
    from test_adapter_lucidrains import SEG, make_theirs
    from infini_export.adapters.lucidrains import LucidrainsStep
    adapter = LucidrainsStep(make_theirs(name), SEG).eval()
    ids = torch.randint(0, adapter.vocab_size, (2, 3 * SEG + 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        state, ref = adapter.init_state(2), []
        for t in range(0, ids.shape[1], SEG):
            logits, state = adapter.step(ids[:, t:t + SEG], state)
            ref.append(logits)
    logits, dec_state = _decode_all(adapter, ids, [1, 3, 5])
    torch.testing.assert_close(logits, torch.cat(ref, 1), atol=1e-5, rtol=1e-5)
    assert float(dec_state[-1].min()) == 1.0  # has_memory after the first boundary


@pytest.mark.parametrize("name", ["linear", "delta_learned"])
def test_adapter_fused_decode_equals_its_masked_decode(name):
    """In the fused form the adapter's decode takes the whole caches and returns them with the chunk's rows written in
    (their interleaved rotary inside one op): the same logits, state and rows as the masked form."""
    from test_adapter_lucidrains import SEG, make_theirs
    from infini_export.adapters.lucidrains import LucidrainsStep
    from infini_export.state import flatten_state
    adapter = LucidrainsStep(make_theirs(name), SEG).eval()
    ids = torch.randint(0, adapter.vocab_size, (2, 2 * SEG + 5), generator=torch.Generator().manual_seed(2))
    ref_logits, ref_state = _decode_all(adapter, ids, [1, 3, 2])
    fused = "fused" in adapter.decode_forms()
    assert fused == (adapter.dim_head % 16 == 0)  # GroupQueryAttention's rotary: dim_head / 2 a multiple of 8
    form = "fused" if fused else "rows"
    assert adapter.decode_spec(form).cache_output == ("whole" if fused else "rows")
    if True:
        state, cache = adapter.init_decode_state(2)
        out, t, k = [], 0, 0
        with torch.no_grad():
            while t < ids.shape[1]:
                p = t % SEG
                n = min([1, 3, 2][k % 3], SEG - p, ids.shape[1] - t)
                logits, state, rows = adapter.decode(ids[:, t:t + n], torch.tensor([p]), state, cache, form=form)
                if fused:  # the whole caches: rows before p as given, p..p+n-1 the chunk's
                    for c, r in zip(flatten_state(cache), flatten_state(rows)):
                        assert torch.equal(r[:, :, :p], c[:, :, :p]) and r.shape == c.shape
                    cache = rows
                else:
                    where = torch.arange(p, p + n)
                    cache = tuple(LayerCache(c.key.index_copy(2, where, r.key), c.value.index_copy(2, where, r.value))
                                  for c, r in zip(cache, rows))
                out.append(logits)
                t, k = t + n, k + 1
    assert adapter.decode_spec().cache_output == "rows"  # the default form is the rows
    torch.testing.assert_close(torch.cat(out, 1), ref_logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(flatten_state(state), flatten_state(ref_state)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["delta", "linear"])
def test_adapter_decode_exports_with_parity(adapter_onnx, name):
    """dim_head 8 keeps the masked attention over all N slots (cache rows out); dim_head 16 exports one
    GroupQueryAttention per layer (their interleaved rotary, the cache written in place)."""
    import json

    import onnx
    from test_adapter_lucidrains import SEG
    adapter, art, report = adapter_onnx[name]
    manifest = json.loads((art / "manifest.json").read_text())
    assert report["decode"]["failures"] == [] and report["decode"]["boundaries"] == 3
    assert "has_memory" in [e["name"] for e in manifest["decode"]["state"]]
    fused = adapter.dim_head % 16 == 0
    gqa = [n for n in onnx.load(str(art / "decode.onnx")).graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == (adapter.depth if fused else 0)
    for node in gqa:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["rotary_interleaved"] == 1 and attrs["do_rotary"] == 1 and attrs["num_heads"] == adapter.heads
        assert node.input[1] == node.input[2] == ""  # q, k, v packed: their to_qkv output as it is
    roles = {o["role"] for o in manifest["decode"]["outputs"][1:] if o["role"] != "state-out"}
    assert roles == {"cache-out" if fused else "cache-rows"}
    assert manifest["exporter"]["fusions"]["step"]["RMSNormalization"] == 2 * adapter.depth + 1  # their RMSNorm
    s = InfiniSession.open(art)
    assert s.manifest.decode.cache_in_place == fused
    ids = np.random.default_rng(6).integers(0, adapter.vocab_size, 3 * SEG + 3)
    np.testing.assert_allclose(s.feed(ids), InfiniSession.open(art, use_decode=False).feed(ids), atol=1e-5)
    s.reset(2)  # a batch of two, several tokens per call after a past (run row by row in place)
    two = np.stack([ids, ids[::-1]])
    ref = InfiniSession.open(art, use_decode=False, batch_size=2).feed(two)
    got = np.concatenate([s.feed(two[:, :5]), s.feed(two[:, 5:9]), s.feed(two[:, 9:])], axis=1)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_shared_weights_table_is_checked(onnx_artifacts, tmp_path):
    import json
    import shutil

    from runtime import ArtifactError
    model, art = onnx_artifacts["linear"]
    s = InfiniSession.open(art)
    assert s.backend.shared_weights  # both graphs take their weights from one mapping of weights.bin
    graphs = s.manifest.shared_weights.graphs
    assert set(graphs) == {"program", "decode_program", "last_program"}
    shared = {e[0] for e in graphs["program"]} & {e[0] for e in graphs["decode_program"]}
    assert any("lm_head" in n or "embed" in n for n in shared)  # the same buffers serve both graphs
    bad = tmp_path / "art"
    shutil.copytree(art, bad)
    man = json.loads((bad / "manifest.json").read_text())
    entry = man["shared_weights"]["graphs"]["decode_program"][0]
    entry[1] = (bad / "weights.bin").stat().st_size  # an offset past the end of the file
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match="does not fit"):
        InfiniSession.open(bad)


def test_in_place_cache_program_writes_only_the_new_rows(onnx_artifacts):
    """The ONNX decode program returns whole caches that the backend binds to the caller's buffers: after a call of
    T tokens at position p the rows before p are untouched, rows p..p+T-1 are the eager ones, and a batch of
    several tokens (run row by row: GroupQueryAttention's limit) matches eager."""
    model, art = onnx_artifacts["delta"]
    s = InfiniSession.open(art)
    dec = s.manifest.decode
    assert dec.cache_in_place
    eager = EagerBackend(model)
    rng = np.random.default_rng(7)
    state = [rng.standard_normal(e.concrete_shape(2)).astype(np.float32) * 0.1 for e in dec.state]
    cache = [rng.standard_normal(e.concrete_shape(2)).astype(np.float32) for e in dec.cache]
    before = [c.copy() for c in cache]
    ids = rng.integers(0, 256, (2, 3))
    logits, new_state, rows = s.backend.run_decode(ids, 5, state, cache)
    ref_logits, ref_state, ref_rows = eager.run_decode(ids, 5, state, before)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    for a, b in zip(new_state, ref_state):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    for c, old, r, ref in zip(cache, before, rows, ref_rows):
        np.testing.assert_array_equal(c[:, :, :5], old[:, :, :5])
        np.testing.assert_array_equal(c[:, :, 8:], old[:, :, 8:])
        np.testing.assert_array_equal(c[:, :, 5:8], r)
        np.testing.assert_allclose(r, ref, atol=1e-5)


def test_in_place_binding_follows_the_cache_buffers(onnx_artifacts):
    """The backend keeps one binding of the in-place program per thread and makes it again when other cache arrays
    come: forks of one session generating in turn give what each gives alone, arrays returned by a call are not
    overwritten by later calls, and caches that share memory are refused by name."""
    _, art = onnx_artifacts["linear"]
    base = InfiniSession.open(art)
    base.feed(np.arange(11))
    a, b = base.fork(), base.fork()
    ref_a, ref_b = base.fork().generate(np.array([3]), 12), base.fork().generate(np.array([9]), 12)
    toks_a, toks_b = [a.generate(np.array([3]), 1)], [b.generate(np.array([9]), 1)]
    kept = [(a._state[0], a._state[0].copy())]
    for _ in range(11):  # the two sessions' calls interleave over the one backend
        toks_a.append(a.generate(np.zeros(0, np.int64), 1))
        toks_b.append(b.generate(np.zeros(0, np.int64), 1))
        kept.append((a._state[0], a._state[0].copy()))
    np.testing.assert_array_equal(np.concatenate(toks_a, 1), ref_a)
    np.testing.assert_array_equal(np.concatenate(toks_b, 1), ref_b)
    assert all(np.array_equal(x, y) for x, y in kept)
    dec = a.manifest.decode
    state = [np.zeros(e.concrete_shape(1), np.float32) for e in dec.state]
    shared = np.zeros(dec.cache[0].concrete_shape(1), np.float32)
    cache = [shared] + [np.zeros(e.concrete_shape(1), np.float32) for e in dec.cache[1:-1]] + [shared]
    with pytest.raises(InputError, match=r"'key.0' and .*'value.1' share memory"):
        a.backend.run_decode(np.zeros((1, 1), np.int64), 0, state, cache)


def test_failed_feed_across_a_boundary_restores_the_cache_rows_in_use(onnx_artifacts):
    model, art = onnx_artifacts["delta"]
    N = model.cfg.segment_len
    s = InfiniSession.open(art)
    s.feed(np.arange(5))
    rows = [c[:, :, :5].copy() for c in s._cache]
    run_decode, calls = s.backend.run_decode, []

    def fail_after_writing(ids, position, state, cache):  # the new segment's call writes its rows, then fails
        out = run_decode(ids, position, state, cache)
        calls.append(position)
        if position == 0:
            raise RuntimeError("disk on fire")
        return out

    s.backend.run_decode = fail_after_writing
    with pytest.raises(Exception, match="disk on fire"):
        s.feed(np.arange(N))  # N - 5 tokens finish the segment, 5 start the next at position 0
    assert calls == [5, 0] and s.position == 5
    for c, r in zip(s._cache, rows):
        np.testing.assert_array_equal(c[:, :, :5], r)
    s.backend.run_decode = run_decode
    ref = InfiniSession.open(art)
    ref.feed(np.arange(5))
    np.testing.assert_array_equal(s.feed(np.arange(7)), ref.feed(np.arange(7)))


def test_parity_runs_the_first_segment_step_once(onnx_artifacts, monkeypatch):
    """The main loop and the decode check both start with the first segment from the initial state: the eager
    reference runs it once, and still runs every other segment (a reference that is reused where the tokens or
    the state differ would pass a wrong artifact)."""
    from infini_export import parity

    model, art = onnx_artifacts["delta"]
    calls = []

    class Counting(EagerBackend):
        def run(self, ids, state):
            calls.append(ids[0, :4].tolist())
            return super().run(ids, state)

    monkeypatch.setattr(parity, "EagerBackend", Counting)
    s = InfiniSession.open(art)
    N = model.cfg.segment_len
    rep = parity.validate(s.backend, model, segments=2, decode_segments=2, decode_chunk=(1, 5), last_segments=0,
                          progress=False)
    assert rep.passed, rep.failures
    # segments 0 and 1 in the main loop; the decode check's segment 0 is the kept step; only the first is kept, so
    # its segment 1 runs again
    assert len(calls) == 3 and calls[0] != calls[1] and calls[2] == calls[1], calls
    assert rep.decode["calls"] == len(decode_calls(2 * N, N, (1, 5)))
