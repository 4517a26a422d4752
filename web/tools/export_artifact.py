"""Export a model to an ONNX artifact for the JavaScript tests and the demo page, without the parity run.

The exporter's parity against eager torch is tested by the Python suite; here the artifact only needs to
exist: the JavaScript tests compare against the Python runtime on this same artifact. ``infini-export export``
does the same and checks parity (minutes on a busy 2-core machine, for the decode program).

    python web/tools/export_artifact.py [--checkpoint models/passkey-small] -o out/web-onnx

The checkpoint folder's ``tokenizer.json``, where it has one, goes with the artifact (``--tokenizer`` another,
``--tokenizer none`` none): checked against the model, copied, and named by the manifest's ``tokenizer`` and
``generation`` sections, as ``infini-export export`` does.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def export(module, out: Path, tokenizer: Path | None = None) -> Path:
    """``module`` (eval mode) to ``out``: model.onnx (+ decode.onnx, weights.bin), ``tokenizer`` (a tokenizer.json)
    where given, and manifest.json."""
    from exporters.artifact import write_manifest
    from exporters.onnx import export_onnx

    plan = None
    if tokenizer is not None:  # checked before anything is written
        from exporters.tokenizer import tokenizer_plan
        plan = tokenizer_plan(tokenizer, module.step_spec().vocab_size)
    manifest = export_onnx(module.eval(), out)
    if plan is not None:
        plan.attach(out, manifest)
    write_manifest(out, manifest)
    return out


def checkpoint_tokenizer(checkpoint: Path) -> Path | None:
    """The checkpoint folder's tokenizer.json, where it has one and this exporter can carry tokenizers."""
    path = Path(checkpoint) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        import exporters.tokenizer  # noqa: F401
    except ImportError:
        return None
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "models" / "passkey-small"))
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--tokenizer", default=None, help="a tokenizer.json for the artifact (default: the checkpoint "
                    "folder's, where it has one; 'none': no tokenizer)")
    args = ap.parse_args(argv)
    from infini_export.checkpoint import load_checkpoint

    tokenizer = (None if args.tokenizer == "none" else Path(args.tokenizer) if args.tokenizer
                 else checkpoint_tokenizer(Path(args.checkpoint)))
    t0 = time.perf_counter()
    out = export(load_checkpoint(Path(args.checkpoint)), Path(args.out), tokenizer)
    print(f"exported {args.checkpoint} to {out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
