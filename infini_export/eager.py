"""The eager torch model behind the runtime's session API: the reference every backend is held to."""
from __future__ import annotations

import numpy as np
import torch

from runtime.backends.programs import SegmentPrograms
from runtime.manifest import Manifest
from runtime.session import InfiniSession

from .fingerprint import model_fingerprint, weights_dtype
from .manifest import TORCH_PROGRAM, manifest_document
from .protocol import FlatDecode, FlatStep, FlatStepLast, check_protocol, has_decode, has_step_last


class EagerBackend(SegmentPrograms):
    """Runs the module's flat programs (``FlatStep``, ``FlatStepLast``, ``FlatDecode``) on numpy in, numpy out, like
    an exported artifact (``runtime.backends.protocol.Backend``)."""

    name = "eager"

    def __init__(self, module: torch.nn.Module):
        self._step_program = FlatStep(module).eval()
        self._decode_program = FlatDecode(module).eval() if has_decode(module) else None
        self._last_program = FlatStepLast(module).eval() if has_step_last(module) else None

    @torch.no_grad()
    def _run(self, program, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        outs = program(torch.from_numpy(ids), *(torch.from_numpy(s) for s in state))
        return outs[0].float().numpy(), [t.numpy() for t in outs[1:]]

    @torch.no_grad()
    def run_decode(self, ids: np.ndarray, position: int, state: list[np.ndarray], cache: list[np.ndarray]):
        """One decode call: ``(logits (B, T, V), new state list, cache rows list)``."""
        outs = self._decode_program(torch.from_numpy(ids), torch.tensor([position], dtype=torch.int64),
                                *(torch.from_numpy(a) for a in (*state, *cache)))
        n = len(state)
        return outs[0].float().numpy(), [t.numpy() for t in outs[1:1 + n]], [t.numpy() for t in outs[1 + n:]]


def eager_manifest(module: torch.nn.Module, backend: str = "eager") -> Manifest:
    """The manifest of a module that was not exported (the eager reference, driven by the same session)."""
    spec = check_protocol(module)
    return manifest_document(spec, backend=backend, program=TORCH_PROGRAM, fingerprint=model_fingerprint(module, spec),
                             max_batch=1 << 16, weights_dtype=weights_dtype(module),
                             decode_spec=module.decode_spec() if has_decode(module) else None,
                             decode_program=TORCH_PROGRAM,
                             last_program=TORCH_PROGRAM if has_step_last(module) else None)


def eager_session(module: torch.nn.Module, batch_size: int = 1) -> InfiniSession:
    """An ``InfiniSession`` over the eager module (feed / stream / generate / save_state ... as on device)."""
    return InfiniSession(eager_manifest(module), EagerBackend(module), batch_size)
