"""What identifies a model and its dtypes: the fingerprint a manifest and a state file carry."""
from __future__ import annotations

import hashlib
import json

import torch

from .state import StepSpec


def model_fingerprint(module: torch.nn.Module, spec: StepSpec) -> str:
    """sha256 of the spec and every parameter and buffer: the same model gives the same print on any backend."""
    h = hashlib.sha256()
    h.update(json.dumps({"vocab": spec.vocab_size, "segment_len": spec.segment_len,
                         "state": [(s.name, list(s.shape), s.dtype) for s in spec.state],
                         "extra": spec.extra}, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def logits_dtype(module: torch.nn.Module) -> str:
    """The dtype ``step`` returns logits in (that of the weights, e.g. float16)."""
    with torch.no_grad():
        logits, _ = module.step(torch.zeros(1, 1, dtype=torch.int64), module.init_state(1))
    return str(logits.dtype).replace("torch.", "")


def weights_dtype(module: torch.nn.Module) -> str | list[str]:
    """The parameters' dtype, or the sorted list of them where they differ."""
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in module.parameters()})
    return dtypes[0] if len(dtypes) == 1 else dtypes
