"""One backend protocol: onnxruntime, ExecuTorch and the eager model keep it, with their capabilities as declared
attributes; a session refuses an object that does not."""
import pytest

from infini_export.eager import EagerBackend
from runtime import InfiniSession
from runtime.backends.protocol import Backend, check_backend
from runtime.manifest import Manifest
from tests.conftest import make_model
from tests.et_artifacts import FP32, get


def _keeps_it(backend, full: bool, last: bool, decode: bool) -> None:
    assert isinstance(backend, Backend) and check_backend(backend) is backend
    assert (backend.has_full, backend.has_last, backend.has_decode) == (full, last, decode)


def test_onnxruntime_backend(onnx_artifacts):
    _, art = onnx_artifacts["delta"]
    _keeps_it(InfiniSession.open(art).backend, True, True, True)


def test_executorch_backends(et_artifacts):
    _keeps_it(InfiniSession.open(get(et_artifacts, ("delta", FP32))[1]).backend, True, True, True)
    batch1 = InfiniSession.open(get(et_artifacts, ("linear", FP32, 1))[1]).backend  # no full-logits method
    _keeps_it(batch1, False, True, True)


def test_eager_backend():
    _keeps_it(EagerBackend(make_model("delta")), True, True, True)


def test_a_session_refuses_what_does_not_keep_the_protocol(onnx_artifacts):
    _, art = onnx_artifacts["delta"]

    class Partial:
        name, has_full, has_last = "partial", True, "yes"

        def run(self, ids, state):
            return None

    with pytest.raises(TypeError, match=r"missing \['has_decode', 'run_last', 'run_decode'\].*\['has_last'\]"):
        InfiniSession(Manifest.load(art), Partial())
