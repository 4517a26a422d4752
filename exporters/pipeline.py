"""Export -> write artifact -> reopen with the runtime -> parity -> manifest with the measured parity."""
from __future__ import annotations

import gc
from pathlib import Path

import torch

from infini_export.parity import ParityReport, validate
from runtime.session import InfiniSession

from .artifact import write_manifest
from .quantize import DEFAULT_BLOCK_SIZE, check_int4_shapes, check_quantize
from .tokenizer import tokenizer_plan

FORMATS = ("onnx", "executorch")
# the batch bound ``infini-export export`` gives unless told: ONNX keeps a dynamic axis; ExecuTorch plans
# its memory for the bound, so a device program is planned for one sequence (``export_artifact`` itself
# keeps 64 for both unless told, as its callers expect)
DEFAULT_MAX_BATCH = {"onnx": 64, "executorch": 1}


class ExportParityError(RuntimeError):
    """The exported artifact does not match the eager model; the manifest records the failure."""

    def __init__(self, report: ParityReport):
        super().__init__(f"parity failed: {len(report.failures)} failures, first: {report.failures[:3]}")
        self.report = report


def export_artifact(module: torch.nn.Module, out_dir: str | Path, fmt: str = "onnx", *,
                    quantize: str | None = None, delegate: str = "xnnpack", parity_segments: int = 64,
                    max_batch: int = 64, progress: bool = True, log=print,
                    block_size: int = DEFAULT_BLOCK_SIZE, table_rows: int = 6,
                    attention_rows: int | None = None, full_logits: bool | None = None,
                    jobs: int | None = None, tokenizer=None) -> tuple[dict, ParityReport]:
    """Export ``module`` into ``out_dir`` and validate it; raises ``ExportParityError`` on a parity failure.

    ``block_size`` is the int4 block (group) size; ``table_rows`` the segments the logged parity table shows;
    ``attention_rows`` (ONNX) the query rows per block of the segment programs' local attention (None: the
    exporter's default); ``full_logits`` (ExecuTorch) whether the program also has the full-logits method (None:
    only where a session needs it, see ``export_executorch``); ``jobs`` (ExecuTorch) the processes that lower its
    methods side by side (None: one per method up to the cores available; 1: in this process).
    An ExecuTorch manifest also records the planned memory of every method (``exporters.memory_plan``).
    ``tokenizer`` (a ``tokenizer.json`` path or an ``exporters.tokenizer.TokenizerPlan``) is checked against the
    model's vocabulary before anything is written and copied into the artifact (``exporters.tokenizer``).
    """
    out_dir = Path(out_dir)
    module = module.eval()
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    check_quantize(quantize, block_size)
    if attention_rows is not None and fmt != "onnx":
        raise ValueError(f"attention_rows applies to ONNX exports, not {fmt!r}")
    if full_logits is not None and fmt != "executorch":
        raise ValueError(f"full_logits applies to ExecuTorch exports; a {fmt!r} artifact always has all logits")
    if jobs is not None and fmt != "executorch":
        raise ValueError(f"jobs applies to ExecuTorch exports, not {fmt!r}")
    if quantize == "int4":  # before anything is written
        check_int4_shapes(module, block_size)
    text = tokenizer_plan(tokenizer, module.step_spec().vocab_size)  # before anything is written
    if fmt == "onnx":
        from .onnx import export_onnx
        rows = {} if attention_rows is None else {"attention_rows": attention_rows}
        manifest = export_onnx(module, out_dir, quantize=quantize, max_batch=max_batch, block_size=block_size, **rows)
    else:
        from .executorch import export_executorch
        manifest = export_executorch(module, out_dir, delegate=delegate, quantize=quantize, max_batch=max_batch,
                                     block_size=block_size, full_logits=full_logits, jobs=jobs, progress=progress)
    if text is not None:
        text.attach(out_dir, manifest)  # tokenizer.json, its files entry, the tokenizer and generation sections
    write_manifest(out_dir, manifest)
    gc.collect()  # the export's graphs (reference cycles, GBs at 110M) go before the parity run allocates
    session = InfiniSession.open(out_dir)
    report = validate(session.backend, module, precision=quantize or manifest["weights_dtype"], segments=parity_segments,
                      manifest=session.manifest, progress=progress, **decode_parity(manifest["segment_len"]))
    manifest["parity"] = {"tolerance": report.tolerance, "segments": parity_segments, "passed": report.passed,
                          "measured": report.summary, "failures": report.failures[:50],
                          "decode": {k: v for k, v in report.decode.items() if k != "failures"} or None,
                          "last_logits": {k: v for k, v in report.last.items() if k != "failures"} or None}
    write_manifest(out_dir, manifest)
    if log:
        log(report.table(rows=table_rows))
    if not report.passed:
        raise ExportParityError(report)
    return manifest, report


def decode_parity(segment_len: int) -> dict:
    """How the decode program is checked after export (``validate``'s decode arguments): token by token over three
    segments at N <= 128; longer segments over two (the first boundary's memory write goes into an empty memory,
    the second's into a written one) in 32 calls a segment, one token and N/16 - 1 tokens in turn, so that the
    one-token calls of generation and multi-token calls are both compared at every part of the segment."""
    if segment_len <= 128:
        return {"decode_segments": 3, "decode_chunk": 1}
    return {"decode_segments": 2, "decode_chunk": (1, segment_len // 16 - 1)}


def export_unchecked(config: str, out_dir: str | Path, fmt: str = "onnx", seed: int = 0) -> Path:
    """Export a preset (or a config as JSON text) with random weights and no parity check (for speed and memory
    measurements only); an existing artifact in ``out_dir`` is reused."""
    from infini_export import InfiniConfig, InfiniTransformer

    out_dir = Path(out_dir)
    if (out_dir / "manifest.json").is_file():
        return out_dir
    torch.manual_seed(seed)
    cfg = InfiniConfig.from_json(config) if config.lstrip().startswith("{") else InfiniConfig.from_name(config)
    module = InfiniTransformer(cfg).eval()
    if fmt != "onnx":
        raise ValueError("export_unchecked writes ONNX artifacts")
    from .onnx import export_onnx
    write_manifest(out_dir, export_onnx(module, out_dir))
    return out_dir
