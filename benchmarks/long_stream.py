"""Very long streams: eager torch and the exported ONNX model side by side over millions of tokens.

Checks: no NaN/inf in state or logits; ||z|| grows linearly with tokens (z is a running sum of sigma(k) > 0)
and ||M|| as the update rule says; eager-vs-exported parity of logits and state still within tolerance at the
end (``run``); ``plot`` draws the state norms and errors against tokens.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from exporters.pipeline import export_artifact
from infini_export import InfiniConfig, InfiniTransformer
from infini_export.eager import EagerBackend
from infini_export.parity import tolerance_for
from runtime.session import InfiniSession


def run(n_tokens: int, segment_len: int = 128, update: str = "delta", seed: int = 0, points: int = 40,
        artifact_dir: str | None = None, progress: bool = True) -> dict:
    """Stream ``n_tokens`` random tokens through the ``tiny`` preset (random weights) eagerly and through its ONNX
    export, in step; rows of norms and errors at ``points`` log-spaced marks, growth exponents, final parity."""
    torch.manual_seed(seed)
    model = InfiniTransformer(InfiniConfig.from_name("tiny", segment_len=segment_len, update=update)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(artifact_dir or tmp) / "onnx"
        export_artifact(model, art, "onnx", parity_segments=8, progress=False, log=None)
        session = InfiniSession.open(art)
        backend = session.backend
        eager = EagerBackend(model)
        N, n_seg = segment_len, n_tokens // segment_len
        spec = model.step_spec()
        state_o = [np.zeros(s.concrete_shape(1), np.float32) for s in session.manifest.state]
        state_e = [s.copy() for s in state_o]
        marks = set(np.unique(np.geomspace(1, n_seg, points).astype(int)))
        rows, finite = [], True
        it = range(1, n_seg + 1)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc=f"streaming {n_seg * N:,} tokens", unit="seg", unit_scale=True, mininterval=2)
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        for seg in it:
            ids = rng.integers(0, spec.vocab_size, (1, N), dtype=np.int64)
            lo, state_o = backend.run(ids, state_o)
            le, state_e = eager.run(ids, state_e)
            if seg in marks or seg == n_seg:
                ok = bool(np.isfinite(lo).all() and all(np.isfinite(s).all() for s in state_o))
                finite &= ok
                row = {"tokens": seg * N, "finite": ok,
                       "logits_max_abs_err": float(np.abs(lo - le).max()),
                       "top1_agree": float((lo.argmax(-1) == le.argmax(-1)).mean())}
                for s, a, b in zip(spec.state, state_o, state_e):
                    row[f"{s.name}_norm"] = float(np.linalg.norm(a))
                    row[f"{s.name}_rel_err"] = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
                rows.append(row)
        seconds = time.perf_counter() - t0
    tol = tolerance_for("onnxruntime", "float32")
    last = rows[-1]
    names = [s.name for s in spec.state]
    # growth exponents: slope of log ||x|| against log tokens over the second half of the run
    half = [r for r in rows if r["tokens"] >= rows[-1]["tokens"] / 100] or rows
    growth = {}
    for n in names:
        x = np.log([r["tokens"] for r in half])
        y = np.log([max(r[f"{n}_norm"], 1e-30) for r in half])
        growth[n] = float(np.polyfit(x, y, 1)[0]) if len(half) > 1 else float("nan")
    z_per_token = [r["norm.0_norm"] / r["tokens"] for r in half]
    result = {
        "tokens": n_seg * N, "segment_len": N, "update": update, "seconds": seconds,
        "finite": finite, "rows": rows, "growth_exponent": growth,
        "z_norm_per_token_spread": float(max(z_per_token) / min(z_per_token) - 1) if z_per_token else None,
        "final": {"logits_max_abs_err": last["logits_max_abs_err"], "top1_agree": last["top1_agree"],
                  "state_max_rel_err": max(last[f"{n}_rel_err"] for n in names),
                  "state_norms": {n: last[f"{n}_norm"] for n in names}},
        "tolerance": {"logits_atol": tol.logits_atol, "state_rtol": tol.state_rtol},
    }
    result["parity_ok"] = bool(result["final"]["state_max_rel_err"] <= tol.state_rtol and
                               result["final"]["logits_max_abs_err"] <= tol.logits_atol + tol.logits_rtol * 10)
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["rows"]
    t = [r["tokens"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key in rows[0]:
        if key.endswith("_norm"):
            a.plot(t, [r[key] for r in rows], label=key[:-5])
        if key.endswith("_rel_err"):
            b.plot(t, [max(r[key], 1e-12) for r in rows], label=key[:-8])
    b.plot(t, [max(r["logits_max_abs_err"], 1e-12) for r in rows], "k--", label="logits (abs)")
    a.set(xscale="log", yscale="log", xlabel="tokens", ylabel="Frobenius norm", title="state norms")
    b.set(xscale="log", yscale="log", xlabel="tokens", ylabel="error", title="ONNX vs eager")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
