"""manifest.json: the contract between an exporter and the runtime, read without torch."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError, ManifestError

FORMAT = "infini-export"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ROLES = ("ids", "state-in", "logits", "state-out")
DECODE_ROLES = ("ids", "position", "state-in", "cache-in", "logits", "state-out", "cache-rows")
_REQUIRED = ("format", "format_version", "backend", "segment_len", "vocab_size", "inputs", "outputs", "state",
             "files", "program", "model_fingerprint")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class StateEntry:
    name: str  # base name, e.g. "memory.0"
    input: str  # graph input, e.g. "past_memory.0"
    output: str  # graph output, e.g. "present_memory.0"
    shape: tuple  # ("batch", d1, ...)
    dtype: str

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == "batch" else int(d) for d in self.shape)


def _entry(s: dict) -> StateEntry:
    return StateEntry(s["name"], s["input"], s["output"], tuple(s["shape"]), s["dtype"])


@dataclass(frozen=True)
class DecodeInfo:
    """The manifest's ``decode`` section: a chunk of 1..N-p tokens at position p of the current segment."""

    program: dict  # {"format", "file"} (or "method" for a .pte)
    max_tokens: int  # segment_len: position + tokens never exceeds it
    position: str  # graph input carrying p, int64 (1,)
    inputs: list  # graph inputs in positional order (name, role, dtype, shape)
    outputs: list  # graph outputs in positional order
    state: list  # StateEntry per state tensor (memory.i, norm.i as in the segment state, then the pending write)
    cache: list  # StateEntry per cache tensor (B, H, N, dh); its output is the chunk's rows, axis 2

    @property
    def input_names(self) -> list[str]:
        return [io["name"] for io in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [io["name"] for io in self.outputs]


@dataclass(frozen=True)
class Manifest:
    """A parsed, checked manifest. ``data`` keeps the whole JSON document."""

    data: dict
    directory: Path | None

    @property
    def backend(self) -> str:
        return self.data["backend"]

    @property
    def segment_len(self) -> int:
        return int(self.data["segment_len"])

    @property
    def vocab_size(self) -> int:
        return int(self.data["vocab_size"])

    @property
    def max_batch(self) -> int:
        return int(self.data.get("batch", {}).get("max", 1 << 30))

    @property
    def fingerprint(self) -> str:
        """Identifies the model (weights + config), the same for every backend it was exported to."""
        return self.data["model_fingerprint"]

    @property
    def state(self) -> list[StateEntry]:
        return [_entry(s) for s in self.data["state"]]

    @property
    def decode(self) -> DecodeInfo | None:
        """The decode program, or None for an artifact of the segment step alone."""
        d = self.data.get("decode")
        if d is None:
            return None
        return DecodeInfo(d["program"], int(d["max_tokens"]), d["position"], d["inputs"], d["outputs"],
                          [_entry(s) for s in d["state"]], [_entry(s) for s in d["cache"]])

    @property
    def input_names(self) -> list[str]:
        return [io["name"] for io in self.data["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [io["name"] for io in self.data["outputs"]]

    def file_path(self, key: str) -> Path:
        if self.directory is None:
            raise ManifestError("this manifest has no directory; it describes an in-memory model")
        return self.directory / self.data["files"][key]["path"]

    @classmethod
    def from_dict(cls, data: Any, directory: Path | None = None) -> "Manifest":
        if not isinstance(data, dict):
            raise ManifestError(f"manifest must be a JSON object, got {type(data).__name__}")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ManifestError(f"manifest lacks the keys {missing}; expected all of {list(_REQUIRED)}")
        if data["format"] != FORMAT:
            raise ManifestError(f"manifest format is {data['format']!r}, expected {FORMAT!r}")
        version = data["format_version"]
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise ManifestError(f"manifest format_version {version!r} is not supported: this runtime reads "
                                f"versions 1..{FORMAT_VERSION}; upgrade infini-export to open it")
        man = cls(data, directory)
        man._check_consistency()
        return man

    @classmethod
    def load(cls, artifact_dir: str | Path) -> "Manifest":
        directory = Path(artifact_dir)
        path = directory / MANIFEST_FILE
        if not directory.is_dir():
            raise ArtifactError(f"artifact folder {directory} does not exist")
        if not path.is_file():
            raise ManifestError(f"{path} is missing; an artifact folder holds manifest.json beside its model files")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path} is not readable JSON: {exc}") from exc
        return cls.from_dict(data, directory)

    def _check_consistency(self) -> None:
        d = self.data
        roles = [io.get("role") for io in d["inputs"]] + [io.get("role") for io in d["outputs"]]
        if any(r not in ROLES for r in roles):
            raise ManifestError(f"manifest I/O roles {roles} include one outside {ROLES}")
        ins, outs = set(self.input_names), set(self.output_names)
        for s in self.state:
            if s.input not in ins or s.output not in outs:
                raise ManifestError(f"state {s.name!r} maps {s.output!r} -> {s.input!r}, "
                                    "but the manifest's graph I/O does not list both")
        if [io["role"] for io in d["inputs"]].count("ids") != 1 or \
                [io["role"] for io in d["outputs"]].count("logits") != 1:
            raise ManifestError("manifest must list exactly one ids input and one logits output")
        if self.segment_len < 1 or self.vocab_size < 1:
            raise ManifestError(f"manifest segment_len={self.segment_len}, vocab_size={self.vocab_size}: expected >= 1")
        if "decode" in d:
            self._check_decode()

    def _check_decode(self) -> None:
        try:
            dec = self.decode
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"manifest decode section is malformed: {exc!r}") from None
        roles = [io.get("role") for io in dec.inputs + dec.outputs]
        if any(r not in DECODE_ROLES for r in roles):
            raise ManifestError(f"manifest decode I/O roles {roles} include one outside {DECODE_ROLES}")
        ins, outs = set(dec.input_names), set(dec.output_names)
        for s in dec.state + dec.cache:
            if s.input not in ins or s.output not in outs:
                raise ManifestError(f"decode tensor {s.name!r} maps {s.output!r} -> {s.input!r}, but the decode "
                                    "program's I/O does not list both")
        seg = {s.name: s for s in self.state}
        names = {s.name for s in dec.state}
        missing = sorted(set(seg) - names)
        if missing:
            raise ManifestError(f"the decode state lacks the segment state tensors {missing}: a runtime could not "
                                "hand the state over at segment boundaries")
        if dec.position not in ins or dec.max_tokens != self.segment_len:
            raise ManifestError(f"decode position input {dec.position!r} / max_tokens {dec.max_tokens}: expected an "
                                f"input of the decode program and segment_len={self.segment_len}")

    def verify_files(self) -> None:
        """Every listed file exists with the recorded size and sha256."""
        for key, entry in self.data["files"].items():
            path = self.file_path(key)
            if not path.is_file():
                raise ArtifactError(f"artifact file {path} ({key}) is missing")
            size = path.stat().st_size
            if "bytes" in entry and size != entry["bytes"]:
                raise ArtifactError(f"artifact file {path} has {size} bytes, the manifest says {entry['bytes']} "
                                    "(truncated or replaced)")
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise ArtifactError(f"artifact file {path} has sha256 {digest[:16]}..., the manifest says "
                                    f"{entry['sha256'][:16]}... (corrupt or replaced)")
