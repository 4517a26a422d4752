#!/usr/bin/env python
"""Parity of every export variant against eager torch over many consecutive segments.

    python scripts/parity_matrix.py --checkpoint models/passkey-small --segments 1000
    python scripts/parity_matrix.py --preset small --segments 1000      # random weights
    python scripts/parity_matrix.py --checkpoint models/passkey-small --segments 1000 \
        --variants onnx-fp32,onnx-int8,onnx-int4,onnx-int4-b64,executorch-xnnpack-int8,executorch-xnnpack-int4 \
        --out docs/quantization                                         # what int8 / int4 cost

Writes docs/parity/parity.json and docs/parity/parity.md (a table: worst logits / state error, top-1
agreement, error trend, wiring check, verdict per variant).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from exporters.variants import MAIN, VARIANTS, variants_argument
from infini_export import InfiniConfig, InfiniTransformer, load_checkpoint
from infini_export.parity import validate
from runtime.atomic import atomic_write
from runtime.session import InfiniSession


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint")
    p.add_argument("--preset", default="small")
    p.add_argument("--segments", type=int, default=1000)
    p.add_argument("--variants", type=variants_argument, default=",".join(MAIN), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--out", default="docs/parity")
    args = p.parse_args()
    variants = args.variants
    torch.set_num_threads(1)  # eager small models: one thread; two contend badly on a shared 2-core machine
    if args.checkpoint:
        model, source = load_checkpoint(args.checkpoint), args.checkpoint
    else:
        torch.manual_seed(0)
        model, source = InfiniTransformer(InfiniConfig.from_name(args.preset)).eval(), f"{args.preset} (random)"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            name = variant.name
            t0 = time.perf_counter()
            print(f"== {name}: export", flush=True)
            try:
                manifest, _ = variant.export(model, Path(tmp) / name, parity_segments=4, progress=False, log=None)
            except Exception as exc:
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"   failed: {exc}")
                continue
            session = InfiniSession.open(Path(tmp) / name)
            report = validate(session.backend, model, precision=variant.quantize or "float32", segments=args.segments,
                              manifest=session.manifest)
            print(report.table(rows=5), flush=True)
            results[name] = {"passed": report.passed, "summary": report.summary, "wiring": report.wiring,
                             "failures": report.failures[:10], "tolerance": report.tolerance,
                             "seconds": round(time.perf_counter() - t0, 1),
                             "file_bytes": sum(f.bytes for f in manifest.files.values())}
    doc = {"model": source, "segments": args.segments, "segment_len": model.cfg.segment_len, "results": results}
    text = json.dumps(doc, indent=2, default=float) + "\n"
    atomic_write(out / "parity.json", lambda f: f.write(text.encode()))
    lines = [f"# Parity over {args.segments} consecutive segments ({args.segments * model.cfg.segment_len:,} tokens)",
             "", f"Model: `{source}`. Command: `python scripts/parity_matrix.py "
             f"{'--checkpoint ' + args.checkpoint if args.checkpoint else '--preset ' + args.preset} "
             f"--segments {args.segments} --variants {','.join(v.name for v in variants)}`.", "",
             "| variant | file bytes | worst logits abs | worst state rel | final state rel (max) | top-1 vs eager | "
             "error trend (last/first quarter) | wiring | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | | | | | | | | export failed: {r['error'][:80]} |")
            continue
        s = r["summary"]
        lines.append(f"| {name} | {r['file_bytes']:,} | {s['logits_max_abs']:.2e} | {s['state_max_rel']:.2e} | "
                     f"{max(s['state_final_rel'].values()):.2e} | {s['top1']:.4f} | {s['logits_trend']:.2f} | "
                     f"{'ok' if r['wiring']['passed'] else 'FAILED'} | {'PASSED' if r['passed'] else 'FAILED'} |")
    atomic_write(out / "parity.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(lines))
    return 0 if all(r.get("passed") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
