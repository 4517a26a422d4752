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
CONTRIB_DOMAIN = "com.microsoft"  # onnxruntime's contrib ops (the "onnxruntime" export only)


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
