"""The lucidrains adapter against its oracle: their ``InfiniTransformer.forward``, driven segment by
segment as their ``InfiniTransformerWrapper`` does (``past_memories=None`` first, then the memories
it returned, ``return_new_memories=True``)."""
import copy
import functools
import json

import pytest
import torch

pytest.importorskip("infini_transformer_pytorch")
from infini_transformer_pytorch import InfiniTransformer, InfiniTransformerWrapper  # noqa: E402

from infini_export.adapters import LucidrainsStep, load_lucidrains  # noqa: E402
from infini_export.protocol import FlatStep, check_protocol  # noqa: E402
from infini_export.state import flatten_state  # noqa: E402

SEG = 8
N_SEGMENTS = 21  # 20 full segments and a short last one, as the wrapper cuts a sequence
TOL = 1e-5

CONFIGS = {
    "linear": dict(num_tokens=64, dim=32, depth=2, dim_head=16, heads=2, ff_mult=4),
    "delta": dict(num_tokens=64, dim=24, depth=3, dim_head=8, heads=3, ff_mult=2, use_mem_delta_rule=True),
    # not required, cheap: the learned delta weights (DeltaNet beta), small even head size
    "delta_learned": dict(num_tokens=50, dim=20, depth=2, dim_head=6, heads=2, ff_mult=3,
                              use_mem_delta_rule=True, learned_delta_update=True),
}




def make_theirs(name, seed=0):
    torch.manual_seed(seed)
    return InfiniTransformer(**CONFIGS[name]).eval()


def token_ids(model, batch=2, seed=1, length=(N_SEGMENTS - 1) * SEG + 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.token_emb.num_embeddings, (batch, length), generator=g)


def train_briefly(model, steps=5, lr=5e-2, seed=2):
    """A few optimisation steps through their wrapper (BPTT over segments), so the gates move off 10."""
    wrapper = InfiniTransformerWrapper(model, segment_length=SEG, detach_mems_every_num_segments=2)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        seq = torch.randint(0, model.token_emb.num_embeddings, (2, 3 * SEG + 1), generator=g)
        wrapper(seq, backward=True)
        opt.step()
        opt.zero_grad()
    return model.eval()


@functools.lru_cache(maxsize=None)
def _trained(name):
    return train_briefly(make_theirs(name))


def make_trained(name):
    """Their model after ``train_briefly`` (trained once per configuration, copied for each test)."""
    return copy.deepcopy(_trained(name))


def their_segments(model, ids):
    """Their forward, segment by segment: [(logits, [(kv_mem, k_norm) per layer])]."""
    out, past = [], None
    with torch.no_grad():
        for seg in ids.split(SEG, dim=-1):
            logits, _, past = model(seg, past_memories=past, return_new_memories=True)
            out.append((logits, [(m.kv_mem.clone(), m.k_norm.clone()) for m in past]))
    return out


def adapter_segments(adapter, ids):
    out, state = [], adapter.init_state(ids.shape[0])
    with torch.no_grad():
        for seg in ids.split(SEG, dim=-1):
            logits, state = adapter.step(seg, state)
            out.append((logits, [(m.memory, m.norm) for m in state[:-1]], state[-1]))
    return out


def _scaled_err(ref: torch.Tensor, got: torch.Tensor) -> float:
    """max |ref - got| over max(1, max |ref|): the memory grows over 20 segments to values in the hundreds, where one
    float32 rounding step (another summation order in a matmul) is ~3e-5 in absolute terms."""
    return (ref - got).abs().max().item() / max(1.0, ref.abs().max().item())


def max_errors(theirs, ours):
    err_logits = err_mem = 0.0
    for (lt, mt), (lo, mo, has_memory) in zip(theirs, ours, strict=True):
        assert torch.equal(has_memory, torch.ones_like(has_memory))
        err_logits = max(err_logits, (lt - lo).abs().max().item())
        for (kv_t, n_t), (kv_o, n_o) in zip(mt, mo, strict=True):
            err_mem = max(err_mem, _scaled_err(kv_t, kv_o), _scaled_err(n_t, n_o))
    return err_logits, err_mem


@pytest.mark.parametrize("trained", [False, True], ids=["random", "trained"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_adapter_matches_their_forward_over_segments(name, trained):
    model = make_trained(name) if trained else make_theirs(name)
    if trained:
        before = [a.fastweight_mem.head_gates.detach().clone() for a, _ in make_theirs(name).layers]
        moved = max((a.fastweight_mem.head_gates.detach() - b).abs().max().item()
                    for (a, _), b in zip(model.layers, before))
        assert moved > 0.1, f"training did not move the gates ({moved})"
    ids = token_ids(model)
    theirs = their_segments(model, ids)
    assert len(theirs) == N_SEGMENTS and theirs[-1][0].shape[1] == 3
    ours = adapter_segments(LucidrainsStep(model, SEG).eval(), ids)
    err_logits, err_mem = max_errors(theirs, ours)
    print(f"{name} {'trained' if trained else 'random'}: max|dlogits|={err_logits:.3g} "
          f"max|dmemory| / max(1, max|memory|)={err_mem:.3g}")
    assert err_logits <= TOL and err_mem <= TOL
    # the memories are large by then (z sums ~1.2 per token): a tolerance is not what makes this pass
    assert theirs[-1][1][0][1].abs().max() > 100


def zero_memory_step(adapter, ids):
    """The wrong reading of their first segment: zero memory flagged as present (read + gate applied)."""
    state = adapter.init_state(ids.shape[0])
    state = (*state[:-1], torch.ones_like(state[-1]))
    return adapter.step(ids, state)


@pytest.mark.parametrize("name", ["linear", "delta"])
def test_first_segment_is_no_memory_not_zero_memory(name):
    model = make_trained(name)
    with torch.no_grad():
        for i, (attn, _) in enumerate(model.layers):  # non-saturated gates, as a trained model has
            attn.fastweight_mem.head_gates.copy_(torch.linspace(-1.0, 1.0, attn.fastweight_mem.head_gates.numel()) + i)
    adapter = LucidrainsStep(model, SEG).eval()
    ids = token_ids(model, length=SEG)
    with torch.no_grad():
        theirs = model(ids, past_memories=None, return_new_memories=True)
        ours, state = adapter.step(ids, adapter.init_state(2))
        wrong, wrong_state = zero_memory_step(adapter, ids)
        zeros = [(m.memory, m.norm) for m in adapter.init_state(2)[:-1]]
        theirs_zero = model(ids, past_memories=zeros, return_new_memories=True)
    assert (ours - theirs.logits).abs().max() <= TOL
    assert (wrong - theirs.logits).abs().max() > 1e-2, "zero memory would have passed as no memory"
    # the flagged variant is exactly their code given an explicit zero memory: the flag is the only difference
    assert (wrong - theirs_zero.logits).abs().max() <= TOL
    # layer 0 writes the same either way (a zero memory reads as exactly zero, the delta rule
    # subtracts nothing): only the read/gate differ, and through them the deeper layers
    assert torch.equal(state[0].memory, wrong_state[0].memory) and torch.equal(state[0].norm, wrong_state[0].norm)
    assert not torch.equal(state[1].memory, wrong_state[1].memory)

    # with their default gates (init 10, sigmoid = 0.99995) the same mistake is still visible, if small
    fresh = make_theirs(name)
    adapter = LucidrainsStep(fresh, SEG).eval()
    with torch.no_grad():
        ref = fresh(ids, return_new_memories=True).logits
        assert (adapter.step(ids, adapter.init_state(2))[0] - ref).abs().max() <= TOL
        assert (zero_memory_step(adapter, ids)[0] - ref).abs().max() > 1e-5


def test_has_memory_is_per_row_and_ignores_stale_memory():
    model = make_trained("delta")
    adapter = LucidrainsStep(model, SEG).eval()
    ids = token_ids(model, length=2 * SEG)
    first, second = ids[:, :SEG], ids[:, SEG:]
    with torch.no_grad():
        _, _, past = model(first, return_new_memories=True)
        cont, _, cont_mem = model(second, past_memories=past, return_new_memories=True)
        fresh, _, fresh_mem = model(second, past_memories=None, return_new_memories=True)
        # row 0 continues from its memory, row 1 starts afresh with stale memory left in its state
        state = tuple(type(s)(m.kv_mem, m.k_norm) for s, m in zip(adapter.init_state(2)[:-1], past))
        state = (*state, torch.tensor([[1.0], [0.0]]))
        logits, new_state = adapter.step(second, state)
    assert (logits[0] - cont[0]).abs().max() <= TOL
    assert (logits[1] - fresh[1]).abs().max() <= TOL
    for ours, c, f in zip(new_state[:-1], cont_mem, fresh_mem):
        assert (ours.memory[0] - c.kv_mem[0]).abs().max() <= TOL and (ours.memory[1] - f.kv_mem[1]).abs().max() <= TOL
        assert (ours.norm[0] - c.k_norm[0]).abs().max() <= TOL and (ours.norm[1] - f.k_norm[1]).abs().max() <= TOL
    assert torch.equal(new_state[-1], torch.ones(2, 1))


def test_state_spec_names_and_shapes():
    adapter = LucidrainsStep(make_theirs("delta"), SEG)
    spec = adapter.step_spec()
    assert spec.vocab_size == 64 and spec.segment_len == SEG
    names = [s.name for s in spec.state]
    assert names == ["memory.0", "norm.0", "memory.1", "norm.1", "memory.2", "norm.2", "has_memory"]
    assert spec.state[0].shape == ("batch", 3, 8, 8) and spec.state[1].shape == ("batch", 3, 8)
    assert spec.state[-1].shape == ("batch", 1) and all(s.dtype == "float32" for s in spec.state)
    assert spec.input_names()[-1] == "past_has_memory" and spec.output_names()[-1] == "present_has_memory"
    json.dumps(spec.extra)  # manifest-ready
    flat = flatten_state(adapter.init_state(3))
    assert len(flat) == len(spec.state) and all(torch.count_nonzero(t) == 0 for t in flat)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_check_protocol(name):
    adapter = LucidrainsStep(make_trained(name), SEG).eval()
    assert check_protocol(adapter) == adapter.step_spec()
    assert check_protocol(adapter, batch_size=1) == adapter.step_spec()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_torch_export_matches_eager_and_their_forward(name):
    model = make_trained(name)
    adapter = LucidrainsStep(model, SEG).eval()
    flat = FlatStep(adapter)
    ep = torch.export.export(flat, flat.example_inputs(2), dynamic_shapes=flat.dynamic_shapes())
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not [t for t in targets if any(w in t for w in ("split", "chunk", "unbind", "autocast", "wrap"))], targets
    assert not ep.graph_signature.buffers_to_mutate
    exported = ep.module()
    ids = token_ids(model, batch=3, length=2 * SEG)
    with torch.no_grad():
        # first segment (has_memory = 0) then a second one (has_memory = 1), other batch size than traced
        state = flatten_state(adapter.init_state(3))
        for seg in ids.split(SEG, dim=-1):
            eager = flat(seg, *state)
            got = exported(seg, *state)
            for a, b in zip(eager, got, strict=True):
                assert (a - b).abs().max() <= TOL
            state = list(eager[1:])
        # and the exported program chains to their forward
        theirs = their_segments(model, ids)
    assert (got[0] - theirs[-1][0]).abs().max() <= TOL


def test_odd_dim_head_is_refused_as_their_code_cannot_run_it():
    torch.manual_seed(0)
    model = InfiniTransformer(num_tokens=16, dim=16, depth=1, dim_head=9, heads=2).eval()
    with pytest.raises(RuntimeError):  # their rotary cache: (T, 8) frequencies into a (8192, 9) buffer
        model(torch.zeros(1, 4, dtype=torch.long), return_new_memories=True)
    with pytest.raises(ValueError, match="even dim_head"):
        LucidrainsStep(model, SEG)


def test_load_lucidrains(tmp_path):
    model = make_theirs("delta_learned", seed=3)
    weights, kwargs = tmp_path / "weights.pt", tmp_path / "kwargs.json"
    torch.save(model.state_dict(), weights)
    kwargs.write_text(json.dumps(CONFIGS["delta_learned"]))
    adapter = load_lucidrains(weights, kwargs, SEG)
    assert isinstance(adapter, LucidrainsStep) and not adapter.training and adapter.segment_len == SEG
    ids = token_ids(model)
    assert max(max_errors(their_segments(model, ids), adapter_segments(adapter, ids))) <= TOL

    sd = model.state_dict()
    bad = dict(sd)
    bad.pop("to_logits.bias")
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, weights)
    with pytest.raises(ValueError, match=r"missing=\['to_logits.bias'\].*unexpected=\['extra.weight'\]"):
        load_lucidrains(weights, kwargs, SEG)
    torch.save({f"model.{k}": v for k, v in sd.items()}, weights)
    with pytest.raises(ValueError, match="InfiniTransformerWrapper.model.state_dict"):
        load_lucidrains(weights, kwargs, SEG)
    torch.save(sd, weights)
    kwargs.write_text(json.dumps(dict(CONFIGS["delta_learned"], dim=24)))
    with pytest.raises(ValueError, match="misshaped"):
        load_lucidrains(weights, kwargs, SEG)
    kwargs.write_text(json.dumps(dict(CONFIGS["delta_learned"], rotary_emb_linear_attn=True)))
    with pytest.raises(ValueError, match=r"unknown=\['rotary_emb_linear_attn'\]"):
        load_lucidrains(weights, kwargs, SEG)
