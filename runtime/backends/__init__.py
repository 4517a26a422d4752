"""Backends run one padded segment: ``run(ids (B, N) int64, state list) -> (logits, new state list)``.

Every backend takes the state as a list of numpy arrays in manifest order and returns new arrays
(never views of its own reusable buffers), so the session can keep, copy or save them freely.
"""
from __future__ import annotations

from ..errors import ManifestError

BACKENDS = ("onnxruntime", "executorch")


def open_backend(name: str, manifest, **options):
    """Load the program named by ``manifest`` with backend ``name``."""
    if name == "onnxruntime":
        from .ort import OrtBackend
        return OrtBackend(manifest, **options)
    if name == "executorch":
        if options.pop("low_memory", False):
            raise ValueError("low_memory applies to the onnxruntime backend; ExecuTorch plans its memory at export")
        from .executorch import ExecuTorchBackend
        return ExecuTorchBackend(manifest, **options)
    raise ManifestError(f"unknown backend {name!r}; expected one of {BACKENDS}")
