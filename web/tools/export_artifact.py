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
    where given, and manifest.json; no parity run."""
    from exporters.pipeline import export_artifact

    export_artifact(module, out, "onnx", parity_segments=0, log=None, progress=False, tokenizer=tokenizer)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "models" / "passkey-small"))
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--tokenizer", default=None, help="a tokenizer.json for the artifact (default: the checkpoint "
                    "folder's, where it has one; 'none': no tokenizer)")
    args = ap.parse_args(argv)
    from infini_export.checkpoint import load_checkpoint

    from exporters.tokenizer import find_tokenizer

    tokenizer = None if args.tokenizer == "none" else find_tokenizer(args.tokenizer, args.checkpoint)
    t0 = time.perf_counter()
    out = export(load_checkpoint(Path(args.checkpoint)), Path(args.out), tokenizer)
    print(f"exported {args.checkpoint} to {out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
