"""Graph rewrites for the ONNX export: the model's ExecuTorch-friendly formulations back to fused ONNX ops.

The model writes RMSNorm's mean of squares as a linear layer with a constant ``1/D`` column (so the XNNPACK
delegate takes the whole step in one partition, see ``infini_export/model.py``). In ONNX that is 7 nodes per
norm; opset 23's ``RMSNormalization`` does the same in one kernel. The rewrite uses onnxscript's pattern
rewriter and checks the constant before it fires: only a column of exactly ``1/D`` is a mean. infini-transformer-
pytorch's RMSNorm (``F.normalize(x) * sqrt(D) * gamma``, 6 nodes) becomes the same op, checked the same way (a norm
over the last axis, a scale of sqrt(D)).
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript.rewriter import pattern

FUSED_OPSET = 23  # RMSNormalization


def _constant(value: ir.Value) -> np.ndarray | None:
    const = value.const_value if value is not None else None
    return None if const is None else const.numpy()


class MeanByMatMulRMSNorm(pattern.RewriteRuleClassBase):
    """``x * Reciprocal(Sqrt(MatMul(x * x, 1/D column) + eps)) * w`` -> ``RMSNormalization(x, w)``."""

    def pattern(self, op, x, mean_col, eps, weight):
        mean_sq = op.MatMul(op.Mul(x, x), mean_col)  # (..., D) @ (D, 1) -> (..., 1)
        inv_rms = op.Reciprocal(op.Sqrt(op.Add(mean_sq, eps)))  # (..., 1)
        return op.Mul(op.Mul(x, inv_rms), weight)  # (..., D)

    def check(self, op, x, mean_col, eps, weight, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        col, e, w = _constant(mean_col), _constant(eps), _constant(weight)
        if col is None or e is None or e.size != 1:
            return result.fail("mean column or epsilon is not a constant")
        if col.ndim != 2 or col.shape[1] != 1 or not np.all(col == np.float32(1.0 / col.shape[0])):
            return result.fail("the MatMul constant is not a (D, 1) column of 1/D", mean_col)
        if x.dtype != ir.DataType.FLOAT or (w is not None and w.shape != (col.shape[0],)):
            return result.fail("not a float32 norm over the last axis", x)
        return result

    def rewrite(self, op, x, mean_col, eps, weight, **_):
        return op.RMSNormalization(x, weight, axis=-1, epsilon=float(_constant(eps).reshape(())),
                                   stash_type=ir.DataType.FLOAT.value)


class NormalizeRMSNorm(pattern.RewriteRuleClassBase):
    """``x / Expand(Clip(ReduceL2(x, [-1]), min=e)) * sqrt(D) * w`` (``F.normalize(x, dim=-1) * sqrt(D) * w``, the
    RMSNorm of infini-transformer-pytorch) -> ``RMSNormalization(x, w, epsilon=e^2 / D)``.

    ``x / max(|x|, e) * sqrt(D) = x / max(rms(x), e / sqrt(D))``; RMSNormalization's ``x / sqrt(mean(x^2) + e^2 / D)``
    is the same up to rounding wherever ``|x| >> e`` (relative difference ``e^2 / (2 |x|^2)``) and 0 at x = 0."""

    def pattern(self, op, x, axes, eps, shape, scale, weight):
        norm = op.ReduceL2(x, axes, keepdims=1, _allow_other_attributes=True)  # (..., 1)
        return op.Mul(op.Mul(op.Div(x, op.Expand(op.Clip(norm, eps), shape)), scale), weight)  # (..., D)

    def check(self, op, x, axes, eps, shape, scale, weight, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        ax, e, sc, w = _constant(axes), _constant(eps), _constant(scale), _constant(weight)
        if ax is None or e is None or sc is None or e.size != 1 or sc.size != 1:
            return result.fail("axes, minimum or scale is not a constant")
        if x.dtype != ir.DataType.FLOAT or x.shape is None or not isinstance(x.shape[-1], int):
            return result.fail("not a float32 input with a known last dimension", x)
        D, rank = x.shape[-1], len(x.shape)
        if ax.reshape(-1).tolist() not in ([-1], [rank - 1]):
            return result.fail("the norm is not over the last axis", axes)
        if not np.isclose(float(sc.reshape(())), np.sqrt(D), rtol=1e-6, atol=0.0):
            return result.fail(f"the scale is not sqrt({D})", scale)
        if w is not None and w.shape != (D,):
            return result.fail("the weight is not one value per feature", weight)
        if not 0.0 <= float(e.reshape(())) < 1e-6:
            return result.fail("the norm's minimum is not a small epsilon", eps)
        return result

    def rewrite(self, op, x, axes, eps, shape, scale, weight, **_):
        D = x.shape[-1]
        return op.RMSNormalization(x, weight, axis=-1, epsilon=float(_constant(eps).reshape(())) ** 2 / D,
                                   stash_type=ir.DataType.FLOAT.value)


RULES = pattern.RewriteRuleSet([MeanByMatMulRMSNorm.rule(), NormalizeRMSNorm.rule()])


def fuse(model: ir.Model) -> dict[str, int]:
    """Apply the rewrites in place; returns how many nodes each produced. Needs opset >= 23."""
    if model.opset_imports.get("", 0) < FUSED_OPSET:
        raise ValueError(f"RMSNormalization needs opset {FUSED_OPSET}; the model imports "
                         f"{model.opset_imports.get('', 0)}")
    counts = {"RMSNormalization": RULES.apply_to_model(model)}
    RemoveUnusedNodesPass()(model)  # the mean columns and epsilons the fused nodes no longer read
    return counts


# ---- the decode program's local attention: onnxruntime's GroupQueryAttention ---------------------------------------
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
    return OpSchema("GroupQueryAttention", "com.microsoft", 1, inputs=ins, outputs=outs,
                    type_constraints=[("T", ["tensor(float)"], ""), ("M", ["tensor(int32)"], "")], attributes=attrs)


def cache_attention_translation():
    """``{infini::cache_attention / infini::packed_cache_attention (the lucidrains adapter's): their ONNX}`` for
    ``torch.onnx.export(custom_translation_table=...)``: one ``GroupQueryAttention`` per layer (RoPE inside, over the
    ``position + T`` valid rows; the present caches are the past ones with the T new rows written at ``position``,
    in place when a runtime binds them to the same buffers)."""
    import torch
    from onnxscript import opset23 as op
    from onnxscript.values import Op, Opset

    import infini_export.adapters.lucidrains  # noqa: F401  (registers the packed op)
    import infini_export.model  # noqa: F401  (registers the op)

    gqa = Op(Opset("com.microsoft", 1), "GroupQueryAttention", _gqa_schema())

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
