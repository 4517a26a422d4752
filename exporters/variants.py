"""Every export variant under one naming scheme: ``{format}[-{kernels}]-{precision}[-b{int4 block}]``.

``onnx-fp32``, ``onnx-int8``, ``onnx-int4`` (int4 with the default block), ``onnx-int4-b64``,
``executorch-xnnpack-fp32``, ``executorch-xnnpack-int4-b128``, ``executorch-portable-fp32`` (ExecuTorch's
portable kernels, no delegate). The benchmarks, ``scripts/parity_matrix.py``, ``scripts/real_size.py`` and the
tests all take their variants from here. Importing this module imports neither torch nor an exporter.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("fp32", "int8", "int4")
KERNELS = {"xnnpack": "xnnpack", "none": "portable"}  # ExecuTorch delegate -> its name in a variant


class UnknownVariantError(ValueError):
    """A variant name that is not in the registry."""


@dataclass(frozen=True)
class Variant:
    """One way to export a model: format, precision, ExecuTorch delegate and int4 block size."""

    format: str  # "onnx" or "executorch"
    precision: str = "fp32"  # "fp32", "int8" or "int4"
    delegate: str = "xnnpack"  # ExecuTorch only: "xnnpack" or "none" (portable kernels)
    block_size: int | None = None  # int4 only: None is the exporter's default block

    @property
    def name(self) -> str:
        parts = [self.format]
        if self.format == "executorch":
            parts.append(KERNELS[self.delegate])
        parts.append(self.precision)
        if self.block_size is not None:
            parts.append(f"b{self.block_size}")
        return "-".join(parts)

    @property
    def quantize(self) -> str | None:
        """The exporters' ``quantize`` argument: None for float32."""
        return None if self.precision == "fp32" else self.precision

    @property
    def runtime(self) -> str:
        """The runtime backend that runs this variant's artifact."""
        return "onnxruntime" if self.format == "onnx" else "executorch"

    def export_options(self) -> dict:
        """Keyword arguments of ``exporters.pipeline.export_artifact`` (after the format) for this variant."""
        opts = {"quantize": self.quantize, "delegate": self.delegate}
        if self.block_size is not None:
            opts["block_size"] = self.block_size
        return opts

    def export(self, model, out_dir: str | Path, **kwargs):
        """``export_artifact(model, out_dir, format, **options, **kwargs)``: (manifest, parity report)."""
        from .pipeline import export_artifact

        return export_artifact(model, out_dir, self.format, **self.export_options(), **kwargs)


_ALL = (
    Variant("onnx"), Variant("onnx", "int8"), Variant("onnx", "int4"),
    Variant("onnx", "int4", block_size=16), Variant("onnx", "int4", block_size=64),
    Variant("onnx", "int4", block_size=128),
    Variant("executorch"), Variant("executorch", "int8"), Variant("executorch", "int4"),
    Variant("executorch", "int4", block_size=128), Variant("executorch", delegate="none"),
)
VARIANTS: dict[str, Variant] = {v.name: v for v in _ALL}
# the five measured everywhere: both formats in float32 and int8, and ExecuTorch's portable kernels
MAIN = ("onnx-fp32", "onnx-int8", "executorch-xnnpack-fp32", "executorch-xnnpack-int8", "executorch-portable-fp32")
# earlier spellings, still accepted on command lines
ALIASES = {"ort-fp32": "onnx-fp32", "ort-int8": "onnx-int8", "et-xnnpack-fp32": "executorch-xnnpack-fp32",
           "et-xnnpack-int8": "executorch-xnnpack-int8", "et-portable": "executorch-portable-fp32",
           "executorch-fp32": "executorch-xnnpack-fp32", "executorch-int8": "executorch-xnnpack-int8",
           "executorch-int4": "executorch-xnnpack-int4"}


def get_variant(name: str) -> Variant:
    """The variant called ``name`` (or one of its earlier spellings); ``UnknownVariantError`` names the choices."""
    name = ALIASES.get(name.strip(), name.strip())
    if name not in VARIANTS:
        raise UnknownVariantError(f"unknown export variant {name!r}; expected one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def parse_variants(text: str) -> list[Variant]:
    """Variants from a comma-separated list of names, in order, each once."""
    out: list[Variant] = []
    for part in text.split(","):
        if part.strip() and (v := get_variant(part)) not in out:
            out.append(v)
    if not out:
        raise UnknownVariantError(f"no export variant in {text!r}; expected names among {', '.join(VARIANTS)}")
    return out


def variants_argument(text: str) -> list[Variant]:
    """``parse_variants`` as an argparse ``type``: a bad name becomes a usage error that lists the valid ones."""
    import argparse
    try:
        return parse_variants(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
