"""ExecuTorch export of the segment step: ``.pte`` with the XNNPACK delegate (or portable kernels), optional int8.

torch.export of ``FlatStep`` (batch dynamic up to ``max_batch``, as ExecuTorch plans memory for an upper
bound; ``max_batch=1`` gives a static batch-1 program, the least memory) -> ``to_edge_transform_and_lower`` (XNNPACK partitioner, or none for the portable kernels) ->
``to_executorch`` -> ``out_dir/model.pte``, each method lowered in a process of its own where there are cores for
it, and the programs merged into one (``exporters.executorch_lower``). A ``.pte`` carries no I/O names: the program's inputs are
``(input_ids, *state)`` and its outputs ``(logits, *new_state)`` in the manifest's positional order.

Before partitioning, one graph pass (``canonicalize_dynamic_shapes``) rewrites what the dynamic batch makes
of reshapes: a ``view_copy`` whose size names the symbolic batch becomes a ``-1`` view (XNNPACK refuses
symbolic sizes but takes one inferred dim), and the identity ``expand_copy`` that ``matmul`` adds before
``bmm`` is dropped. Both are exact. What stays outside XNNPACK is reported in the manifest's ``exporter``
entry (``delegate_partitions``, ``non_delegated_ops``).

``quantize="int8"``: XNNPACK's 8-bit scheme through the PT2E flow (``XNNPACKQuantizer``, dynamic per-tensor
int8 activations, symmetric per-channel int8 weights) on the ``nn.Linear`` modules only. The activation x
activation matmuls (attention scores, memory read and write) and the state stay float32.

``quantize="int4"``: 8da4w (int8 dynamic activations, int4 group-wise weights, groups of ``block_size``)
through torchao's ``quantize_`` on the ``nn.Linear`` modules (``exporters.quantize``), lowered to XNNPACK; the
embedding lookup's table int8 with a scale per row, run by ExecuTorch's ``embedding_byte`` kernel
(``exporters.quantize_lookup``).
"""
from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from infini_export.protocol import FlatDecode, FlatStep, FlatStepLast, check_protocol, has_decode, has_step_last
from runtime.atomic import atomic_write
from runtime.manifest import Manifest

from .artifact import build_manifest
from .clock import StageClock
from .executorch_lower import default_jobs, lower_methods
from .memory_plan import measure_memory
from .options import DECODE_CHUNK, ExportOptions
from .quantize import check_int4_shapes, quantize_linears_8da4w
from .quantize_lookup import PTE_LOOKUP_OP, describe_pte_lookup, fuse_int8_lookup, quantize_embeddings_int8

MODEL_FILE = "model.pte"
METHOD = "forward"
DECODE_METHOD = "decode"
LAST_METHOD = "step_last"

log = logging.getLogger(__name__)
_SCHEMES = {"int8": "XNNPACKQuantizer PT2E: int8 dynamic per-tensor activations, int8 symmetric per-channel "
                    "weights, nn.Linear only",
            "int4": "torchao quantize_(Int8DynamicActivationIntxWeightConfig(int4, PerGroup)): 8da4w, int8 dynamic "
                    "per-token activations, int4 symmetric group-wise weights, nn.Linear; the embedding lookup's "
                    "table int8 per row (embedding_byte, embedding_lookup)"}

# ---- graph pass ------------------------------------------------------------------------------
def canonicalize_dynamic_shapes(gm: torch.fx.GraphModule):
    """Exact rewrites of the edge graph that let XNNPACK take reshapes under a dynamic batch.

    - ``view_copy(x, [s0, 16, 2, 16])`` with exactly one symbolic entry -> ``view_copy(x, [-1, 16, 2, 16])``;
    - ``expand_copy(x, shape)`` to x's own shape (``matmul`` emits one before every ``bmm``) -> ``x``;
    - ``alias_copy(x)`` (a full slice of a buffer) -> ``x`` unless it feeds a graph output.
    """
    from executorch.exir.dialects._ops import ops as exir_ops
    from torch.fx.passes.infra.pass_base import PassResult

    view = exir_ops.edge.aten.view_copy.default
    expand = exir_ops.edge.aten.expand_copy.default
    alias = exir_ops.edge.aten.alias_copy.default
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target == view:
            size = list(node.args[1])
            symbolic = [i for i, d in enumerate(size) if not isinstance(d, int)]
            if len(symbolic) == 1 and all(d > 0 for d in size if isinstance(d, int)):
                size[symbolic[0]] = -1
                node.args = (node.args[0], size, *node.args[2:])
                changed = True
        elif node.target in (expand, alias):
            src = node.args[0]
            val, src_val = node.meta.get("val"), getattr(src, "meta", {}).get("val")
            if val is None or src_val is None or any(u.op == "output" for u in node.users):
                continue
            # compared as text: same symbols, same sizes, and no guard is added to the shape environment
            if [str(d) for d in val.shape] == [str(d) for d in src_val.shape] and val.dtype == src_val.dtype:
                node.replace_all_uses_with(src)
                gm.graph.erase_node(node)
                changed = True
    if changed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return PassResult(gm, changed)


# ---- partitioner -----------------------------------------------------------------------------
def xnnpack_partitioner():
    """ExecuTorch's ``XnnpackPartitioner``, with its partition merging run to a fixed point.

    The stock merge is one greedy pass over pairs of candidate partitions: two partitions that cannot
    merge while a third still sits between them are not tried again after the third has joined one of
    them. With dynamically quantized linears (node groups spanning choose_qparams -> linear) that leaves
    the int8 graph in ~5 partitions with nothing outside them; repeating the pass until nothing merges
    gives one. Every merge is still cycle-checked by the stock code. Should the private hooks used here
    change, the stock partitioning is used.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    class MergingXnnpackPartitioner(XnnpackPartitioner):
        def generate_partitions(self, ep):
            if not self.per_op_mode:
                try:
                    return _merged_partitions(ep.graph_module, self.get_matched_nodes_from_configs(ep))
                except (AttributeError, TypeError, ImportError) as exc:  # private API moved: stock behaviour
                    log.warning("iterated partition merging unavailable (%s); using the stock partitioner", exc)
            return super().generate_partitions(ep)

    return MergingXnnpackPartitioner()


def _merged_partitions(graph_module: torch.fx.GraphModule, node_groups: list) -> list:
    """``generate_grouped_partitions_from_list_of_nodes`` with the merge pass repeated until it stops merging."""
    from executorch.exir.backend.canonical_partitioners.group_partitioner import GroupBasedPartitioner
    from torch.fx.passes.operator_support import OperatorSupportBase

    class IterativeGroupPartitioner(GroupBasedPartitioner):
        def _merge_partitions(self, partitions_by_id, *args, **kwargs):
            while True:
                before = len(partitions_by_id)
                super()._merge_partitions(partitions_by_id, *args, **kwargs)
                if len(partitions_by_id) == before:
                    return

    class Matched(OperatorSupportBase):
        def is_node_supported(self, submodules, node: torch.fx.Node) -> bool:
            return node.meta.get("match", False)

    for group in node_groups:
        for node in group:
            node.meta["match"] = True
    try:
        partitions = IterativeGroupPartitioner(graph_module, Matched(), node_groups=node_groups,
                                               allows_single_node_partition=True).propose_partitions()
    finally:
        for group in node_groups:
            for node in group:
                node.meta.pop("match", None)
    return partitions


# ---- tied weights ----------------------------------------------------------------------------
def untie_linear_from_embedding(module: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``module`` in which each ``nn.Linear`` that shares its weight with an ``nn.Embedding``
    (a tied LM head) has its own copy of it; ``module`` itself is not touched.

    The XNNPACK partitioner will not put a linear whose weight the (non-delegated) embedding also reads
    in the main partition: a tied head costs a second partition. The ``.pte`` holds the two copies anyway
    (XNNPACK packs the linear's weight into its own blob), so untying costs no size. Same numbers.
    """
    embedded = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear) and id(m.weight) in embedded]
    if not names:
        return module, []
    twin = copy.deepcopy(module)  # deepcopy keeps the tie; it is broken in the copy only
    for name in names:
        lin = twin.get_submodule(name)
        lin.weight = nn.Parameter(lin.weight.detach().clone(), requires_grad=False)
    return twin, names


# ---- quantization ----------------------------------------------------------------------------
def _flat_shapes(dynamic_shapes: dict | None):
    """The per-argument dynamic shapes of a module's ``forward`` keyword dict, as the flat tuple of its graph."""
    if dynamic_shapes is None:
        return None
    return tuple(x for v in dynamic_shapes.values() for x in (v if isinstance(v, tuple) else (v,)))


def _quantize_int8(flat: nn.Module, example: tuple, dynamic_shapes: dict | None):
    """PT2E dynamic int8 (per-channel weights) of the nn.Linear layers.

    Returns the re-exported program and ``{op: count}`` of the operators that now consume dequantized
    (int8) inputs: the linear layers, and nothing else.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    # nn.Linear only: the dynamic config annotates aten.linear alone, and this keeps any functional
    # linear a model may use for something else (a reduction, a rotation) in float32
    quantizer = XNNPACKQuantizer().set_module_type(nn.Linear, config)
    captured = torch.export.export(flat, example, dynamic_shapes=dynamic_shapes, strict=False).module()
    prepared = prepare_pt2e(captured, quantizer)
    prepared(*example)  # dynamic activations need no calibration; one run checks the prepared graph
    converted = convert_pt2e(prepared)
    consumers: Counter = Counter()
    for node in converted.graph.nodes:
        if node.op != "call_function" or "quantize" in str(node.target):
            continue
        if any(isinstance(a, torch.fx.Node) and "dequantize" in str(a.target) for a in node.all_input_nodes):
            consumers[getattr(node.target, "__name__", str(node.target))] += 1
    # the graph module takes flat args
    ep = torch.export.export(converted, example, dynamic_shapes=_flat_shapes(dynamic_shapes), strict=False)
    return ep, dict(consumers)


# ---- export ----------------------------------------------------------------------------------
def export_executorch(module: torch.nn.Module, out_dir: str | Path, *, delegate: str = "xnnpack",
                      quantize: str | None = None, max_batch: int = 64, verbose: bool = False,
                      block_size: int | None = None, decode_chunk: int = DECODE_CHUNK,
                      full_logits: bool | None = None, jobs: int | None = None, progress: bool = False) -> Manifest:
    """Export ``module.step`` to ``out_dir/model.pte``; return the manifest (not yet written: ``manifest.write()``).

    ``quantize``: None, ``"int8"`` or ``"int4"`` (8da4w, weight groups of ``block_size``; the shapes are
    checked before anything is written). ``decode_chunk``: the most tokens one ``decode`` call takes (its memory
    is planned for that many; the runtime splits longer chunks). ``full_logits``: also export ``forward``, the
    segment step with all its logits. None (the default): only where a session needs it, i.e. unless the program
    has the last-token method and an XNNPACK ``decode`` method (batch 1), which serve every session call.
    ``jobs``: processes that lower the methods side by side (``exporters.executorch_lower``); None: one per method,
    up to the cores available; 1: all in this process. ``progress``: a bar of the methods lowered, on a terminal.
    """
    options = ExportOptions("executorch", quantize=quantize, block_size=block_size, delegate=delegate,
                            max_batch=max_batch, full_logits=full_logits, jobs=jobs, decode_chunk=decode_chunk)
    if quantize == "int4":
        check_int4_shapes(module, options.block_size)
    return build_executorch(module, check_protocol(module), Path(out_dir), options, verbose, progress)


def build_executorch(module, spec, out_dir: Path, options: ExportOptions, verbose: bool = False,
                     progress: bool = False) -> Manifest:
    """The ExecuTorch build of a module whose protocol was checked (``spec``) with checked ``options``, in stages: plan the methods, prepare the module (untie,
    int4), assemble the methods, ``torch.export`` (+ int8), lower (XNNPACK or portable, a process per method),
    check the methods' I/O, write, describe. Each stage's seconds go into the manifest."""
    clock = StageClock(log, "executorch export")
    plan = _plan(module, options)
    exported_module, untied, int4_linears = _prepare(module, options)
    methods = _assemble(exported_module, spec, options, plan)
    clock.done("prepare")
    programs, quantized = _trace(methods, options.quantize)
    clock.done("torch.export" + (" + int8 quantization" if options.quantize == "int8" else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    lowered, passes = _lower(programs, options, progress, out_dir)
    clock.merge(lowered.stages)
    _check_method_io(methods, lowered)
    atomic_write(out_dir / MODEL_FILE, lambda f: f.write(lowered.buffer))
    clock.done("write")
    report = lowered.reports[METHOD if plan.full_logits else LAST_METHOD]
    summary = (f"executorch export ({options.delegate}{', ' + options.quantize if options.quantize else ''}): "
               f"{report['delegate_partitions']} delegate partition(s); outside the delegate: "
               f"{report['non_delegated_ops'] or 'nothing'}; {clock.total}s")
    log.info(summary)
    if verbose:
        print(summary)
    lookup_kernels = {name: sum(c for op, c in lowered.kernels[name].items() if PTE_LOOKUP_OP in op)
                      for name in programs}
    exporter = _exporter_record(options, lowered, passes, untied, report, list(methods), quantized,
                                len(int4_linears), clock)
    return _describe(module, spec, out_dir, options, methods, lookup_kernels, exporter)


@dataclass(frozen=True)
class _MethodPlan:
    full_logits: bool  # the segment step with all its logits (``forward``)
    with_last: bool  # the last token's logits only (``step_last``)
    with_decode: bool  # the decode program (``decode``)


def _plan(module, options: ExportOptions) -> _MethodPlan:
    """Which methods the program gets. The full-logits method costs a third of the export time and a memory plan
    of its own for (B, N, V) logits (262 MB at N = 2048, V = 32000); a session reads all logits from decode calls
    without it. The decode method of an int8/int4 program needs batch 1 (XNNPACK; the portable kernels have no
    int8 kernels)."""
    with_last = has_step_last(module)
    with_decode = has_decode(module) and (options.max_batch == 1 or options.quantize is None)
    full = options.full_logits
    if full is None:
        full = not (with_last and with_decode and options.max_batch == 1)
    elif not full and not (with_last and with_decode):
        raise ValueError("full_logits=False needs the last-token and decode methods beside it, and this program has "
                         f"{'no' if not with_last else 'a'} last-token and {'no' if not with_decode else 'a'} decode "
                         "method (the decode method of an int8/int4 program needs max_batch=1)")
    return _MethodPlan(full, with_last, with_decode)


def _prepare(module, options: ExportOptions):
    """``(module to export, untied linears, int4 linears)``: the LM head untied from the embedding; with int4,
    torchao's 8da4w on the linears and the lookup's table int8 (before export)."""
    exported_module, untied = untie_linear_from_embedding(module)
    int4_linears: list = []
    if options.quantize == "int4":
        exported_module, int4_linears = quantize_linears_8da4w(exported_module, options.block_size)
        quantize_embeddings_int8(exported_module)  # the LM head is untied above
    return exported_module, untied, int4_linears


def _assemble(exported_module, spec, options: ExportOptions, plan: _MethodPlan) -> dict:
    """``{method: (flat module, example inputs, dynamic shapes, spec)}``. Batch 1 only gives a static program
    (ExecuTorch plans every buffer, and XNNPACK sizes its tensors, for the largest batch allowed); else the batch is
    dynamic in [1, max]. The methods share one program, so the weights are stored once."""
    B = options.max_batch
    flat = FlatStep(exported_module).eval()
    example = flat.example_inputs(1 if B == 1 else 2)
    dynamic = None if B == 1 else flat.dynamic_shapes(B)
    methods = {METHOD: (flat, example, dynamic, spec)} if plan.full_logits else {}
    if plan.with_last:  # its own memory plan, without the (B, N, V) buffer
        methods[LAST_METHOD] = (FlatStepLast(exported_module).eval(), example, dynamic, spec)
    if plan.with_decode:
        dec = FlatDecode(exported_module).eval()
        methods[DECODE_METHOD] = (dec, dec.example_inputs(1 if B == 1 else 2),
                                  dec.dynamic_shapes(B, options.decode_chunk), dec.spec)
    return methods


def _trace(methods: dict, quantize: str | None) -> tuple[dict, dict]:
    """``torch.export`` of every method (with int8: through the PT2E quantizer); ``(programs, quantized ops)``."""
    quantized: dict = {}
    programs = {}
    with torch.no_grad():
        for name, (mod, ex, dyn, _) in methods.items():
            if quantize == "int8":
                programs[name], counts = _quantize_int8(mod, ex, dyn)
                quantized = quantized or counts
            else:
                programs[name] = torch.export.export(mod, ex, dynamic_shapes=dyn, strict=False)
    return programs, quantized


def _lower(programs: dict, options: ExportOptions, progress: bool, workdir: Path):
    """Every method through ``to_edge_transform_and_lower`` and ``to_executorch`` (``executorch_lower``). XNNPACK
    takes the decode method at a static batch only (with a dynamic one it refuses a partition whose output is also
    its input); the decode method reads its inputs where the caller holds them (not memory-planned), so a call does
    not copy the whole K/V cache (150 MB at 110M / N = 2048) into the method's arena first."""
    partitioners = {name: [xnnpack_partitioner()]
                    if options.delegate == "xnnpack" and (name != DECODE_METHOD or options.max_batch == 1) else []
                    for name in programs}
    passes = [canonicalize_dynamic_shapes] + ([fuse_int8_lookup] if options.quantize == "int4" else [])
    with torch.no_grad():
        lowered = lower_methods(programs, partitioners, passes, {name: name != DECODE_METHOD for name in programs},
                                jobs=default_jobs(len(programs)) if options.jobs is None else options.jobs,
                                progress=progress, workdir=workdir)
    return lowered, passes


def _check_method_io(methods: dict, lowered) -> None:
    for name, (_, _, _, mspec) in methods.items():
        n_in, n_out = lowered.io[name]
        if (n_in, n_out) != (len(mspec.input_names()), len(mspec.output_names())):
            raise RuntimeError(f"the ExecuTorch method {name!r} has {n_in} inputs and {n_out} outputs, the module "
                               f"has {len(mspec.input_names())} and {len(mspec.output_names())} (an in-place state "
                               "update adds outputs: updates must be out of place)")


def _exporter_record(options: ExportOptions, lowered, passes, untied, report, methods, quantized, n_int4,
                     clock: StageClock) -> dict:
    """The manifest's ``exporter`` entry: how the program was made and what each stage cost."""
    from executorch import version as et_version

    q = options.quantize
    return {"path": "torch.export -> to_edge_transform_and_lower"
                    + ("(XnnpackPartitioner, merged to a fixed point)" if options.delegate == "xnnpack"
                       else "(portable kernels)")
                    + " -> to_executorch"
                    + (" (a process per method, the programs merged)" if lowered.processes > 1 else ""),
            "executorch": getattr(et_version, "__version__", None),
            "transform_passes": [p.__name__ for p in passes], "untied_weights": untied, **report,
            "methods": methods, "decode_delegation": lowered.reports.get(DECODE_METHOD),
            "step_last_delegation": lowered.reports.get(LAST_METHOD),
            "quantized_linears": n_int4 if q == "int4" else quantized.get("linear.default", 0),
            "quantized_op_types": quantized, "decode_chunk": options.decode_chunk,
            "quantization_scheme": _SCHEMES.get(q), **({"int4_block_size": options.block_size} if q == "int4" else {}),
            "export_seconds": clock.total, "stage_seconds": clock.seconds,
            "lowering": {"processes": lowered.processes, "method_seconds": lowered.method_seconds,
                         "peak_mb": lowered.peak_mb}}


def _describe(module, spec, out_dir: Path, options: ExportOptions, methods: dict, lookup_kernels: dict,
              exporter: dict) -> Manifest:
    """The manifest of the written program: its methods, planned memory and lookup table."""
    def ref(method):
        return {"format": "pte", "file": "program", "method": method, "delegate": options.delegate}
    return build_manifest(
        module, spec, backend="executorch", memory=measure_memory(out_dir / MODEL_FILE),  # the planned memory
        embedding_lookup=describe_pte_lookup(module, lookup_kernels),
        decode_max_chunk=methods[DECODE_METHOD][0].max_chunk(options.decode_chunk) if DECODE_METHOD in methods
        else None,
        program=ref(METHOD if METHOD in methods else None), files={"program": MODEL_FILE}, directory=out_dir,
        max_batch=options.max_batch, quantization=options.quantize,
        decode_program=ref(DECODE_METHOD) if DECODE_METHOD in methods else None,
        last_program=ref(LAST_METHOD) if LAST_METHOD in methods else None, exporter=exporter)
