"""Text at real size: a 32,000-token BPE trained on the Python standard library, a preset exported with it, and
what text costs next to the model (tokenization per token against a decode step; generate_text's prefill and
decode speed; peak RSS of a torch-free process).

    python -m benchmarks.text measure ART --prompt-file F   # the torch-free child: one JSON line on stdout
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import time
import zlib
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SKIP = ("site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo")


def stdlib_files(max_mb: float, held_out_every: int = 25) -> tuple[list[Path], list[Path]]:
    """(training files up to ``max_mb`` MB, held-out files): the standard library's ``.py`` files in path order,
    test suites left out; every ``held_out_every``-th file (by a hash of its path) is held out for prompts."""
    train, held, total = [], [], 0
    for p in sorted(STDLIB.rglob("*.py")):
        if any(part in SKIP for part in p.relative_to(STDLIB).parts):
            continue
        if zlib.crc32(str(p.relative_to(STDLIB)).encode()) % held_out_every == 0:
            held.append(p)
        elif total < max_mb * 1e6:
            train.append(p)
            total += p.stat().st_size
    return train, held


def train_bpe(files: list[Path], out: Path, vocab_size: int = 32000) -> dict:
    """A byte-level BPE (GPT-2 style) of ``vocab_size`` tokens, ``<|endoftext|>`` its one special token."""
    from tokenizers import Tokenizer, decoders, models, trainers
    from tokenizers.pre_tokenizers import ByteLevel

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    t0 = time.perf_counter()
    tok.train([str(f) for f in files], trainer)
    seconds = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return {"files": len(files), "corpus_bytes": sum(f.stat().st_size for f in files), "vocab": tok.get_vocab_size(),
            "train_seconds": round(seconds, 1), "tokenizer_bytes": out.stat().st_size}


def export_with_tokenizer(preset: str, tokenizer: Path, out: Path, parity_segments: int = 1) -> dict:
    """``preset`` with random weights (seed 0) exported to ONNX with ``tokenizer``, parity checked."""
    import torch

    from exporters.pipeline import export_artifact
    from infini_export import InfiniConfig, InfiniTransformer
    torch.manual_seed(0)
    model = InfiniTransformer(InfiniConfig.from_name(preset)).eval()
    t0 = time.perf_counter()
    manifest, report = export_artifact(model, out, "onnx", parity_segments=parity_segments, progress=False, log=None,
                                       tokenizer=tokenizer)
    return {"preset": preset, "parameters": model.num_parameters(), "seconds": round(time.perf_counter() - t0, 1),
            "parity_passed": report.passed, "tokenizer": manifest.tokenizer.to_dict(),
            "files": {k: f.bytes for k, f in manifest.files.items()}}


def _per_token(fn, tokens: int, min_seconds: float = 0.5) -> float:
    """Microseconds per token of ``fn()`` (which handles ``tokens`` tokens), the best of rounds over min_seconds."""
    best, spent = float("inf"), 0.0
    while spent < min_seconds or best == float("inf"):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return 1e6 * best / tokens


def measure(art: str | Path, prompt: str, new_tokens: int = 64, threads: int | None = None) -> dict:
    """Torch-free: tokenizer load, encode and streamed decode per token, a decode step of the model, and
    ``generate_text`` (greedy) prefill and decode speed with the text included; peak RSS of this process."""
    from runtime import InfiniSession
    from runtime.measure import current_rss_mb, peak_rss_mb

    opts = {"threads": threads} if threads else {}
    t0 = time.perf_counter()
    s = InfiniSession.open(art, **opts)
    opened = time.perf_counter() - t0
    rss = current_rss_mb()
    t0 = time.perf_counter()
    tok = s.tokenizer
    load = time.perf_counter() - t0
    rss_tokenizer = current_rss_mb() - rss
    parts = _load_parts(s.manifest.file_path(s.manifest.tokenizer.file))
    ids = tok.encode(prompt)
    n = int(ids.size)

    def stream_all():
        st = tok.stream()
        for i in ids:
            st.put(i)
    out = {"prompt_tokens": n, "prompt_chars": len(prompt), "open_seconds": round(opened, 3),
           "tokenizer_load_seconds": round(load, 3), "tokenizer_load_parts_seconds": parts,
           "tokenizer_rss_mb": round(rss_tokenizer, 1),
           "encode_us_per_token": round(_per_token(lambda: tok.encode(prompt), n), 3),
           "decode_all_us_per_token": round(_per_token(lambda: tok.decode(ids), n), 3),
           "stream_us_per_token": round(_per_token(stream_all, n), 3)}
    # the model: ids only, the same prompt, greedy
    s.stream(ids)
    t0 = time.perf_counter()
    for _ in s.generate_iter(ids[:0], new_tokens):
        pass
    out["decode_step_ms"] = round(1000 * (time.perf_counter() - t0) / new_tokens, 3)
    # text in, text out on a fresh session
    s.reset()
    gen = s.generate_text_iter(prompt, max_new_tokens=new_tokens, temperature=0.0)
    text = "".join(gen)
    k = len(gen.ids)
    out.update({"new_tokens": k, "stopped": gen.stopped, "new_chars": len(text),
                "prefill_seconds": round(gen.prefill_seconds, 3),
                "prefill_tok_per_s": round(n / gen.prefill_seconds, 1),
                "decode_seconds": round(gen.decode_seconds, 3),
                "decode_tok_per_s": round(k / gen.decode_seconds, 2),
                "decode_ms_per_token_with_text": round(1000 * gen.decode_seconds / max(k, 1), 3),
                "peak_rss_mb": round(peak_rss_mb(), 1), "threads": threads})
    out["stream_share_of_decode_step"] = round(out["stream_us_per_token"] / 1000 / out["decode_step_ms"], 6)
    out["encode_share_of_prefill"] = round(out["encode_us_per_token"] * n / 1e6 / gen.prefill_seconds, 6)
    return out


def _load_parts(path: Path) -> dict:
    """Seconds of each part of loading a tokenizer: read + sha256, JSON parse + shape check, tokenizers' own parse."""
    import hashlib

    import tokenizers

    from runtime.tokenizer import check_tokenizer_json, read_tokenizer_bytes
    t0 = time.perf_counter()
    data = read_tokenizer_bytes(path)
    hashlib.sha256(data).hexdigest()
    t1 = time.perf_counter()
    check_tokenizer_json(json.loads(data))
    t2 = time.perf_counter()
    tokenizers.Tokenizer.from_str(data.decode())
    t3 = time.perf_counter()
    return {"read_sha256": round(t1 - t0, 3), "json_check": round(t2 - t1, 3), "from_str": round(t3 - t2, 3)}


def measure_in_child(art: Path, prompt_file: Path, new_tokens: int, threads: int | None, timeout: float = 3600) -> dict:
    """``measure`` in a process of its own where torch cannot be imported (its own peak RSS)."""
    cmd = [sys.executable, "-m", "benchmarks.text", "measure", str(art), "--prompt-file", str(prompt_file),
           "--new-tokens", str(new_tokens)] + (["--threads", str(threads)] if threads else [])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]) + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"measure failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prompt_text(files: list[Path], tokens: int, tokenizer: Path) -> str:
    """The first ``tokens`` tokens of the held-out files, as text (whole characters)."""
    from runtime.tokenizer import Tokenizer
    tok = Tokenizer.from_file(tokenizer)
    text = "".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    return tok.decode(tok.encode(text[:tokens * 8])[:tokens])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("artifact")
    m.add_argument("--prompt-file", required=True)
    m.add_argument("--new-tokens", type=int, default=64)
    m.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    sys.modules["torch"] = None  # the runtime alone: an import of torch fails
    print(json.dumps(measure(args.artifact, Path(args.prompt_file).read_text(encoding="utf-8"), args.new_tokens,
                             args.threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
