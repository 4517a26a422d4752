"""ONNX export of the segment step (torch.onnx dynamo path + onnxscript optimizer)."""
from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import onnx
import onnx_ir
import torch
from onnx_ir.passes.common import CommonSubexpressionEliminationPass, RemoveUnusedNodesPass

from infini_export.protocol import FlatDecode, FlatStep, FlatStepLast, check_protocol, has_decode, has_step_last
from runtime.manifest import Manifest

from . import trace_cache
from .artifact import build_manifest
from .clock import StageClock
from .onnx_attention_blocks import block_local_attention
from .onnx_fusions import FUSED_OPSET, fuse
from .onnx_gqa import cache_attention_translation, choose_decode_form
from .onnx_packed import pack_projections
from .onnx_skip_norm import fuse_skip_norms
from .onnx_tied import lookup_from_transposed
from .onnx_weights import write_shared
from .options import ATTENTION_ROWS, ExportOptions
from .quantize import check_int4_shapes, quantize_onnx_int4
from .quantize_lookup import describe_onnx_lookup

MODEL_FILE = "model.onnx"
DECODE_FILE = "decode.onnx"
LAST_FILE = "step_last.onnx"

log = logging.getLogger(__name__)


def _quantize_int8(src: Path, dst: Path) -> list[str]:
    """Dynamic int8 quantization of the MatMuls whose weight is a constant (the linear layers only).

    Activation x activation MatMuls (attention scores, memory read and write) stay float32, so the
    recurrent state is computed and kept in float32.
    """
    from runtime.ortenv import import_onnxruntime

    import_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    inits = {i.name for i in model.graph.initializer}
    weight_matmuls = [n.name for n in model.graph.node
                      if n.op_type in ("MatMul", "Gemm") and any(i in inits for i in n.input)]
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, nodes_to_quantize=weight_matmuls,
                     op_types_to_quantize=["MatMul", "Gemm"])
    return weight_matmuls


def _trace(flat: torch.nn.Module, example: tuple, input_names: list, output_names: list, dynamic: dict,
           verbose: bool, translations: dict | None = None, contrib: bool = False,
           cache: Path | None = None) -> tuple[onnx.ModelProto, list]:
    """torch.onnx (dynamo) + the onnxscript optimizer + our fusions -> a checked ModelProto; ``contrib``: also
    onnxruntime's contrib-op fusions (the residual Add + RMSNorm as ``SkipSimplifiedLayerNormalization``);
    ``cache``: a folder of traced programs (``trace_cache``) read before tracing and written after."""
    call = dict(input_names=input_names, output_names=output_names, dynamic_shapes=dynamic,
                opset_version=FUSED_OPSET, custom_translation_table=translations)
    key = trace_cache.trace_key(flat, example, **call) if cache is not None else None
    with trace_cache.claim(cache, key) if key else contextlib.nullcontext():
        traced = trace_cache.load(cache, key) if key else None
        if traced is None:
            with torch.no_grad():
                program = torch.onnx.export(flat, example, dynamo=True, optimize=True, verbose=verbose, **call)
            model = program.model
            if key:
                trace_cache.store(cache, key, program.model_proto)
        else:
            model = onnx_ir.from_proto(traced)
    fusions = fuse(model)  # the model's XNNPACK-friendly RMSNorm back to one ONNX op per norm
    if contrib:
        fusions["SkipSimplifiedLayerNormalization"] = fuse_skip_norms(model)
    if translations:  # each layer's op computes the same sequence lengths from the position: once is enough
        CommonSubexpressionEliminationPass()(model)
        RemoveUnusedNodesPass()(model)
        fusions["GroupQueryAttention"] = sum(n.op_type == "GroupQueryAttention" for n in model.graph)
    return onnx_ir.to_proto(model), fusions


def _quantized(model: onnx.ModelProto, quantize: str | None, tmp: Path, name: str, module: torch.nn.Module,
               block_size: int, portable: bool) -> tuple[onnx.ModelProto, int]:
    if quantize is None:
        return model, 0
    src, dst = tmp / f"{name}.fp32.onnx", tmp / f"{name}.{quantize}.onnx"
    onnx.save(model, str(src))
    nodes = _quantize_int8(src, dst) if quantize == "int8" else \
        list(quantize_onnx_int4(src, dst, module, block_size, portable=portable))
    onnx.checker.check_model(str(dst), full_check=True)
    return onnx.load(str(dst)), len(nodes)


def export_onnx(module: torch.nn.Module, out_dir: str | Path, *, quantize: str | None = None,
                max_batch: int = 64, verbose: bool = False, block_size: int | None = None,
                attention_rows: int = ATTENTION_ROWS, ops: str | None = None) -> Manifest:
    """Trace ``module.step`` (and ``module.decode`` / ``module.step_last`` where the module has them) into
    ``out_dir``: ``model.onnx``, ``decode.onnx``, ``step_last.onnx`` and their shared ``weights.bin``; return the
    manifest (not yet written: ``manifest.write()``). The decode program's attention is onnxruntime's
    ``GroupQueryAttention`` where it applies, else standard ops (``onnx_gqa.choose_decode_form``); with
    onnxruntime's ops each residual Add + RMSNorm is one ``SkipSimplifiedLayerNormalization``
    (``onnx_skip_norm``) and the q/k/v and gate/up weight products are packed (``onnx_packed``).

    ``quantize``: None, ``"int8"`` (dynamic int8 MatMuls) or ``"int4"`` (4-bit ``MatMulNBits`` weights in
    blocks of ``block_size`` along in_features, the embedding lookup's table int8; shapes are checked before
    anything is written).
    ``attention_rows``: the segment programs' local attention in blocks of this many query rows where segments
    are longer (``onnx_attention_blocks``); 0 keeps one (T, T) block. ``ops``: ``"onnxruntime"`` (default) or
    ``"portable"`` (standard ONNX ops only: the decode program in rows form, int4 as DequantizeLinear + MatMul).
    """
    options = ExportOptions("onnx", quantize=quantize, block_size=block_size, max_batch=max_batch,
                            attention_rows=attention_rows, ops=ops)
    if quantize == "int4":
        check_int4_shapes(module, options.block_size)
    return build_onnx(module, check_protocol(module), Path(out_dir), options, verbose)


def build_onnx(module, spec, out_dir: Path, options: ExportOptions, verbose: bool = False) -> Manifest:
    """The ONNX build of a module whose protocol was checked (``spec``) with checked ``options``, in stages: trace
    (each program, or read back from the trace cache), rewrite (the local attention in blocks of query rows),
    quantize, pack (onnxruntime's packed weight products), write (one shared weights file); each stage's seconds go
    into the manifest. ``export_onnx`` without the checks."""
    clock = StageClock(log, "onnx export")
    form, form_why = choose_decode_form(module, options.ops) if has_decode(module) else (None, None)
    models, fusions = _trace_programs(module, spec, options, form, verbose)
    clock.done("trace")
    for graph, name in ((MODEL_FILE, "step"), (LAST_FILE, "step_last")):
        if graph in models:
            fusions[name]["attention_blocks"] = block_local_attention(models[graph], options.attention_rows)
    clock.done("rewrite")
    quantized = 0
    if options.quantize:
        with tempfile.TemporaryDirectory() as tmp:
            for name in list(models):
                models[name], n = _quantized(models[name], options.quantize, Path(tmp), name, module,
                                             options.block_size, not options.contrib_ops)
                quantized += n
        clock.done("quantize")
    if options.contrib_ops:  # after quantization: each form of the weight products is packed as itself (exporters.onnx_packed)
        for graph, name in ((MODEL_FILE, "step"), (LAST_FILE, "step_last"), (DECODE_FILE, "decode")):
            if graph in models:
                fusions[name]["packed_projections"] = pack_projections(models[graph])
        clock.done("pack")
    for name in models:  # a tied embedding table stored once, as the LM head reads it
        lookup_from_transposed(models[name])
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.onnx*"):
        old.unlink()
    weights = write_shared(models, out_dir)
    clock.done("write")
    return _describe(module, spec, out_dir, options, models, weights, (form, form_why), fusions, quantized, clock)


def _trace_programs(module, spec, options: ExportOptions, form: str | None,
                    verbose: bool) -> tuple[dict[str, onnx.ModelProto], dict[str, dict]]:
    """``({file: graph}, {program: fusions})`` for the step program and, where the module has them, the
    last-token and decode programs."""
    # an ONNX graph's batch is a symbolic dimension whatever its bound: traced as a range of at least 1..2 (torch.export
    # has no range 1..1); the manifest's max_batch is the bound the runtime holds a session to
    batch = max(options.max_batch, 2)
    models, fusions = {}, {}
    flat = FlatStep(module).eval()
    models[MODEL_FILE], fusions["step"] = _trace(flat, flat.example_inputs(2), spec.input_names(), spec.output_names(),
                                                 flat.dynamic_shapes(batch), verbose, contrib=options.contrib_ops,
                                                 cache=options.trace_cache)
    if has_step_last(module):
        last = FlatStepLast(module).eval()
        models[LAST_FILE], fusions["step_last"] = _trace(last, last.example_inputs(2), spec.input_names(),
                                                         spec.output_names(), last.dynamic_shapes(batch), verbose,
                                                         contrib=options.contrib_ops, cache=options.trace_cache)
    if has_decode(module):
        dec = FlatDecode(module, form).eval()
        whole = dec.spec.cache_output == "whole"
        models[DECODE_FILE], fusions["decode"] = _trace(dec, dec.example_inputs(2), dec.spec.input_names(),
                                                        dec.spec.output_names(), dec.dynamic_shapes(batch), verbose,
                                                        cache_attention_translation() if whole else None,
                                                        contrib=options.contrib_ops, cache=options.trace_cache)
    return models, fusions


def _describe(module, spec, out_dir: Path, options: ExportOptions, models: dict, weights: dict, decode_form: tuple,
              fusions: dict, quantized: int, clock: StageClock) -> Manifest:
    """The manifest of the written programs."""
    form, form_why = decode_form
    quantize, block_size = options.quantize, options.block_size
    files = {"program": MODEL_FILE, "weights": weights["file"]}
    file_keys = {MODEL_FILE: "program", DECODE_FILE: "decode_program", LAST_FILE: "last_program"}
    program = {"format": "onnx", "file": "program"}
    decode = None
    if DECODE_FILE in models:
        files["decode_program"] = DECODE_FILE
        decode = {"format": "onnx", "file": "decode_program"}
    if LAST_FILE in models:
        files["last_program"] = LAST_FILE
    return build_manifest(
        module, spec, backend="onnxruntime", program=program, files=files, decode_program=decode,
        decode_form=form, embedding_lookup=describe_onnx_lookup(models[MODEL_FILE]),  # what the token lookup reads
        last_program={"format": "onnx", "file": "last_program"} if LAST_FILE in models else None,
        directory=out_dir, max_batch=options.max_batch, quantization=quantize,
        shared_weights={"file": "weights", "graphs": {file_keys[g]: t for g, t in weights["graphs"].items()}},
        exporter={"path": "torch.onnx.export(dynamo=True) + onnxscript optimizer + exporters.onnx_fusions"
                          + (" + exporters.onnx_skip_norm + exporters.onnx_packed" if options.contrib_ops else ""),
                  "opset": FUSED_OPSET, "fusions": fusions, "attention_rows": options.attention_rows,
                  "ops": options.ops,
                  "contrib_ops": sorted({f"{n.domain}::{n.op_type}" for m in models.values() for n in m.graph.node
                                         if n.domain not in ("", "ai.onnx")}),
                  **({"decode_form": {"form": form, "why": form_why}} if form else {}),
                  "shared_weights": {k: v for k, v in weights.items() if k != "graphs"},
                  "export_seconds": clock.total, "stage_seconds": clock.seconds, "quantized_nodes": quantized,
                  **({"int4_block_size": block_size,
                      "quantization_scheme": "onnxruntime MatMulNBitsQuantizer: 4-bit asymmetric block-wise "
                                             "weights (MatMulNBits), float32 activations, nn.Linear MatMuls; "
                                             "the embedding lookup's table int8 (embedding_lookup)"}
                     if quantize == "int4" else {})})
