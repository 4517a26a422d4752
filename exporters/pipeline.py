"""Export as named stages: prepare -> build -> validate -> publish.

- **prepare**: check the options once (``ExportOptions``), put the module in eval mode, check int4 shapes and the
  tokenizer against the model's vocabulary (``exporters.tokenizer``), make a work folder beside the target;
- **build**: the format's own stages (ONNX: trace, rewrite, quantize, write; ExecuTorch: untie, quantize, export,
  lower, write) into the work folder, the tokenizer copied beside them; the typed manifest, not yet written;
- **validate**: open the work folder with the runtime and compare it with the eager model (``parity``); left out
  with ``parity_segments=0``;
- **publish**: the manifest written once (parity and every stage's seconds included), the work folder moved into
  place. A stage that raises before publish leaves the target as it was; an exception in the parity run is
  recorded as a failed parity and raised after publishing (the runtime warns when it opens such an artifact).
"""
from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

import torch

from infini_export.parity import ParityReport, validate
from infini_export.protocol import check_protocol
from runtime.backends import open_backend
from runtime.manifest import MANIFEST_FILE, Manifest, ParityRecord
from runtime.session import InfiniSession

from .clock import StageClock
from .options import DEFAULT_MAX_BATCH, FORMATS, ExportOptions  # noqa: F401  (re-exported for the command line)
from .quantize import check_int4_shapes
from .tokenizer import tokenizer_plan

STAGES = ("prepare", "build", "validate", "publish")


class ExportParityError(RuntimeError):
    """The exported artifact does not match the eager model; the manifest records the failure."""

    def __init__(self, report: ParityReport | None, error: str | None = None):
        first = error or (report.failures[:3] if report is not None else "")
        count = len(report.failures) if report is not None else 1
        super().__init__(f"parity failed: {count} failures, first: {first}")
        self.report, self.error = report, error

    def __reduce__(self):  # raised in a worker process, it is pickled back to the caller
        return type(self), (self.report, self.error)


def export_artifact(module: torch.nn.Module, out_dir: str | Path, fmt: str = "onnx", *,
                    quantize: str | None = None, delegate: str = "xnnpack", parity_segments: int = 64,
                    max_batch: int | None = None, progress: bool = True, log=print, block_size: int | None = None,
                    table_rows: int = 6, attention_rows: int | None = None, full_logits: bool | None = None,
                    jobs: int | None = None, ops: str | None = None, tokenizer=None,
                    options: ExportOptions | None = None) -> tuple[Manifest, ParityReport | None]:
    """Export ``module`` into ``out_dir`` in stages and validate it; raises ``ExportParityError`` on a parity failure.

    The options are ``ExportOptions``'s (``block_size``: int4 group size; ``attention_rows``: ONNX query rows per
    attention block; ``ops``: ONNX "onnxruntime" or "portable"; ``full_logits``, ``jobs``: ExecuTorch).
    ``max_batch`` None: the format's default (``exporters.options.DEFAULT_MAX_BATCH``: a dynamic axis up to 64 for
    ONNX, one sequence for ExecuTorch, whose memory is planned for the bound).
    ``options``, already checked (the command line checks them before it loads the model), stands for all of them.
    ``parity_segments=0`` leaves the validate stage out
    (the report is then None). ``table_rows``: the segments the logged parity table shows. An ExecuTorch manifest
    also records the planned memory of every method (``exporters.memory_plan``). ``tokenizer`` (a
    ``tokenizer.json`` path or an ``exporters.tokenizer.TokenizerPlan``) is checked against the model's vocabulary
    before anything is written and copied into the artifact with its manifest sections.
    """
    clock = StageClock()
    if options is None:
        options = ExportOptions(fmt, quantize=quantize, block_size=block_size, delegate=delegate, max_batch=max_batch,
                                attention_rows=attention_rows, full_logits=full_logits, jobs=jobs,
                                parity_segments=parity_segments, ops=ops)
    out_dir = Path(out_dir)
    module = module.eval()
    if options.quantize == "int4":  # before anything is written
        check_int4_shapes(module, options.block_size)
    spec = check_protocol(module)  # a module that breaks the protocol is refused here, before anything is written
    text = tokenizer_plan(tokenizer, spec.vocab_size)
    work = _work_folder(out_dir)
    try:
        clock.done("prepare")
        manifest = _build(module, spec, work, options, progress)
        if text is not None:
            manifest = text.attach(manifest)  # tokenizer.json, its files entry, the tokenizer and generation sections
        clock.done("build")
        report, parity = None, None
        if options.parity_segments:
            gc.collect()  # the export's graphs (reference cycles, GBs at 110M) go before the parity run allocates
            report, parity = _validate(module, spec, manifest, options, progress)
            clock.done("validate")
        exporter = {**manifest.exporter, "stages": clock.seconds}
        manifest = manifest.replace(parity=parity, exporter=exporter)
        manifest.write(work)
        _publish(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    manifest = manifest.replace(directory=out_dir)
    if log and report is not None:
        log(report.table(rows=table_rows))
    if parity is not None and not parity.passed:
        raise ExportParityError(report, parity.error)
    return manifest, report


def _work_folder(out_dir: Path) -> Path:
    """A fresh folder beside ``out_dir`` (same file system, so publishing is a rename). ``out_dir`` may be missing,
    empty or an earlier artifact; a folder of other files is refused before anything is written."""
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir())
                                                      and not (out_dir / MANIFEST_FILE).is_file())):
        raise ValueError(f"{out_dir} exists and is not an artifact folder (no {MANIFEST_FILE}); export into a new or "
                         "empty folder, or an earlier artifact's, which it replaces")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    return work


def _build(module, spec, work: Path, options: ExportOptions, progress: bool) -> Manifest:
    if options.format == "onnx":
        from .onnx import build_onnx
        return build_onnx(module, spec, work, options)
    from .executorch import build_executorch
    return build_executorch(module, spec, work, options, progress=progress)


def _validate(module, spec, manifest: Manifest, options: ExportOptions, progress: bool):
    """``(report, ParityRecord)``; an exception in the run is recorded as a failed parity (report None)."""
    try:
        manifest.verify_files()
        session = InfiniSession(manifest, open_backend(manifest.backend, manifest))
        precision = options.quantize or manifest.weights_dtype  # the tolerances' key: float32, float16, int8, int4
        report = validate(session.backend, module, precision=precision, segments=options.parity_segments,
                          manifest=manifest, progress=progress, spec=spec, **decode_parity(manifest.segment_len))
    except Exception as exc:  # the runtime or the reference failed: recorded, raised after publishing
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:500] if str(exc) else ''}"
        return None, ParityRecord(passed=False, segments=options.parity_segments, error=error)
    return report, ParityRecord(
        passed=report.passed, segments=options.parity_segments, tolerance=report.tolerance,
        measured=report.summary, failures=tuple(report.failures[:50]),
        decode={k: v for k, v in report.decode.items() if k != "failures"} or None,
        last_logits={k: v for k, v in report.last.items() if k != "failures"} or None)


def _publish(work: Path, out_dir: Path) -> None:
    """``work`` becomes ``out_dir``; an earlier artifact there is removed only after the new one is in place."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    work.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def decode_parity(segment_len: int) -> dict:
    """How the decode program is checked after export (``validate``'s decode arguments): token by token over three
    segments at N <= 128; longer segments over two (the first boundary's memory write goes into an empty memory,
    the second's into a written one) in 32 calls a segment, one token and N/16 - 1 tokens in turn, so that the
    one-token calls of generation and multi-token calls are both compared at every part of the segment."""
    if segment_len <= 128:
        return {"decode_segments": 3, "decode_chunk": 1}
    return {"decode_segments": 2, "decode_chunk": (1, segment_len // 16 - 1)}


def export_preset(config: str, out_dir: str | Path, fmt: str = "onnx", seed: int = 0, **options) -> Path:
    """Export a preset (or a config as JSON text) with random weights and no parity run (for speed and memory
    measurements); an existing artifact in ``out_dir`` is reused."""
    from infini_export import InfiniConfig, InfiniTransformer

    out_dir = Path(out_dir)
    if (out_dir / MANIFEST_FILE).is_file():
        return out_dir
    torch.manual_seed(seed)
    cfg = InfiniConfig.from_json(config) if config.lstrip().startswith("{") else InfiniConfig.from_name(config)
    export_artifact(InfiniTransformer(cfg), out_dir, fmt, parity_segments=0, log=None, progress=False, **options)
    return out_dir
