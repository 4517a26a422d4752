"""infini-export: export Infini-attention transformers to ONNX and ExecuTorch, run them in constant memory.

Names are imported lazily, so ``infini-export run`` (which needs only the torch-free runtime) does not
load torch.
"""
from importlib import import_module

from runtime.ortenv import telemetry_off_by_default

telemetry_off_by_default()  # onnxruntime (imported later by torch.onnx, the exporters or the runtime) starts with telemetry off

__version__ = "0.1.0"

_EXPORTS = {
    "InfiniConfig": ".config",
    "InfiniTransformer": ".model",
    "LayerMemory": ".state",
    "StepSpec": ".state",
    "StateTensorSpec": ".state",
    "save_checkpoint": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "average_checkpoints": ".checkpoint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'infini_export' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
