"""The torch-free runtime: open an exported artifact and stream tokens through it in constant memory."""
from .errors import ArtifactError, InfiniRuntimeError, InputError, ManifestError, StateError
from .manifest import Manifest
from .session import InfiniSession

__all__ = ["InfiniSession", "Manifest", "InfiniRuntimeError", "ArtifactError", "ManifestError", "InputError",
           "StateError"]
