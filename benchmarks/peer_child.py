"""The processes of the peer benchmark (``benchmarks.peer``): each side is timed in a process of its own, so that
its peak RSS (VmHWM, which starts afresh at exec) is its own.

    python -m benchmarks.peer_child build  '{"llama": {...}, "folder": ..., "out": ..., "precision": "fp32"}'
    python -m benchmarks.peer_child theirs '{"model": ..., "contexts": [[4096, 1024], ...], ...}'
    python -m benchmarks.peer_child ours   '{"artifact": ..., "contexts": [[4096, 1024], ...], ...}'
    python -m benchmarks.peer_child export '{"preset": "base-32k", "out": ..., "quantize": null}'

``build`` and ``theirs`` run in the benchmark environment that has onnxruntime-genai and transformers (never a
runtime dependency of this project); ``ours`` runs torch-free in the project's own environment, ``export`` in it
with torch. Each prints one
JSON line last. Only the standard library and numpy are imported at the top: the benchmark environment does not
have this project's dependencies.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _log(msg: str) -> None:
    sys.stderr.write(f"[peer {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def _tokens(n: int, vocab: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, n, dtype=np.int64)  # 0-2: Llama's special ids


def _save_tokenizer(folder: Path, vocab: int) -> None:
    """A word-level tokenizer with ``vocab`` entries (the builder reads one from the folder; the benchmark feeds
    token ids and never uses it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)


def build(job: dict) -> dict:
    """A ``LlamaForCausalLM`` with random weights saved to ``folder`` (once), then onnxruntime-genai's model builder
    into ``out`` at ``precision``; the decoder's sessions set to ``threads`` intra-op threads."""
    folder, out = Path(job["folder"]), Path(job["out"])
    t0 = time.perf_counter()
    if not (folder / "config.json").is_file():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(job.get("seed", 0))
        model = LlamaForCausalLM(LlamaConfig(**job["llama"])).eval()
        model.save_pretrained(folder)
        _save_tokenizer(folder, job["llama"]["vocab_size"])
        _log(f"Llama twin: {sum(p.numel() for p in model.parameters()):,} parameters saved to {folder}")
    made = time.perf_counter() - t0
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o", str(out),
           "-p", job["precision"], "-e", "cpu", "-c", str(out.parent / "builder-cache"),
           "--extra_options", *[f"{k}={v}" for k, v in job.get("extra_options", {}).items()]]
    if not job.get("extra_options"):
        cmd = cmd[:-1]
    _log(" ".join(cmd))
    t1 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode or not (out / "genai_config.json").is_file():
        raise RuntimeError(f"the model builder failed: {(proc.stderr or proc.stdout)[-1500:]}")
    cfg_path = out / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["decoder"]["session_options"].update(
        {"intra_op_num_threads": job["threads"], "inter_op_num_threads": 1})
    cfg_path.write_text(json.dumps(cfg, indent=4) + "\n")
    return {"seconds_random_model": round(made, 1), "seconds_builder": round(time.perf_counter() - t1, 1),
            "files": {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}}


def theirs(job: dict) -> dict:
    """onnxruntime-genai on the built model: per context (prefix, tail) a generator sized to it, the context
    appended in chunks of ``chunk`` tokens (timed: prefill), then ``new_tokens`` greedy tokens, timed each."""
    import onnxruntime_genai as og

    try:
        og.disable_telemetry_events()
    except Exception:  # noqa: BLE001 - older releases have no telemetry switch
        pass
    t0 = time.perf_counter()
    model = og.Model(job["model"])
    opened = time.perf_counter() - t0
    rows = []
    for k, (prefix, tail) in enumerate(job["contexts"]):
        n, new = prefix + tail, job["new_tokens"]
        ids = _tokens(n, job["vocab"], k)
        params = og.GeneratorParams(model)
        # min_length = max_length: no end-of-text token stops a random model early
        params.set_search_options(max_length=n + new + 1, min_length=n + new + 1, do_sample=False)
        gen = og.Generator(model, params)
        t = time.perf_counter()
        for start in range(0, n, job["chunk"]):
            gen.append_tokens(ids[start:start + job["chunk"]].astype(np.int32))
        prefill = time.perf_counter() - t
        gen.generate_next_token()  # the next token from the context's logits: no model run
        ms = []
        for _ in range(new):
            t = time.perf_counter()
            gen.generate_next_token()  # one model run on the last token, then its greedy choice
            ms.append(1000 * (time.perf_counter() - t))
        del gen
        rows.append({"prefix": prefix, "tail": tail, "context": n, "prefill_seconds": prefill,
                     "prefill_tok_s": n / prefill, "decode_ms": ms, "decode_ms_median": float(np.median(ms))})
        _log(f"theirs {job.get('label', '')} {n:,} tokens: prefill {n / prefill:.0f} tok/s, decode "
             f"{np.median(ms):.1f} ms/token")
    return {"open_seconds": opened, "contexts": rows, "peak_rss_mb": _peak_rss_mb()}


def ours(job: dict) -> dict:
    """Our runtime on the artifact: per context (prefix, tail) a fresh session state, the prefix streamed (whole
    segments through the last-token program) then the tail (the decode program inside the segment), timed
    together (prefill), then ``new_tokens`` greedy tokens, timed each."""
    from runtime.session import InfiniSession

    t0 = time.perf_counter()
    session = InfiniSession.open(job["artifact"], threads=job["threads"])
    opened = time.perf_counter() - t0
    rows = []
    for k, (prefix, tail) in enumerate(job["contexts"]):
        n, new = prefix + tail, job["new_tokens"]
        ids = _tokens(n, session.vocab_size, k)
        session.reset()
        t = time.perf_counter()
        for start in range(0, prefix, job["chunk"]):
            session.stream(ids[start:min(start + job["chunk"], prefix)])
        if tail:
            session.stream(ids[prefix:])
        prefill = time.perf_counter() - t
        ms, t = [], time.perf_counter()
        for _ in session.generate_iter(np.zeros((1, 0), np.int64), new):
            now = time.perf_counter()
            ms.append(1000 * (now - t))
            t = now
        rows.append({"prefix": prefix, "tail": tail, "context": n, "position": session.position,
                     "prefill_seconds": prefill, "prefill_tok_s": n / prefill, "decode_ms": ms,
                     "decode_ms_median": float(np.median(ms))})
        _log(f"ours {job.get('label', '')} {n:,} tokens: prefill {n / prefill:.0f} tok/s, decode "
             f"{np.median(ms):.1f} ms/token")
    return {"open_seconds": opened, "contexts": rows, "peak_rss_mb": _peak_rss_mb(),
            "torch_loaded": "torch" in sys.modules}


def export(job: dict) -> dict:
    """Our ONNX export of a preset with random weights (seed 0), parity over ``parity_segments`` segments."""
    import torch

    from exporters.pipeline import export_artifact
    from infini_export import InfiniConfig, InfiniTransformer

    torch.manual_seed(job.get("seed", 0))
    t0 = time.perf_counter()
    model = InfiniTransformer(InfiniConfig.from_name(job["preset"])).eval()
    export_artifact(model, job["out"], "onnx", quantize=job["quantize"],
                    parity_segments=job.get("parity_segments", 1), progress=False, log=_log)
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": _peak_rss_mb()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in COMMANDS:
        sys.stderr.write(__doc__)
        return 2
    out = COMMANDS[argv[0]](json.loads(argv[1]))
    print(json.dumps(out))
    return 0


COMMANDS = {"build": build, "theirs": theirs, "ours": ours, "export": export}

if __name__ == "__main__":
    raise SystemExit(main())
