"""Export a model to an ONNX artifact for the JavaScript tests and the demo page, without the parity run.

The exporter's parity against eager torch is tested by the Python suite; here the artifact only needs to
exist: the JavaScript tests compare against the Python runtime on this same artifact. ``infini-export export``
does the same and checks parity (minutes on a busy 2-core machine, for the decode program).

    python web/tools/export_artifact.py [--checkpoint models/passkey-small] -o out/web-onnx
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def export(module, out: Path) -> Path:
    """``module`` (eval mode) to ``out``: model.onnx (+ decode.onnx, weights.bin) and manifest.json."""
    from exporters.pipeline import export_artifact

    export_artifact(module, out, "onnx", parity_segments=0, log=None, progress=False)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "models" / "passkey-small"))
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args(argv)
    from infini_export.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    out = export(load_checkpoint(Path(args.checkpoint)), Path(args.out))
    print(f"exported {args.checkpoint} to {out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
