"""The decode program's local attention as onnxruntime's ``com.microsoft::GroupQueryAttention``.

A module's fused decode form (``decode_spec("fused")``) writes each layer's attention over its K/V cache as one
``infini::cache_attention`` (or the adapter's ``infini::packed_cache_attention``) op; ``cache_attention_translation``
maps it to one ``GroupQueryAttention`` (RoPE inside, the valid cache rows only, the cache updated in place).
``choose_decode_form`` decides, once per export, whether that form applies to a model; where it does not (the op
takes head sizes that are multiples of 16 only), the decode program is exported in the portable ``"rows"`` form.
"""
from __future__ import annotations

from .onnx_fusions import CONTRIB_DOMAIN

GQA_HEAD_MULTIPLE = 16  # onnxruntime's GroupQueryAttention: "head_size shall be a multiple of 16"


def _head_size(module) -> int:
    spec = module.decode_spec()
    return int(spec.cache[0].shape[-1])  # (batch, heads, N, head_size)


def choose_decode_form(module, ops: str = "onnxruntime") -> tuple[str, str]:
    """``(form, why)``: ``"fused"`` where onnxruntime's ops are allowed (``ops``), the module takes it and
    GroupQueryAttention accepts its head size, else ``"rows"``, with the reason in words (recorded in the manifest
    and shown by ``info``)."""
    if ops == "portable":
        return "rows", "portable export: standard ONNX ops only (no GroupQueryAttention)"
    if "fused" not in module.decode_forms():
        return "rows", "the model has no fused decode form for these weights (float32 weights only)"
    head = _head_size(module)
    if head % GQA_HEAD_MULTIPLE:
        return "rows", (f"head size {head} is not a multiple of {GQA_HEAD_MULTIPLE}, which onnxruntime's "
                        "GroupQueryAttention needs: the decode program's attention is written in standard ops")
    return "fused", f"onnxruntime GroupQueryAttention (head size {head}), the cache written in place"


def _gqa_schema():
    """onnxruntime's ``com.microsoft::GroupQueryAttention`` (the inputs and attributes used here), for onnxscript:
    the contrib ops' schemas live in onnxruntime, not in the ``onnx`` package."""
    from onnx.defs import OpSchema

    P, A, opt = OpSchema.FormalParameter, OpSchema.Attribute, OpSchema.FormalParameterOption.Optional
    ins = [P("query", "T"), P("key", "T", param_option=opt), P("value", "T", param_option=opt),
           P("past_key", "T", param_option=opt), P("past_value", "T", param_option=opt), P("seqlens_k", "M"),
           P("total_sequence_length", "M"), P("cos_cache", "T", param_option=opt),
           P("sin_cache", "T", param_option=opt)]
    outs = [P("output", "T"), P("present_key", "T"), P("present_value", "T")]
    attrs = [A("num_heads", OpSchema.AttrType.INT, ""), A("kv_num_heads", OpSchema.AttrType.INT, ""),
             A("scale", OpSchema.AttrType.FLOAT, ""), A("do_rotary", OpSchema.AttrType.INT, ""),
             A("rotary_interleaved", OpSchema.AttrType.INT, "")]
    return OpSchema("GroupQueryAttention", CONTRIB_DOMAIN, 1, inputs=ins, outputs=outs,
                    type_constraints=[("T", ["tensor(float)"], ""), ("M", ["tensor(int32)"], "")], attributes=attrs)


def cache_attention_translation():
    """``{infini::cache_attention / infini::packed_cache_attention (the lucidrains adapter's): their ONNX}`` for
    ``torch.onnx.export(custom_translation_table=...)``: one ``GroupQueryAttention`` per layer (RoPE inside, over the
    ``position + T`` valid rows; the present caches are the past ones with the T new rows written at ``position``,
    in place when a runtime binds them to the same buffers)."""
    import torch
    from onnxscript import opset23 as op
    from onnxscript.values import Op, Opset

    import infini_export.attention  # noqa: F401  (registers both ops)

    gqa = Op(Opset(CONTRIB_DOMAIN, 1), "GroupQueryAttention", _gqa_schema())

    def total_length(last):  # () int32: p + T
        return op.Add(op.ReduceMax(last, keepdims=0), op.CastLike(op.Constant(value_int=1), last))

    def cache_attention(q, k, v, key_cache, value_cache, last, cos, sin):
        heads, dh = key_cache.shape[1], key_cache.shape[3]
        start, end, axis = op.Constant(value_ints=[0]), op.Constant(value_ints=[dh // 2]), op.Constant(value_ints=[1])
        cos_half, sin_half = op.Slice(cos, start, end, axis), op.Slice(sin, start, end, axis)  # (N, dh/2)
        return gqa(q, k, v, key_cache, value_cache, last, total_length(last), cos_half, sin_half, num_heads=heads,
                   kv_num_heads=heads, scale=float(dh) ** -0.5, do_rotary=1, rotary_interleaved=0)

    def packed_cache_attention(qkv, key_cache, value_cache, last, cos, sin, scale: float, interleaved: bool):
        heads = key_cache.shape[1]  # q, k, v packed in one input: key and value left out
        return gqa(qkv, None, None, key_cache, value_cache, last, total_length(last), cos, sin, num_heads=heads,
                   kv_num_heads=heads, scale=float(scale), do_rotary=1, rotary_interleaved=int(interleaved))

    return {torch.ops.infini.cache_attention.default: cache_attention,
            torch.ops.infini.packed_cache_attention.default: packed_cache_attention}
