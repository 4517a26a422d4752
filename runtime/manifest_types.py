"""The manifest's sections as frozen dataclasses: each built from checked JSON (``from_json``) and written back
(``to_json``) by ``runtime.manifest.Manifest``, the one reader and writer of ``manifest.json``."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .manifest_schema import BATCH, DTYPE_BYTES


@dataclass(frozen=True)
class FileEntry:
    """One file of the artifact: a relative path inside the folder, its sha256 and size."""

    path: str  # relative to the artifact folder, checked by ``runtime.paths.confine`` before it is opened
    sha256: str  # 64 lowercase hex digits
    bytes: int | None = None  # the file's size (every exporter records it; None only in hand-made manifests)

    @classmethod
    def from_json(cls, d: dict) -> "FileEntry":
        return cls(d["path"], d["sha256"], d.get("bytes"))

    def to_json(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, **({} if self.bytes is None else {"bytes": self.bytes})}


@dataclass(frozen=True)
class ProgramRef:
    """Which program runs a step: ``format`` (onnx, pte, torch), the ``files`` key of its file (None: in memory), the
    method of a ``.pte`` (None in a ``.pte``'s main program: no full-logits method), the ExecuTorch delegate."""

    format: str
    file: str | None
    method: str | None = None
    delegate: str | None = None

    @classmethod
    def from_json(cls, d: dict) -> "ProgramRef":
        return cls(d["format"], d.get("file"), d.get("method"), d.get("delegate"))

    def to_json(self) -> dict:
        out: dict[str, Any] = {"format": self.format, "file": self.file}
        if self.format == "pte" or self.method is not None:  # a .pte's null method is meaningful
            out["method"] = self.method
        if self.delegate is not None:
            out["delegate"] = self.delegate
        return out


@dataclass(frozen=True)
class TensorIO:
    """One graph input or output in positional order."""

    name: str
    role: str  # ids, position, logits, state-in, state-out, cache-in, cache-out, cache-rows
    dtype: str  # numpy dtype name
    shape: tuple  # ints and the symbols "batch" (and "tokens" in the decode program)

    @classmethod
    def from_json(cls, d: dict) -> "TensorIO":
        return cls(d["name"], d["role"], d["dtype"], tuple(d["shape"]))

    def to_json(self) -> dict:
        return {"name": self.name, "role": self.role, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class StateEntry:
    """One recurrent-state (or K/V cache) tensor and the graph input and output that carry it."""

    name: str  # base name, e.g. "memory.0"
    input: str  # graph input, e.g. "past_memory.0"
    output: str  # graph output, e.g. "present_memory.0"
    shape: tuple  # ("batch", d1, ...)
    dtype: str
    axis: int | None = None  # caches only: the axis the rows are written along (2)

    @classmethod
    def from_json(cls, d: dict) -> "StateEntry":
        return cls(d["name"], d["input"], d["output"], tuple(d["shape"]), d["dtype"], d.get("axis"))

    def to_json(self) -> dict:
        out = {"name": self.name, "input": self.input, "output": self.output, "dtype": self.dtype,
               "shape": list(self.shape)}
        return out if self.axis is None else {**out, "axis": self.axis}

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)

    def nbytes(self, batch: int) -> int:
        """Bytes of this tensor at batch size ``batch`` (exact, computed before anything is allocated)."""
        return math.prod(self.concrete_shape(batch)) * DTYPE_BYTES[self.dtype]


class NamedIO:
    """``input_names`` / ``output_names`` of a section with ``inputs`` and ``outputs`` (TensorIO, in graph order)."""

    inputs: tuple
    outputs: tuple

    @property
    def input_names(self) -> list[str]:
        return [io.name for io in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [io.name for io in self.outputs]


def _ios(items) -> tuple[TensorIO, ...]:
    return tuple(TensorIO.from_json(io) for io in items)


def _entries(items) -> tuple[StateEntry, ...]:
    return tuple(StateEntry.from_json(s) for s in items)


@dataclass(frozen=True)
class DecodeInfo(NamedIO):
    """The ``decode`` section: a chunk of 1..``max_chunk`` tokens at position p of the current segment."""

    program: ProgramRef
    max_tokens: int  # segment_len: position + tokens never exceeds it
    position: str  # graph input carrying p, int64 (1,)
    inputs: tuple[TensorIO, ...]  # ids, position, state, cache
    outputs: tuple[TensorIO, ...]  # logits, state, cache rows or whole caches
    state: tuple[StateEntry, ...]  # memory.i, norm.i as in the segment state, then the pending write
    cache: tuple[StateEntry, ...]  # (B, H, N, dh) per layer and K/V, written along axis 2
    max_chunk: int  # the most tokens one call takes; a runtime splits longer chunks
    cache_in_place: bool  # the cache outputs are the whole caches (bound to the inputs' buffers), not the rows
    form: str | None = None  # how the exporter wrote the local attention ("fused": GroupQueryAttention, "rows")

    @classmethod
    def from_json(cls, d: dict) -> "DecodeInfo":
        cache = _entries(d["cache"])
        outputs = _ios(d["outputs"])
        in_place = d.get("cache_in_place")
        if in_place is None:  # written before the field existed: the roles say it
            in_place = bool(cache) and any(io.name == cache[0].output and io.role == "cache-out" for io in outputs)
        return cls(ProgramRef.from_json(d["program"]), int(d["max_tokens"]), d["position"], _ios(d["inputs"]),
                   outputs, _entries(d["state"]), cache, int(d.get("max_chunk", d["max_tokens"])), bool(in_place),
                   d.get("form"))

    def to_json(self) -> dict:
        out = {"program": self.program.to_json(), "max_tokens": self.max_tokens, "max_chunk": self.max_chunk,
               "cache_in_place": self.cache_in_place, "position": self.position,
               "inputs": [io.to_json() for io in self.inputs], "outputs": [io.to_json() for io in self.outputs],
               "state": [e.to_json() for e in self.state], "cache": [e.to_json() for e in self.cache]}
        return out if self.form is None else {**out, "form": self.form}


@dataclass(frozen=True)
class LastLogitsInfo:
    """The ``last_logits`` section: the segment step with the last token's logits (B, 1, V) only, for prefill."""

    program: ProgramRef
    inputs: tuple[TensorIO, ...]  # the segment step's inputs
    outputs: tuple[TensorIO, ...]  # logits (batch, 1, vocab), then the segment step's state outputs

    @classmethod
    def from_json(cls, d: dict) -> "LastLogitsInfo":
        return cls(ProgramRef.from_json(d["program"]), _ios(d["inputs"]), _ios(d["outputs"]))

    def to_json(self) -> dict:
        return {"program": self.program.to_json(), "inputs": [io.to_json() for io in self.inputs],
                "outputs": [io.to_json() for io in self.outputs]}


@dataclass(frozen=True)
class SharedWeights:
    """ONNX weights stored once for every graph: ``file`` (a files key) and, per graph's files key, its tensors as
    ``[name, offset, length, dtype, dims]``."""

    file: str
    graphs: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> "SharedWeights":
        return cls(d["file"], {k: [list(e) for e in v] for k, v in d["graphs"].items()})

    def to_json(self) -> dict:
        return {"file": self.file, "graphs": self.graphs}


@dataclass(frozen=True)
class ParityRecord:
    """What the export's parity run measured against the eager model (``infini_export.parity``)."""

    passed: bool
    segments: int = 0  # consecutive segments compared
    tolerance: dict = field(default_factory=dict)  # the bounds held to, by quantity
    measured: dict = field(default_factory=dict)  # the worst errors seen, by quantity
    failures: tuple = ()  # the first failures, each a sentence
    decode: dict | None = None  # the decode program's comparison
    last_logits: dict | None = None  # the last-token program's comparison
    error: str | None = None  # the exception that stopped the parity run, where one did

    @classmethod
    def from_json(cls, d: dict) -> "ParityRecord":
        return cls(bool(d["passed"]), int(d.get("segments") or 0), d.get("tolerance") or {}, d.get("measured") or {},
                   tuple(d.get("failures") or ()), d.get("decode"), d.get("last_logits"), d.get("error"))

    def to_json(self) -> dict:
        out = {"passed": self.passed, "segments": self.segments, "tolerance": self.tolerance,
               "measured": self.measured, "failures": list(self.failures), "decode": self.decode,
               "last_logits": self.last_logits}
        return out if self.error is None else {**out, "error": self.error}
