"""The torch-free runtime: open an exported artifact and stream tokens through it in constant memory."""
from .ortenv import telemetry_off_by_default

telemetry_off_by_default()  # before anything imports onnxruntime (see ortenv)

from .errors import (ArtifactError, InfiniRuntimeError, InputError, ManifestError, StateError,  # noqa: E402
                     UnsafePathError)
from .manifest import Manifest  # noqa: E402
from .session import InfiniSession  # noqa: E402

__all__ = ["InfiniSession", "Manifest", "InfiniRuntimeError", "ArtifactError", "ManifestError", "InputError",
           "StateError", "UnsafePathError"]
