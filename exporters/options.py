"""The export's options: one frozen dataclass, checked once (the command line, the pipeline and both exporters
read it; nothing re-checks or re-defaults a value)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .quantize import DEFAULT_BLOCK_SIZE, check_quantize
from .trace_cache import cache_folder

FORMATS = ("onnx", "executorch")
DELEGATES = ("xnnpack", "none")  # ExecuTorch: the XNNPACK delegate, or ExecuTorch's portable kernels
# ONNX: "onnxruntime" lets the graphs use onnxruntime's contrib ops where they apply (GroupQueryAttention in the
# decode program, SkipSimplifiedLayerNormalization for each residual Add + RMSNorm, MatMulNBits for int4) and packs
# the q/k/v and gate/up weight products; "portable" keeps to the standard ONNX operator set (any ONNX runtime)
OPS = ("onnxruntime", "portable")
# the batch bound unless told: ONNX keeps a dynamic axis; ExecuTorch plans its memory for the bound, so a device
# program is planned for one sequence
DEFAULT_MAX_BATCH = {"onnx": 64, "executorch": 1}
# query rows per block of the ONNX segment programs' local attention (longer segments only): at N = 2048 a quarter
# of the score memory per block and ~44% fewer attention FLOPs than one (T, T) block (docs/real_size.md)
ATTENTION_ROWS = 256
# the most tokens one ExecuTorch decode call takes: ExecuTorch plans a method's memory for its largest input and
# output, and at 2047 tokens (N = 2048, V = 32000) the decode method's plan was 1.44 GB, 262 MB of it logits
DECODE_CHUNK = 128


def _int(name: str, value, lo: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


@dataclass(frozen=True)
class ExportOptions:
    """How to export a model; every value is checked on construction (``ValueError`` naming it)."""

    format: str = "onnx"  # "onnx" or "executorch"
    quantize: str | None = None  # None (float32), "int8" or "int4"
    block_size: int | None = None  # int4: weights in groups of this many input features (None: DEFAULT_BLOCK_SIZE)
    delegate: str = "xnnpack"  # ExecuTorch: "xnnpack" or "none" (portable kernels)
    max_batch: int | None = None  # the largest batch the programs take (None: DEFAULT_MAX_BATCH of the format)
    attention_rows: int | None = None  # ONNX: query rows per block of the segment programs' attention (0: one)
    full_logits: bool | None = None  # ExecuTorch: also the full-logits method (None: only where a session needs it)
    jobs: int | None = None  # ExecuTorch: processes lowering methods side by side (None: one per method and core)
    decode_chunk: int = DECODE_CHUNK  # ExecuTorch: the most tokens one decode call takes
    parity_segments: int = 64  # consecutive segments the parity run compares (0: no parity run)
    ops: str | None = None  # ONNX: "onnxruntime" (contrib ops where they apply) or "portable" (None: "onnxruntime")
    # ONNX: a folder of traced programs that exports of the same module reuse (exporters.trace_cache; None:
    # $INFINI_EXPORT_TRACE_CACHE where set, else no cache)
    trace_cache: Path | None = None

    @property
    def contrib_ops(self) -> bool:
        """ONNX: whether the graphs may use onnxruntime's contrib ops (``ops="onnxruntime"``; ``"portable"``: standard
        ONNX ops only)."""
        return self.ops == "onnxruntime"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; expected one of {FORMATS}")
        if self.block_size is not None and self.quantize != "int4":
            raise ValueError(f"block_size (--block-size) applies to int4 quantization only (--quantize int4), not quantize={self.quantize!r}")
        if self.quantize == "int4" and self.block_size is None:
            object.__setattr__(self, "block_size", DEFAULT_BLOCK_SIZE)
        check_quantize(self.quantize, self.block_size or DEFAULT_BLOCK_SIZE)
        if self.max_batch is None:
            object.__setattr__(self, "max_batch", DEFAULT_MAX_BATCH[self.format])
        _int("max_batch", self.max_batch, 1)
        _int("parity_segments", self.parity_segments, 0)
        onnx = self.format == "onnx"
        if self.attention_rows is None and onnx:
            object.__setattr__(self, "attention_rows", ATTENTION_ROWS)
        elif self.attention_rows is not None:
            if not onnx:
                raise ValueError(f"attention_rows (--attention-rows) applies to ONNX exports, not {self.format!r}")
            _int("attention_rows", self.attention_rows, 0)
        if self.ops is None and onnx:
            object.__setattr__(self, "ops", OPS[0])
        elif self.ops is not None:
            if not onnx:
                raise ValueError(f"ops (--ops) applies to ONNX exports, not {self.format!r}")
            if self.ops not in OPS:
                raise ValueError(f"ops must be one of {OPS}, got {self.ops!r}")
        if onnx:
            object.__setattr__(self, "trace_cache", cache_folder(self.trace_cache))
        elif self.trace_cache is not None:
            raise ValueError(f"trace_cache applies to ONNX exports, not {self.format!r}")
        if self.full_logits is not None and onnx:
            raise ValueError("full_logits (--full-logits) applies to ExecuTorch exports; an ONNX artifact always has all logits")
        if self.jobs is not None:
            if onnx:
                raise ValueError("jobs (--jobs) applies to ExecuTorch exports, not 'onnx'")
            _int("jobs", self.jobs, 1)
        _int("decode_chunk", self.decode_chunk, 1)
        if self.delegate not in DELEGATES:
            raise ValueError(f"delegate must be one of {DELEGATES}, got {self.delegate!r}")
        if not onnx and self.quantize and self.delegate != "xnnpack":
            raise ValueError(f"quantize={self.quantize!r} is an XNNPACK scheme: it needs delegate='xnnpack'")
