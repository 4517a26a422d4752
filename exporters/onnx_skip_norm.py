"""The residual Add and the RMSNorm after it as one onnxruntime ``com.microsoft::SkipSimplifiedLayerNormalization``.

Every block reads its residual stream twice: ``s = x + h`` is the next residual, and ``RMSNorm(s)`` feeds the next
sub-layer. After ``exporters.onnx_fusions`` the norm is one ``RMSNormalization``, so each of these is two nodes:

    s = Add(x, h)                                  # (B, T, D)
    y = RMSNormalization(s, w, axis=-1, epsilon=e)  # (B, T, D)

onnxruntime's contrib op computes both in one kernel (the op onnxruntime's own transformer optimizer and
onnxruntime-genai's model builder emit for a Llama):

    y, _, _, s = SkipSimplifiedLayerNormalization(x, h, w, epsilon=e)   # outputs: output, mean, inv_std_var,
                                                                        # input_skip_bias_sum

which is the same float32 sum and the same normalization of the last axis. onnxruntime's own fusion
(``onnxruntime.transformers.fusion_skiplayernorm``) looks for its ``SimplifiedLayerNormalization``, not opset 23's
``RMSNormalization``, and needs its symbolic shape inference over the whole graph; this rule matches the export's
own form with onnxscript's rewriter instead. It fires only where the op's kernel takes the shapes: a float32 3-D
``x`` and ``h`` of the same (possibly symbolic) shape, a norm over the last axis in float32 and a 1-D weight of the
hidden size. Contrib ops: used by the ``"onnxruntime"`` export only, never the portable one.
"""
from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from .onnx_fusions import CONTRIB_DOMAIN as CONTRIB


def _attr(node: ir.Node, name: str, default):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _same_shape(a: ir.Value, b: ir.Value) -> bool:
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return False
    for x, y in zip(a.shape, b.shape):
        if isinstance(x, int) != isinstance(y, int):
            return False
        if isinstance(x, int) and x != y:
            return False
        if not isinstance(x, int) and (x.value is None or x.value != y.value):  # symbolic: equal names only
            return False
    return True


class SkipRMSNorm(pattern.RewriteRuleClassBase):
    """``s = Add(x, h); y = RMSNormalization(s, w)`` -> ``y, _, _, s = SkipSimplifiedLayerNormalization(x, h, w)``."""

    def pattern(self, op, x, h, weight):
        s = op.Add(x, h)
        y = op.RMSNormalization(s, weight, _allow_other_attributes=True, _outputs=["norm_out"])
        return y, s

    def check(self, op, x, h, weight, norm_out, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        norm = norm_out.producer()
        if x.dtype != ir.DataType.FLOAT or h.dtype != ir.DataType.FLOAT or weight.dtype != ir.DataType.FLOAT:
            return result.fail("not float32", x)
        if not _same_shape(x, h) or len(x.shape) != 3 or not isinstance(x.shape[-1], int):
            return result.fail("the two summands are not 3-D of one shape with a known last axis", x)
        D = x.shape[-1]
        if weight.shape is None or weight.shape.dims != (D,):
            return result.fail("the weight is not 1-D of the hidden size", weight)
        if _attr(norm, "axis", -1) not in (-1, 2):
            return result.fail("the norm is not over the last axis", norm_out)
        if _attr(norm, "stash_type", ir.DataType.FLOAT.value) != ir.DataType.FLOAT.value:
            return result.fail("the norm is not computed in float32", norm_out)
        if len(norm.inputs) > 2 and norm.inputs[2] is not None:
            return result.fail("the norm has a bias input", norm_out)
        return result

    def rewrite(self, op, x, h, weight, norm_out, **_):
        eps = float(_attr(norm_out.producer(), "epsilon", 1e-5))
        y, _, _, s = op.SkipSimplifiedLayerNormalization(x, h, weight, epsilon=eps, _domain=CONTRIB, _version=1,
                                                         _outputs=4)
        return y, s


RULES = pattern.RewriteRuleSet([SkipRMSNorm.rule()])


def fuse_skip_norms(model: ir.Model) -> int:
    """Rewrite every residual Add + ``RMSNormalization`` pair of ``model`` in place; returns how many."""
    count = RULES.apply_to_model(model)
    for node in model.graph:  # the mean and inverse-deviation outputs nothing reads: left out (no name)
        if node.op_type == "SkipSimplifiedLayerNormalization" and node.domain == CONTRIB:
            for value in node.outputs[1:3]:
                if not value.uses() and not value.is_graph_output():
                    value.name = ""
    return count
