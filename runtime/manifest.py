"""manifest.json: the contract between an exporter and the runtime, read without torch."""
from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError, ManifestError
from .manifest_schema import BATCH, DTYPE_BYTES, FORMAT, FORMAT_VERSION, ROLES, check_manifest  # noqa: F401
from .paths import confine
from .tokenizer_section import GenerationDefaults, TokenizerInfo, generation_defaults, tokenizer_info

MANIFEST_FILE = "manifest.json"
MAX_MANIFEST_BYTES = 256 << 10  # real ones are 5-100 KB; parsed JSON can take ~25x its size


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
        return tuple(batch if d == BATCH else int(d) for d in self.shape)

    def nbytes(self, batch: int) -> int:
        """Bytes of this tensor at batch size ``batch`` (exact, computed before anything is allocated)."""
        return math.prod(self.concrete_shape(batch)) * DTYPE_BYTES[self.dtype]


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
    cache: list  # StateEntry per cache tensor (B, H, N, dh); its output is the chunk's rows, axis 2, or the whole cache
    max_chunk: int  # the most tokens one call takes (a program planned for fewer than N - p); longer chunks are split

    @property
    def cache_in_place(self) -> bool:
        """Whether the cache outputs are the whole caches (role ``cache-out``: the inputs with the chunk's rows
        written at its position), which a runtime binds to the inputs' buffers, rather than the chunk's rows."""
        return bool(self.cache) and any(io["name"] == self.cache[0].output and io.get("role") == "cache-out"
                                        for io in self.outputs)

    @property
    def input_names(self) -> list[str]:
        return [io["name"] for io in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [io["name"] for io in self.outputs]


@dataclass(frozen=True)
class LastLogitsInfo:
    """The manifest's ``last_logits`` section: the segment step with the last token's logits (B, 1, V) only,
    for prefill; the same inputs and state outputs as the segment step."""

    program: dict  # {"format", "file"} (or "method" for a .pte)
    inputs: list  # the segment step's inputs
    outputs: list  # logits (batch, 1, vocab), then the segment step's state outputs


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
                          [_entry(s) for s in d["state"]], [_entry(s) for s in d["cache"]],
                          int(d.get("max_chunk", d["max_tokens"])))

    @property
    def last_logits(self) -> LastLogitsInfo | None:
        """The last-token program, or None for an artifact without it (every segment then gives all logits)."""
        d = self.data.get("last_logits")
        return None if d is None else LastLogitsInfo(d["program"], d["inputs"], d["outputs"])

    @property
    def tokenizer(self) -> TokenizerInfo | None:
        """The ``tokenizer`` section (``runtime.tokenizer_section``), or None for an artifact of token ids only."""
        return tokenizer_info(self.data)

    @property
    def generation(self) -> GenerationDefaults:
        """The ``generation`` section: the defaults of text generation (built-in ones where it has none)."""
        return generation_defaults(self.data)

    @property
    def full_logits(self) -> bool:
        """Whether the program file holds the segment step with all its logits. An ExecuTorch program may carry
        only its last-token and decode methods (``program.method`` null); all logits then come from decode calls."""
        return self.data["program"].get("method", "") is not None

    @property
    def input_names(self) -> list[str]:
        return [io["name"] for io in self.data["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [io["name"] for io in self.data["outputs"]]

    def state_bytes(self, batch: int) -> int:
        """Bytes of the whole state at batch size ``batch``, from the (checked) shapes: with a decode program, its
        state and K/V cache (what a session holds)."""
        dec = self.decode
        seg = {e.name for e in self.state}
        extra = [] if dec is None else [e for e in dec.state if e.name not in seg] + dec.cache
        return sum(e.nbytes(batch) for e in self.state + extra)

    def file_path(self, key: str) -> Path:
        """The real path of ``files[key]``: every file the runtime opens is found here, and refused
        (``UnsafePathError``) unless it is a relative path inside the artifact folder, symlinks resolved."""
        if self.directory is None:
            raise ManifestError("this manifest has no directory; it describes an in-memory model")
        files = self.data["files"]
        if not isinstance(key, str) or key not in files:
            raise ManifestError(f"the manifest's files have no entry {key!r}; it lists {sorted(files)}")
        return confine(self.directory, f"files.{key}.path", files[key]["path"])

    def program_path(self) -> Path:
        """``file_path`` of the program file (``program.file``), as every backend loads it."""
        return self.file_path(self.data["program"]["file"])

    def check_paths(self) -> dict[str, Path]:
        """``file_path`` of every entry in ``files``, without opening any of them."""
        return {key: self.file_path(key) for key in self.data["files"]}

    @classmethod
    def from_dict(cls, data: Any, directory: str | Path | None = None) -> "Manifest":
        """Check every field the runtime uses (types, ranges, cross-references, path syntax)."""
        check_manifest(data)
        return cls(data, None if directory is None else Path(directory))

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
            expected = self.data["files"][key].get("bytes", info.st_size)
            if info.st_size != expected:
                raise ArtifactError(f"artifact file {path} has {info.st_size} bytes, the manifest says {expected} "
                                    "(truncated or replaced)")
        for key, path in paths.items():
            entry = self.data["files"][key]
            try:
                digest = sha256_file(path)
            except OSError as exc:
                raise ArtifactError(f"cannot read artifact file {path} ({key}): {exc}") from None
            if digest != entry["sha256"]:
                raise ArtifactError(f"artifact file {path} has sha256 {digest[:16]}..., the manifest says "
                                    f"{entry['sha256'][:16]}... (corrupt or replaced)")
