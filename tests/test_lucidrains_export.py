"""A model built and trained with infini-transformer-pytorch, exported through the adapter, against THEIR code.

The oracle is their ``InfiniTransformer.forward(segment, past_memories=..., return_new_memories=True)`` driven
segment by segment as their ``InfiniTransformerWrapper`` drives it (``their_segments``, shared with the eager
adapter tests). The artifacts are made by the ordinary pipeline (``export_artifact``) and run by the runtime
(``InfiniSession``); nothing here calls the adapter to produce what is compared. Over configurations (linear and
delta memories), weights (their random init, and briefly trained with their wrapper) and backends (ONNX Runtime,
ExecuTorch): logits and every layer's memory at each of 24 segments (then a short trailing one, as their wrapper
cuts a sequence) within the tolerances the artifact is exported with.

Exports are slow (an ExecuTorch export is tens of seconds even at depth 1), so the cases are a pairwise cover of
the three axes (``CASES``: every pair of values of any two axes is exported once; four exports, not eight), each
artifact built once per module, lazily. The ExecuTorch artifact of the random-weight model uses the portable
kernels (``delegate="none"``), the trained one XNNPACK, the default: both ExecuTorch paths are held to their forward.
"""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("infini_transformer_pytorch")
from infini_transformer_pytorch import InfiniTransformer  # noqa: E402

from exporters.pipeline import export_artifact  # noqa: E402
from infini_export.adapters import LucidrainsStep  # noqa: E402
from infini_export.parity import tolerance_for  # noqa: E402
from runtime import InfiniSession  # noqa: E402
from tests.cli import run_cli  # noqa: E402
from tests.test_adapter_lucidrains import SEG, their_segments, train_briefly  # noqa: E402

N_FULL = 24  # complete segments compared (>= 20), then a trailing partial one of TAIL tokens
TAIL = 3
BATCH = 2
PRECISION = "float32"

CONFIGS = {
    "linear": dict(num_tokens=64, dim=32, dim_head=16, heads=2, ff_mult=2),
    # delta rule with the learned per-token update weights: every branch of their create_new_memories
    "delta": dict(num_tokens=64, dim=24, dim_head=8, heads=2, ff_mult=2,
                  use_mem_delta_rule=True, learned_delta_update=True),
}
WEIGHTS = ("random", "trained")

FORMATS = ["onnx", "executorch"]
# (config, weights, format): a pairwise cover of CONFIGS x WEIGHTS x FORMATS
CASES = [("linear", "random", "onnx"), ("delta", "random", "executorch"),
         ("linear", "trained", "executorch"), ("delta", "trained", "onnx")]
# the trained cases: one per configuration and one per format
TRAINED = [(name, fmt) for name, weights, fmt in CASES if weights == "trained"]
# layers of their model: two where the artifact is ONNX (every layer's memory mapped and compared), one where it is
# ExecuTorch (the same adapter, lowered: one layer holds that path to their forward at ~60% of the lowering time)
DEPTH = {"onnx": 2, "executorch": 1}
BACKEND = {"onnx": "onnxruntime", "executorch": "executorch"}

MEASURED: dict = {}  # (config, weights, backend) -> worst errors, printed at the end (pytest -s)


def delegate_for(weights: str) -> str:
    """ExecuTorch delegate: XNNPACK (the default) for the trained models, portable kernels for the random ones."""
    return "xnnpack" if weights == "trained" else "none"




# ---- their models --------------------------------------------------------------------------------
def their_kwargs(name: str, weights: str) -> dict:
    """Their constructor's arguments for a case: the configuration at the depth of the case's format."""
    fmt = next(f for n, w, f in CASES if (n, w) == (name, weights))
    return dict(CONFIGS[name], depth=DEPTH[fmt])


def make_theirs(name: str, weights: str) -> InfiniTransformer:
    torch.manual_seed(0)
    model = InfiniTransformer(**their_kwargs(name, weights))
    if weights == "trained":
        # a trained model's gates are spread over both signs, not at their init of 10 (sigmoid = 0.99995, the
        # memory nearly unread): start them there, then train through their wrapper so everything moves
        with torch.no_grad():
            for i, (attn, _) in enumerate(model.layers):
                gates = attn.fastweight_mem.head_gates
                gates.copy_(torch.linspace(-2.0, 2.0, gates.numel()) + i)
        before = torch.cat([a.fastweight_mem.head_gates.detach().clone() for a, _ in model.layers])
        train_briefly(model)  # 5 Adam steps of their InfiniTransformerWrapper (TBPTT every 2 segments)
        after = torch.cat([a.fastweight_mem.head_gates.detach() for a, _ in model.layers])
        assert (after - before).abs().max() > 0.1, "training did not move the gates"
    return model.eval()


def token_ids(vocab: int, seed: int = 11) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (BATCH, N_FULL * SEG + TAIL), generator=g)


@pytest.fixture(scope="module")
def theirs():
    """{(config, weights): (their model, token ids, their per-segment outputs)}, built on first use."""
    cache = {}

    def get(name, weights):
        if (name, weights) not in cache:
            model = make_theirs(name, weights)
            ids = token_ids(CONFIGS[name]["num_tokens"])
            cache[name, weights] = (model, ids, their_segments(model, ids))
        return cache[name, weights]
    return get


# the case whose artifact is made by the command line, as a user makes it (``test_cli_export_and_validate...``)
CLI_CASE = ("delta", "trained", "onnx")


@pytest.fixture(scope="module")
def cli_export(theirs, tmp_path_factory):
    """(artifact dir, the command line's stdout, its source arguments): their trained model's state_dict + kwargs
    JSON -> ``infini-export export --from lucidrains --format onnx``."""
    name, weights, fmt = CLI_CASE
    model, _, _ = theirs(name, weights)
    tmp = tmp_path_factory.mktemp("lucidrains_cli")
    state_dict, kwargs = tmp / "model.pt", tmp / "model_kwargs.json"
    torch.save(model.state_dict(), state_dict)
    kwargs.write_text(json.dumps(their_kwargs(name, weights)))
    src = ["--from", "lucidrains", "--weights", state_dict, "--kwargs", kwargs, "--segment-len", SEG]
    r = run_cli("export", *src, "--format", fmt, "--parity-segments", 20, "-o", tmp / "onnx")
    assert r.returncode == 0, r.stdout + r.stderr
    return tmp / "onnx", r.stdout, src


@pytest.fixture(scope="module")
def artifacts(theirs, cli_export, tmp_path_factory):
    """{(config, weights, format): (artifact dir, manifest)}: one export each, on first use (``CLI_CASE``'s by the
    command line)."""
    cache = {}

    def get(name, weights, fmt):
        key = (name, weights, fmt)
        if key == CLI_CASE:
            out = cli_export[0]
            return out, json.loads((out / "manifest.json").read_text())
        if key not in cache:
            model, _, _ = theirs(name, weights)
            adapter = LucidrainsStep(model, SEG).eval()
            out = tmp_path_factory.mktemp(f"lucidrains_{name}_{weights}_{fmt}")
            # one process for the lowering: the suite runs tests in parallel already; the batch the tests run
            extra = {"delegate": delegate_for(weights), "jobs": 1, "max_batch": BATCH} if fmt == "executorch" else {}
            manifest, report = export_artifact(adapter, out, fmt, parity_segments=20, progress=False, log=None,
                                               **extra)
            manifest = manifest.to_dict()
            assert report.passed, report.failures  # the pipeline's own check (artifact vs adapter eager)
            cache[key] = (out, manifest)
        return cache[key]
    return get


# ---- comparison ----------------------------------------------------------------------------------
def _check(got: np.ndarray, ref: torch.Tensor, atol: float, rtol: float, what: str) -> float:
    """max|got - ref|, asserted within the parity validator's rule: atol + rtol * max|ref|."""
    ref = ref.detach().numpy()
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, theirs {ref.shape}"
    assert np.isfinite(got).all(), f"{what}: NaN/inf"
    err = float(np.abs(got.astype(np.float64) - ref).max())
    bound = atol + rtol * float(np.abs(ref).max())
    assert err <= bound, f"{what}: max abs error {err:.3e} exceeds {atol:g} + {rtol:g} * max|ref| = {bound:.3e}"
    return err


def _check_memories(state: dict, their_mems, tol, where: str) -> tuple[float, float]:
    err_mem = err_norm = 0.0
    for i, (kv, norm) in enumerate(their_mems):
        err_mem = max(err_mem, _check(state[f"memory.{i}"], kv, tol.state_atol, tol.state_rtol,
                                      f"{where} memory.{i}"))
        err_norm = max(err_norm, _check(state[f"norm.{i}"], norm, tol.state_atol, tol.state_rtol,
                                        f"{where} norm.{i}"))
    return err_mem, err_norm


def test_the_cases_cover_every_pair_of_axes():
    axes = (list(CONFIGS), WEIGHTS, FORMATS)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert {(c[i], c[j]) for c in CASES} == {(a, b) for a in axes[i] for b in axes[j]}, (i, j)


@pytest.mark.parametrize("name,weights,fmt", CASES)
def test_artifact_matches_their_forward(theirs, artifacts, name, weights, fmt):
    """The artifact, through the runtime, vs their forward: logits and memories at every segment."""
    model, ids, ref = theirs(name, weights)
    art, manifest = artifacts(name, weights, fmt)
    assert manifest["model"]["model"] == "infini_transformer_pytorch.InfiniTransformer"
    assert manifest["parity"]["passed"] and manifest["quantization"] is None
    tol = tolerance_for(BACKEND[fmt], PRECISION)
    session = InfiniSession.open(art, batch_size=BATCH)
    assert session.backend.name == BACKEND[fmt]
    assert not session.state["has_memory"].any()  # starts with no memory, as their past_memories=None

    assert len(ref) == N_FULL + 1
    segments = ids.split(SEG, dim=-1)
    errs = {"logits": 0.0, "memory": 0.0, "norm": 0.0}
    for s, (seg, (their_logits, their_mems)) in enumerate(zip(segments, ref, strict=True)):
        logits = session.feed(seg.numpy())
        e = _check(logits, their_logits, tol.logits_atol, tol.logits_rtol, f"segment {s} logits")
        errs["logits"] = max(errs["logits"], e)
        if s == 0:
            errs["first_logits"] = e
        if seg.shape[1] == SEG:
            state = session.state
            assert np.array_equal(state["has_memory"], np.ones((BATCH, 1), np.float32))
            e_mem, e_norm = _check_memories(state, their_mems, tol, f"segment {s}")
            errs["memory"], errs["norm"] = max(errs["memory"], e_mem), max(errs["norm"], e_norm)
        else:
            # the trailing partial segment: logits now; the runtime defers its memory write until the segment
            # is complete (by design), so the memory compared is that of the last complete segment
            assert s == N_FULL and seg.shape[1] == TAIL and session.pending_tokens.shape == (BATCH, TAIL)
    # a test that memory matters here: by the end, the memories are large (z sums ~1.2 per token)
    assert float(ref[N_FULL - 1][1][0][1].abs().max()) > 100
    if fmt == "executorch":
        assert manifest["program"]["delegate"] == delegate_for(weights)
    MEASURED[name, weights, BACKEND[fmt] + (f"/{delegate_for(weights)}" if fmt == "executorch" else "")] = errs


@pytest.mark.parametrize("name,fmt", TRAINED)
def test_first_segment_is_no_memory_through_the_artifact(theirs, artifacts, name, fmt):
    """From its initial state the artifact equals their forward with ``past_memories=None`` on segment 0, and
    that is checked to be distinguishable from a zero memory (read + gate applied) at the exported tolerance;
    a batch whose rows are at different stages (one continuing, one fresh over stale memory) runs in one call."""
    model, ids, _ = theirs(name, "trained")
    art, _ = artifacts(name, "trained", fmt)
    tol = tolerance_for(BACKEND[fmt], PRECISION)
    first, second = ids[:, :SEG], ids[:, SEG:2 * SEG]
    H, d = model.layers[0][0].fastweight_mem.head_gates.numel(), CONFIGS[name]["dim_head"]
    with torch.no_grad():
        none = model(first, past_memories=None, return_new_memories=True)
        zeros = [(torch.zeros(BATCH, H, d, d), torch.zeros(BATCH, H, d)) for _ in model.layers]
        zero = model(first, past_memories=zeros, return_new_memories=True)
        cont = model(second, past_memories=none.past_memories, return_new_memories=True)
        fresh = model(second, past_memories=None, return_new_memories=True)

    session = InfiniSession.open(art, batch_size=BATCH)
    logits = session.feed(first.numpy())
    _check(logits, none.logits, tol.logits_atol, tol.logits_rtol, "first segment logits")
    _check_memories(session.state, [(m.kv_mem, m.k_norm) for m in none.past_memories], tol, "first segment")
    # zero memory in place of none would have failed the check above by a wide margin
    bound = tol.logits_atol + tol.logits_rtol * float(none.logits.abs().max())
    wrong = float((zero.logits - none.logits).abs().max())
    assert wrong > 10 * bound, f"zero vs no memory differ by only {wrong:.3g} (bound {bound:.3g})"
    assert float(np.abs(logits - zero.logits.numpy()).max()) > 10 * bound

    # row 0 continues; row 1 restarts (has_memory 0) with row 0's memory left in its slots: it must be ignored
    state = session.state
    state["has_memory"] = np.array([[1.0], [0.0]], dtype=np.float32)
    for k in state:
        if k != "has_memory":
            state[k][1] = state[k][0]
    session.set_state(state)
    logits = session.feed(second.numpy())
    _check(logits[0], cont.logits[0], tol.logits_atol, tol.logits_rtol, "continuing row")
    _check(logits[1], fresh.logits[1], tol.logits_atol, tol.logits_rtol, "restarted row")
    after = session.state
    for i, (c, f) in enumerate(zip(cont.past_memories, fresh.past_memories)):
        _check(after[f"memory.{i}"][0], c.kv_mem[0], tol.state_atol, tol.state_rtol, f"continuing memory.{i}")
        _check(after[f"memory.{i}"][1], f.kv_mem[1], tol.state_atol, tol.state_rtol, f"restarted memory.{i}")
    assert np.array_equal(after["has_memory"], np.ones((BATCH, 1), np.float32))


# ---- the command line ----------------------------------------------------------------------------

def test_cli_export_and_validate_a_trained_model(theirs, cli_export, tmp_path):
    """What a user runs: their state_dict + kwargs JSON -> ``export --from lucidrains`` -> ``validate``."""
    name, weights, _ = CLI_CASE
    _, ids, ref = theirs(name, weights)
    out, stdout, src = cli_export
    kwargs = src[src.index("--kwargs") + 1]
    assert "parity passed" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parity"]["passed"] and manifest["parity"]["segments"] == 20
    assert manifest["model"]["use_mem_delta_rule"] and manifest["model"]["learned_delta_update"]

    report = tmp_path / "report.json"
    r = run_cli("validate", out, *src, "--segments", 20, "--report", report)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout
    data = json.loads(report.read_text())
    assert data["passed"] and data["segments"] == 20 and len(data["per_segment"]) == 20
    assert data["wiring"]["passed"]

    # and the CLI's artifact is their model: first and last complete segments against their forward
    tol = tolerance_for("onnxruntime", PRECISION)
    session = InfiniSession.open(out, batch_size=BATCH)
    logits = session.feed(ids[:, :N_FULL * SEG].numpy())
    _check(logits[:, :SEG], ref[0][0], tol.logits_atol, tol.logits_rtol, "CLI artifact, segment 0")
    _check(logits[:, -SEG:], ref[N_FULL - 1][0], tol.logits_atol, tol.logits_rtol, "CLI artifact, last segment")
    _check_memories(session.state, ref[N_FULL - 1][1], tol, "CLI artifact, last segment")

    # a mismatched kwargs file is refused with exit 2 and a message, not a traceback
    bad = tmp_path / "bad_kwargs.json"
    bad.write_text(json.dumps(dict(their_kwargs(name, weights), dim=32)))
    r = run_cli("validate", out, *[bad if a == kwargs else a for a in src], "--segments", 2)
    assert r.returncode == 2 and "misshaped" in r.stderr and "Traceback" not in r.stderr
