"""The runtime's errors: one small hierarchy, every message says what was expected and what came."""


class InfiniRuntimeError(ValueError):
    """Base of every error the runtime raises on bad input or a bad artifact."""


class ArtifactError(InfiniRuntimeError):
    """An artifact file is missing, truncated, corrupt or does not match its manifest."""


class UnsafePathError(ArtifactError):
    """A manifest names a file outside its artifact folder: absolute, with '..', or through a symlink leading out."""


class ManifestError(InfiniRuntimeError):
    """manifest.json is missing, unreadable, of an unsupported version, or inconsistent."""


class InputError(InfiniRuntimeError):
    """Token ids or sampling arguments are not what the model accepts."""


class StateError(InfiniRuntimeError):
    """A state (in memory or in a file) does not belong to this model or is malformed."""


class NoTokenizerError(InputError):
    """A text call (encode, decode, generate_text) on an artifact exported without a tokenizer."""


class TokenizerError(ArtifactError):
    """A tokenizer file is too big, not JSON, not a tokenizer, or does not fit the model's vocabulary."""
