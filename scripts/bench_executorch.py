"""Tokens/s of the ExecuTorch artifacts (XNNPACK float32, XNNPACK int8, portable kernels) against eager torch.

All backends are open at once and measured side by side: each round runs ``--segments`` chained segments
(state fed forward) on every backend in turn, the order rotated every round, with the same thread count
everywhere. Reported: best and median tokens/s over the rounds, ms per segment, ratio to eager.

    python scripts/bench_executorch.py                              # small preset, batch 1, random weights
    python scripts/bench_executorch.py --preset tiny --rounds 3     # a quick look
    python scripts/bench_executorch.py --checkpoint models/passkey-small --artifacts /tmp/et-bench
    python scripts/bench_executorch.py --onnx                       # onnxruntime float32 too

Exports go to ``--artifacts`` (reused when the model's fingerprint matches) or a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = {  # name -> (format, export options)
    "et-xnnpack-fp32": ("executorch", {"delegate": "xnnpack"}),
    "et-xnnpack-int8": ("executorch", {"delegate": "xnnpack", "quantize": "int8"}),
    "et-portable": ("executorch", {"delegate": "none"}),
    "ort-fp32": ("onnx", {}),
}


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="model preset when no --checkpoint (default small)")
    p.add_argument("--update", default="delta", choices=["delta", "linear"])
    p.add_argument("--checkpoint", default=None, help="a checkpoint folder instead of random weights")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--segments", type=int, default=8, help="chained segments per round and backend")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="threads for every backend (default 1)")
    p.add_argument("--artifacts", default=None, help="keep and reuse the exported artifacts here")
    p.add_argument("--onnx", action="store_true", help="also onnxruntime float32")
    p.add_argument("--skip-portable", action="store_true", help="leave the (slow) portable kernels out")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def _model(args):
    import torch

    from infini_export import InfiniConfig, InfiniTransformer
    if args.checkpoint:
        from infini_export.checkpoint import load_checkpoint
        return load_checkpoint(args.checkpoint).eval()
    torch.manual_seed(0)
    model = InfiniTransformer(InfiniConfig.from_name(args.preset, update=args.update)).eval()
    with torch.no_grad():  # gates off 0 so the heads mix memory and local attention differently
        for block in model.blocks:
            block.attn.beta.copy_(torch.linspace(-1.0, 1.0, block.attn.beta.numel()))
    return model


def _export(model, name, folder: Path, log):
    """Export (or reuse) one artifact; returns (directory, manifest)."""
    from exporters.artifact import model_fingerprint
    from exporters.pipeline import export_artifact
    fmt, options = VARIANTS[name]
    directory = folder / name
    manifest_path = directory / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("model_fingerprint") == model_fingerprint(model, model.step_spec()) and \
                manifest.get("quantization") == options.get("quantize"):
            log(f"{name}: reusing {directory}")
            return directory, manifest
    t0 = time.perf_counter()
    manifest, _ = export_artifact(model, directory, fmt, parity_segments=4, progress=False, log=None, **options)
    log(f"{name}: exported in {time.perf_counter() - t0:.0f}s" + (
        f", {manifest['exporter']['delegate_partitions']} delegate partition(s), outside: "
        f"{manifest['exporter']['non_delegated_ops']}" if fmt == "executorch" else ""))
    return directory, manifest


def main(argv=None) -> int:
    args = _args(argv)
    import warnings

    import numpy as np
    import torch

    from infini_export.eager import EagerBackend
    from runtime.session import InfiniSession

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # the export stack's deprecation chatter
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    model = _model(args)
    spec = model.step_spec()
    names = ["et-xnnpack-fp32", "et-xnnpack-int8"] + ([] if args.skip_portable else ["et-portable"]) + \
            (["ort-fp32"] if args.onnx else [])
    tmp = None
    if args.artifacts:
        folder = Path(args.artifacts)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-et-")
        folder = Path(tmp.name)
    backends, info = {"eager": EagerBackend(model)}, {"eager": {}}
    for name in names:
        directory, manifest = _export(model, name, folder, log)
        backends[name] = InfiniSession.open(directory, threads=args.threads).backend
        info[name] = {"pte_or_onnx_bytes": sum(f["bytes"] for f in manifest["files"].values())}
        if manifest["backend"] == "executorch":
            info[name].update(partitions=manifest["exporter"]["delegate_partitions"],
                              outside=manifest["exporter"]["non_delegated_ops"])
    N, B, S = spec.segment_len, args.batch, args.segments
    rng = np.random.default_rng(0)
    ids = rng.integers(0, spec.vocab_size, size=(B, S * N), dtype=np.int64)
    init = [np.zeros(tuple(B if d == "batch" else d for d in s.shape), dtype=s.dtype) for s in spec.state]
    order = list(backends)
    times = {name: [] for name in order}
    for name in order:  # warm-up (first-call allocations, XNNPACK weight packing)
        backends[name].run(ids[:, :N], init)
    for r in range(args.rounds):
        for name in order[r % len(order):] + order[:r % len(order)]:
            backend, state = backends[name], init
            t0 = time.perf_counter()
            for s in range(S):
                _, state = backend.run(ids[:, s * N:(s + 1) * N], state)
            times[name].append(time.perf_counter() - t0)
    tokens = B * S * N
    rows, eager_best = {}, tokens / min(times["eager"])
    for name in order:
        best, median = tokens / min(times[name]), tokens / statistics.median(times[name])
        rows[name] = {"tokens_per_s_best": round(best, 1), "tokens_per_s_median": round(median, 1),
                      "ms_per_segment_best": round(1000 * min(times[name]) / S, 3),
                      "vs_eager": round(best / eager_best, 2), **info[name]}
    cfg = getattr(model, "cfg", None)
    result = {"preset": args.checkpoint or args.preset, "config": cfg.to_dict() if cfg else None, "batch": B,
              "segment_len": N, "segments_per_round": S, "rounds": args.rounds, "threads": args.threads,
              "load_average": os.getloadavg(), "results": rows}
    print(f"{'backend':<17} {'tokens/s best':>14} {'median':>10} {'ms/segment':>11} {'vs eager':>9}  notes")
    for name, row in rows.items():
        notes = ""
        if row.get("partitions"):
            notes = f"{row['partitions']} XNNPACK partition(s); outside: {', '.join(row['outside'])}"
        elif "partitions" in row:
            notes = f"{sum(row['outside'].values())} ops on the portable kernels"
        print(f"{name:<17} {row['tokens_per_s_best']:>14,.0f} {row['tokens_per_s_median']:>10,.0f} "
              f"{row['ms_per_segment_best']:>11.2f} {row['vs_eager']:>9.2f}  {notes}")
    print(f"batch {B}, segment_len {N}, {S} segments x {args.rounds} rounds, {args.threads} thread(s); "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
