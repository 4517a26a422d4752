"""The step protocol is general: a module that is neither our InfiniTransformer nor the lucidrains adapter is
exported, run and validated; modules that break the protocol are refused before anything is exported, with a
``ProtocolError`` that names the problem."""

import numpy as np
import pytest
import torch
from torch import nn

from exporters.pipeline import export_artifact
from infini_export.parity import tolerance_for, validate
from infini_export.protocol import ProtocolError, check_protocol
from infini_export.state import StepSpec, flatten_state
from runtime import InfiniSession
from tests.tiny_rnn import DIM, SEG, VOCAB, TinyRNN

FORMATS = ["onnx", "executorch"]


# ---- a general module, end to end ----------------------------------------------------------------
@pytest.fixture(scope="module")
def rnn_artifact(tmp_path_factory):
    model = TinyRNN().eval()
    out = tmp_path_factory.mktemp("tiny_rnn_onnx")
    manifest, report = export_artifact(model, out, "onnx", parity_segments=30, progress=False, log=None)
    manifest = manifest.to_dict()
    return model, out, manifest, report


def test_a_custom_step_module_is_exported_run_and_validated(rnn_artifact):
    model, out, manifest, report = rnn_artifact
    assert check_protocol(model) == model.step_spec()
    assert report.passed and report.wiring["passed"] and manifest["parity"]["passed"]
    assert [e["name"] for e in manifest["state"]] == ["h", "ema"]
    assert [e["name"] for e in manifest["inputs"]] == ["input_ids", "past_h", "past_ema"]
    assert manifest["model"] == {"model": "TinyRNN (tests/tiny_rnn.py)"}
    assert manifest["initial_state"] == {"file": "initial_state"}  # h0 is not zeros: shipped with the artifact

    # the torch-free session, any length, vs chaining the eager step by hand
    n_seg, tail = 30, 2
    ids = torch.randint(0, VOCAB, (2, n_seg * SEG + tail), generator=torch.Generator().manual_seed(3))
    session = InfiniSession.open(out, batch_size=2)
    np.testing.assert_array_equal(session.state["h"], model.init_state(2)[0].numpy())
    logits = session.feed(ids.numpy())
    ref, state = [], model.init_state(2)
    with torch.no_grad():
        for seg in ids[:, :n_seg * SEG].split(SEG, dim=1):
            lg, state = model.step(seg, state)
            ref.append(lg)
        ref.append(model.step(ids[:, n_seg * SEG:], state)[0])  # the partial segment: logits only
    tol = tolerance_for("onnxruntime", "float32")
    np.testing.assert_allclose(logits, torch.cat(ref, dim=1).numpy(), atol=tol.logits_atol, rtol=tol.logits_rtol)
    for name, ref_t in zip(["h", "ema"], flatten_state(state)):
        np.testing.assert_allclose(session.state[name], ref_t.numpy(), atol=tol.state_atol, rtol=tol.state_rtol)

    # and the validator on its own, as `infini-export validate` runs it
    again = validate(session.backend, model, segments=40, batch=3, seed=5, manifest=session.manifest,
                     progress=False)
    assert again.passed, again.failures
    assert len(again.per_segment) == 40 and again.summary["logits_max_abs"] < 1e-5


# ---- modules that break the protocol -------------------------------------------------------------
class MutatesBuffer(TinyRNN):
    """Counts its calls in a (persistent) buffer: a side effect an exported graph cannot have."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def step(self, input_ids, state):
        self.calls += 1
        return super().step(input_ids, state)


class MutatesNonPersistentBuffer(TinyRNN):
    """The same side effect in a buffer registered with ``persistent=False`` (absent from ``state_dict()``)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()), persistent=False)

    def step(self, input_ids, state):
        self.calls += 1
        return super().step(input_ids, state)


class MutatesInputState(TinyRNN):
    def step(self, input_ids, state):
        state[0].mul_(0.5)  # in place on the caller's tensor
        return super().step(input_ids, state)


class ReturnsFewerStateTensors(TinyRNN):
    def step(self, input_ids, state):
        logits, (h, _) = super().step(input_ids, state)
        return logits, (h,)


class InitStateHasExtraTensor(TinyRNN):
    def init_state(self, batch_size):
        return (*super().init_state(batch_size), torch.zeros(batch_size, 1))


class InitStateDtypeDiffers(TinyRNN):
    """Spec says float32, ``init_state`` gives float64."""

    def init_state(self, batch_size):
        h, (ema,) = super().init_state(batch_size)
        return (h, (ema.double(),))


class StepStateDtypeDiffers(TinyRNN):
    """Spec says float32, ``step`` returns the new state in float16 (a 'compressed' state)."""

    def step(self, input_ids, state):
        logits, (h, (ema,)) = super().step(input_ids, state)
        return logits, (h.half(), (ema,))


class StateShapeDiffers(TinyRNN):
    def init_state(self, batch_size):
        h, (ema,) = super().init_state(batch_size)
        return (h, (torch.zeros(batch_size, DIM + 1),))


class NoStepSpec(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = TinyRNN()

    def init_state(self, batch_size):
        return self.rnn.init_state(batch_size)

    def step(self, input_ids, state):
        return self.rnn.step(input_ids, state)


class StepSpecNotASpec(TinyRNN):
    def step_spec(self):
        return {"vocab_size": VOCAB, "segment_len": SEG}


BROKEN = {
    "mutates_buffer": (MutatesBuffer, r"step\(\) mutated parameter or buffer 'calls'; a step must be pure"),
    "mutates_input_state": (MutatesInputState, r"step\(\) mutated its input state tensor 'h'"),
    "fewer_state_tensors": (ReturnsFewerStateTensors,
                            r"step\(\) gave 1 state tensors, but step_spec\(\) declares 2: \['h', 'ema'\]"),
    "extra_init_tensor": (InitStateHasExtraTensor,
                          r"init_state\(\) gave 3 state tensors, but step_spec\(\) declares 2"),
    "init_dtype": (InitStateDtypeDiffers,
                   r"init_state\(\) state tensor 'ema' is \(2, 16\) torch\.float64, spec says \(2, 16\) float32"),
    "step_dtype": (StepStateDtypeDiffers,
                   r"step\(\) state tensor 'h' is \(2, 16\) torch\.float16, spec says \(2, 16\) float32"),
    "shape": (StateShapeDiffers, r"init_state\(\) state tensor 'ema' is \(2, 17\) torch\.float32, spec says \(2, 16\)"),
    "no_step_spec": (NoStepSpec, r"NoStepSpec has no step_spec\(\)"),
    "spec_not_a_spec": (StepSpecNotASpec, r"step_spec\(\) returned dict, expected StepSpec"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_check_protocol_names_the_problem(case):
    cls, message = BROKEN[case]
    with pytest.raises(ProtocolError, match=message):
        check_protocol(cls().eval())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", list(BROKEN))
def test_exporter_refuses_a_module_that_breaks_the_protocol(case, fmt, tmp_path):
    """Refused before tracing: no program file, no manifest, the same named problem."""
    cls, message = BROKEN[case]
    out = tmp_path / "artifact"
    with pytest.raises(ProtocolError, match=message):
        export_artifact(cls(), out, fmt, parity_segments=2, progress=False, log=None)
    assert not out.exists() or not any(out.iterdir())


def test_check_protocol_sees_a_mutated_non_persistent_buffer():
    with pytest.raises(ProtocolError, match=r"mutated parameter or buffer 'calls'"):
        check_protocol(MutatesNonPersistentBuffer().eval())

