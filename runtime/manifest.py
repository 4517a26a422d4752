"""manifest.json: the contract between an exporter and the runtime, read without torch."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_write
from .errors import ArtifactError, ManifestError
from .manifest_schema import BATCH, DTYPE_BYTES, FORMAT, FORMAT_VERSION, ROLES, check_manifest  # noqa: F401
from .manifest_types import (DecodeInfo, FileEntry, LastLogitsInfo, NamedIO, ParityRecord,  # noqa: F401
                             ProgramRef, SharedWeights, StateEntry, TensorIO, _entries, _ios)
from .paths import confine
from .tokenizer_section import GenerationDefaults, TokenizerInfo, generation_defaults, tokenizer_info

MANIFEST_FILE = "manifest.json"
MAX_MANIFEST_BYTES = 256 << 10  # real ones are 5-100 KB; parsed JSON can take ~25x its size


def strict_json(value):
    """``value`` with every non-finite float replaced by None: JSON has no Infinity or NaN (JavaScript's
    ``JSON.parse`` rejects them), so an unbounded tolerance or an error that overflowed is written as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


KNOWN_KEYS = ("format", "format_version", "backend", "program", "model", "model_fingerprint", "segment_len",
              "vocab_size", "batch", "inputs", "outputs", "state", "state_map", "initial_state", "weights_dtype",
              "quantization", "files", "exporter", "parity", "decode", "last_logits", "shared_weights",
              "embedding_lookup", "memory", "tokenizer", "generation")


class ParityWarning(UserWarning):
    """An artifact whose parity run failed or never ran: it was not shown to compute what its model computes."""


@dataclass(frozen=True)
class Manifest(NamedIO):
    """``manifest.json`` as typed, frozen fields: what a runtime needs to run an artifact without torch.

    Built only from a checked document (``from_dict``, ``load``) or by an exporter (``infini_export.manifest``);
    written only by ``write`` (atomic, strict JSON). ``directory`` is the artifact folder (None in memory).
    Sections other code adds (``extra``) are kept as they are, checked by their owners."""

    backend: str  # the runtime backend: onnxruntime, executorch (eager: the torch module itself)
    program: ProgramRef  # the segment step
    model: dict  # the model's configuration as its module reports it
    model_fingerprint: str  # identifies weights + config, the same for every backend it was exported to
    segment_len: int  # N: tokens per segment
    vocab_size: int  # logits per token
    max_batch: int  # the batch bound the programs were exported for
    inputs: tuple[TensorIO, ...]  # the segment step's: ids, then the state in
    outputs: tuple[TensorIO, ...]  # logits, then the state out
    state: tuple[StateEntry, ...]  # the recurrent state, in graph order
    files: dict  # key -> FileEntry: every file of the artifact
    initial_state_file: str | None = None  # files key of a non-zero initial state (None: zeros)
    weights_dtype: Any = "float32"  # the parameters' dtype, or a list of them
    quantization: str | None = None  # None, "int8" or "int4"
    exporter: dict = field(default_factory=dict)  # how it was made: paths, versions, stage seconds, fusions
    parity: ParityRecord | None = None  # the export's parity run (None: it never ran)
    decode: DecodeInfo | None = None  # the decode program (None: segment step alone)
    last_logits: LastLogitsInfo | None = None  # the last-token program (None: every segment gives all logits)
    shared_weights: SharedWeights | None = None  # ONNX weights stored once for every graph
    embedding_lookup: dict | None = None  # what the token lookup's table is stored as
    memory: dict | None = None  # ExecuTorch: every method's planned memory and the weights' bytes
    tokenizer: TokenizerInfo | None = None  # the tokenizer shipped in the artifact (None: token ids only)
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)  # text generation's defaults
    state_map: dict = field(default_factory=dict)  # which state output feeds which input at the next step
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # further top-level sections, kept as read
    directory: Path | None = field(default=None, compare=False)

    # ---- derived -------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Identifies the model (weights + config), the same for every backend it was exported to."""
        return self.model_fingerprint

    @property
    def full_logits(self) -> bool:
        """Whether the program file holds the segment step with all its logits. An ExecuTorch program may carry
        only its last-token and decode methods (``program.method`` null); all logits then come from decode calls."""
        return not (self.program.format == "pte" and self.program.method is None)

    @property
    def validated(self) -> bool:
        """Whether the export's parity run ran and passed."""
        return self.parity is not None and self.parity.passed

    def state_bytes(self, batch: int) -> int:
        """Bytes of the whole state at batch size ``batch``, from the (checked) shapes: with a decode program, its
        state and K/V cache (what a session holds)."""
        dec = self.decode
        seg = {e.name for e in self.state}
        extra = [] if dec is None else [e for e in dec.state if e.name not in seg] + list(dec.cache)
        return sum(e.nbytes(batch) for e in (*self.state, *extra))

    def file_path(self, key: str) -> Path:
        """The real path of ``files[key]``: every file the runtime opens is found here, and refused
        (``UnsafePathError``) unless it is a relative path inside the artifact folder, symlinks resolved."""
        if self.directory is None:
            raise ManifestError("this manifest has no directory; it describes an in-memory model")
        if not isinstance(key, str) or key not in self.files:
            raise ManifestError(f"the manifest's files have no entry {key!r}; it lists {sorted(self.files)}")
        return confine(self.directory, f"files.{key}.path", self.files[key].path)

    def program_path(self) -> Path:
        """``file_path`` of the program file (``program.file``), as every backend loads it."""
        return self.file_path(self.program.file)

    def check_paths(self) -> dict[str, Path]:
        """``file_path`` of every entry in ``files``, without opening any of them."""
        return {key: self.file_path(key) for key in self.files}

    # ---- JSON ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Any, directory: str | Path | None = None) -> "Manifest":
        """Check every field the runtime uses (types, ranges, cross-references, path syntax), then type it."""
        check_manifest(d)
        init = d.get("initial_state", "zeros")
        opt = d.get
        return cls(
            backend=d["backend"], program=ProgramRef.from_json(d["program"]), model=opt("model") or {},
            model_fingerprint=d["model_fingerprint"], segment_len=d["segment_len"], vocab_size=d["vocab_size"],
            max_batch=int(opt("batch", {}).get("max", 1 << 30)), inputs=_ios(d["inputs"]), outputs=_ios(d["outputs"]),
            state=_entries(d["state"]), files={k: FileEntry.from_json(v) for k, v in d["files"].items()},
            initial_state_file=None if init == "zeros" else init["file"],
            weights_dtype=opt("weights_dtype", "float32"), quantization=opt("quantization"),
            exporter=opt("exporter") or {},
            parity=None if opt("parity") is None else ParityRecord.from_json(d["parity"]),
            decode=None if opt("decode") is None else DecodeInfo.from_json(d["decode"]),
            last_logits=None if opt("last_logits") is None else LastLogitsInfo.from_json(d["last_logits"]),
            shared_weights=None if not opt("shared_weights") else SharedWeights.from_json(d["shared_weights"]),
            embedding_lookup=opt("embedding_lookup"), memory=opt("memory"), tokenizer=tokenizer_info(d),
            generation=generation_defaults(d), state_map=opt("state_map") or {},
            format_version=d["format_version"], extra={k: v for k, v in d.items() if k not in KNOWN_KEYS},
            directory=None if directory is None else Path(directory))

    def to_dict(self) -> dict:
        """The JSON document (strict: no NaN or infinity; such values become null)."""
        out = {
            "format": FORMAT, "format_version": self.format_version, "backend": self.backend,
            "program": self.program.to_json(), "model": self.model, "model_fingerprint": self.model_fingerprint,
            "segment_len": self.segment_len, "vocab_size": self.vocab_size,
            "batch": {"symbol": BATCH, "min": 1, "max": self.max_batch},
            "inputs": [io.to_json() for io in self.inputs], "outputs": [io.to_json() for io in self.outputs],
            "state": [e.to_json() for e in self.state], "state_map": self.state_map,
            "initial_state": "zeros" if self.initial_state_file is None else {"file": self.initial_state_file},
            "weights_dtype": self.weights_dtype, "quantization": self.quantization,
            "files": {k: v.to_json() for k, v in self.files.items()}, "exporter": self.exporter,
            "parity": None if self.parity is None else self.parity.to_json(),
        }
        for key in ("decode", "last_logits", "shared_weights"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value.to_json()
        for key in ("embedding_lookup", "memory"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.tokenizer is not None:
            out["tokenizer"] = self.tokenizer.to_dict()
        if self.tokenizer is not None or self.generation != GenerationDefaults():  # the exporter writes both
            out["generation"] = self.generation.to_dict()
        return strict_json({**out, **self.extra})

    def replace(self, **changes) -> "Manifest":
        """A copy with ``changes`` (fields by name), checked as a whole document."""
        return Manifest.from_dict(dataclasses.replace(self, **changes).to_dict(), changes.get("directory",
                                                                                             self.directory))

    def write(self, directory: str | Path | None = None) -> Path:
        """Atomic write of ``manifest.json`` into ``directory`` (default: the manifest's own), as strict JSON
        checked by the same parser that reads it."""
        directory = Path(directory if directory is not None else self.directory)
        doc = self.to_dict()
        check_manifest(doc)
        text = (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode()
        return atomic_write(directory / MANIFEST_FILE, lambda f: f.write(text))

    @classmethod
    def load(cls, artifact_dir: str | Path) -> "Manifest":
        """Read and check ``manifest.json``; every path it names is checked before any file is read."""
        directory = Path(artifact_dir)
        if not directory.is_dir():
            raise ArtifactError(f"artifact folder {directory} does not exist")
        path = confine(directory, MANIFEST_FILE, MANIFEST_FILE)
        try:
            info = path.stat()
        except OSError:
            raise ManifestError(f"{path} is missing; an artifact folder holds manifest.json beside its model "
                                "files") from None
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path} is not a regular file of at most {MAX_MANIFEST_BYTES} bytes "
                                f"({info.st_size} bytes)")
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
            raise ManifestError(f"{path} is not readable JSON: {str(exc)[:200]}") from None
        man = cls.from_dict(data, directory)
        man.check_paths()
        return man

    def verify_files(self) -> None:
        """Every listed file is confined, exists with the recorded size and sha256 (all paths and sizes are
        checked before any file is read)."""
        paths = self.check_paths()
        for key, path in paths.items():
            try:
                info = os.stat(path)
            except OSError:
                raise ArtifactError(f"artifact file {path} ({key}) is missing") from None
            if not stat.S_ISREG(info.st_mode):
                raise ArtifactError(f"artifact file {path} ({key}) is not a regular file")
            expected = self.files[key].bytes if self.files[key].bytes is not None else info.st_size
            if info.st_size != expected:
                raise ArtifactError(f"artifact file {path} has {info.st_size} bytes, the manifest says {expected} "
                                    "(truncated or replaced)")
        for key, path in paths.items():
            entry = self.files[key]
            try:
                digest = sha256_file(path)
            except OSError as exc:
                raise ArtifactError(f"cannot read artifact file {path} ({key}): {exc}") from None
            if digest != entry.sha256:
                raise ArtifactError(f"artifact file {path} has sha256 {digest[:16]}..., the manifest says "
                                    f"{entry.sha256[:16]}... (corrupt or replaced)")
