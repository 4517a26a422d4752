"""``infini-export demo`` (``make demo``): the main job, end to end, on the bundled model.

1. export the bundled passkey model to ONNX and to ExecuTorch (XNNPACK), each validated for parity
   against eager torch over 64 consecutive segments (outputs and state);
2. run passkey retrieval on the exported ONNX model at lengths up to 1M tokens, start / middle / end,
   with the memory-disabled control beside it, in constant memory;
3. print the table, and write JSON + PNG;
4. a short greedy and a sampled continuation of a held-out file's opening lines by the bundled text model
   (``models/text-small``), exported to ONNX with its tokenizer: text in, text out.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

BUNDLED = Path(__file__).resolve().parent.parent / "models" / "passkey-small"
TEXT_MODEL = BUNDLED.parent / "text-small"


def _stage(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def main(args) -> int:
    from exporters.pipeline import export_artifact

    from infini_export.checkpoint import load_checkpoint

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.model) if args.model else BUNDLED
    if not (ckpt / "model.safetensors").is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt}; expected config.json + model.safetensors "
                                "(the bundled model lives in models/passkey-small)")
    model = load_checkpoint(ckpt)
    _stage(f"model {ckpt}: {model.num_parameters():,} parameters, state {model.cfg.state_bytes(1):,} bytes "
           f"({model.cfg.n_layers} layers x {model.cfg.n_heads} heads x {model.cfg.d_head}x({model.cfg.d_head}+1) "
           "float32), whatever the input length")
    summary = {"model": str(ckpt), "exports": {}}
    for fmt, sub in (("onnx", "onnx"), ("executorch", "executorch-xnnpack")):
        _stage(f"export {fmt} -> {out / sub}, then parity over 64 segments")
        t0 = time.perf_counter()
        try:
            manifest, report = export_artifact(model, out / sub, fmt, parity_segments=64, table_rows=3)
        except ImportError as exc:  # an exporter that is not installed is reported, not hidden
            print(f"   {fmt} export unavailable: {exc}")
            summary["exports"][fmt] = {"error": str(exc)}
            continue
        summary["exports"][fmt] = {"seconds": round(time.perf_counter() - t0, 1), "passed": report.passed,
                                   "parity": report.summary}
    _stage("passkey retrieval on the exported ONNX model, in a torch-free process (numpy + onnxruntime)")
    cmd = [sys.executable, "-m", "infini_cli", "passkey", str(out / "onnx"), "--lengths", args.lengths,
           "--depths", "0,0.5,1", "--trials", str(args.trials or 2), "--out", str(out)]
    env = {**os.environ, "INFINI_EXPORT_NO_TORCH": "1"}
    code = subprocess.call(cmd, env=env)
    if code != 0:
        print(f"passkey evaluation failed with exit code {code}")
        return code
    result = json.loads((out / "passkey.json").read_text())
    summary["passkey"] = result
    if (TEXT_MODEL / "model.safetensors").is_file():
        summary["text"] = _text_demo(out / "text-onnx")
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    rss = [r["peak_rss_mb"] for r in result["rows"]]
    lengths = result["lengths"]
    print(f"\npeak RSS of the runtime process: {rss[0]:.0f} MB at {lengths[0]:,} tokens, {rss[-1]:.0f} MB at "
          f"{lengths[-1]:,} tokens ({100 * (rss[-1] / rss[0] - 1):+.1f}%)")
    print(f"plot: {out / 'passkey.png'}   JSON: {out / 'passkey.json'}, {out / 'summary.json'}")
    print(f"demo finished in {summary['seconds'] / 60:.1f} min")
    failed = [k for k, v in summary["exports"].items() if not v.get("passed", False)]
    if failed:
        print(f"PARITY FAILED for: {failed}")
        return 1
    return 0


def _text_demo(art: Path) -> dict:
    """Export the text model (parity over 8 segments) and continue a held-out file's opening lines with it."""
    from infini_export.checkpoint import load_checkpoint
    from tasks import text as T
    from tasks import text_eval as E

    _stage(f"the text model {TEXT_MODEL}: export to ONNX with its tokenizer, then continue a held-out file")
    t0 = time.perf_counter()
    E.export(load_checkpoint(TEXT_MODEL), art, None, TEXT_MODEL / "tokenizer.json", log=None)
    prompt = E.opening_lines(T.stdlib_root(), "fnmatch.py", 14)  # a held-out file (split.json)
    runs = {"greedy": {"temperature": 0.0}, "sampled (T 0.8, top-k 40, top-p 0.95, seed 0)":
            {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": 0}}
    print(f"prompt (fnmatch.py, the first 14 lines):\n{prompt}", end="")
    out = {"prompt": prompt}
    for name, kw in runs.items():
        out[name] = E.continue_text(art, prompt, 80, **kw)
        print(f"--- {name} continuation:\n{out[name]}\n---")
    print(f"text part: {time.perf_counter() - t0:.1f} s")
    return out
