"""Reference outputs of the Python runtime for the JavaScript tests (written to a folder, not committed).

For the bundled model's artifact and a tiny random-weight model exported here, on the same token ids:
every token's logits over >= 64 segments (ending in a partial segment), with the decode program and
without it (partial segments re-run padded), the state files the Python runtime saves after them
(version 2 with the decode state, version 1 without), a greedy continuation, a top-k/top-p sampling distribution as the Python
sampler computes it, a compressed copy of the state file (which a runtime must refuse), passkey
prompts of tasks/passkey.py; the demo page's free-text box on the text model's artifact (``models/text-small``):
its default text, the opening lines of a held-out standard-library file, continued greedily by the Python runtime's
``generate_text``, without and with a stop string; and, in text/, the tokenizer goldens of tokenizer_goldens.py
(Python ``tokenizers`` ids of mixed text, greedy text continuations of artifacts with a tokenizer).

    python web/tools/make_goldens.py --small out/web-onnx --text out/web-text --out out/web-goldens
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

VERSION = 7  # bump when what is written changes
PASSKEY_MODEL = ROOT / "models" / "passkey-small"
TEXT_MODEL = ROOT / "models" / "text-small"
DEMO_TEXT = ("fnmatch.py", 18)  # the demo page's default free text: this held-out file's first lines (web/demo/index.html)


def export_tiny(out: Path) -> Path:
    """The tiny preset with random weights (seeded), exported to ONNX."""
    import torch

    from infini_export import InfiniConfig, InfiniTransformer
    from export_artifact import export  # beside this file (the script's folder is first on sys.path)

    art = out / "tiny"
    if (art / "manifest.json").is_file():
        return art
    torch.manual_seed(0)
    model = InfiniTransformer(InfiniConfig.from_name("tiny")).eval()
    with torch.no_grad():  # gates off their initial 0 so each head mixes differently
        for block in model.blocks:
            block.attn.beta.copy_(torch.linspace(-1.0, 1.0, block.attn.beta.numel()))
    return export(model, art)


def export_checkpoint(checkpoint: Path, art: Path) -> Path:
    """The checkpoint exported to ``art`` with its tokenizer, unless it is there already."""
    if (art / "manifest.json").is_file():
        return art
    from infini_export.checkpoint import load_checkpoint
    from exporters.tokenizer import find_tokenizer
    from export_artifact import export  # beside this file (the script's folder is first on sys.path)

    return export(load_checkpoint(checkpoint), art, find_tokenizer(None, checkpoint))


class _RecordingRng:
    """Stands in for numpy's Generator in runtime.sampling.sample: keeps the distribution it is given."""

    def __init__(self):
        self.p = []

    def choice(self, n, p):
        self.p.append(np.asarray(p, dtype=np.float64))
        return int(np.argmax(p))


def reference(art: Path, out: Path, segments: int, partial: int, batch: int, seed: int) -> dict:
    from runtime import InfiniSession
    from runtime.sampling import sample as _sample

    out.mkdir(parents=True, exist_ok=True)
    session = InfiniSession.open(art, batch_size=batch)
    N = session.segment_len
    ids = np.random.default_rng(seed).integers(0, session.vocab_size, size=(batch, segments * N + partial))
    logits = session.feed(ids)  # (B, T, V)
    session.save_state(out / "state.npz")
    with np.load(out / "state.npz") as z:  # the same members, deflated: a runtime must refuse it
        np.savez_compressed(out / "state_compressed.npz", **{k: z[k] for k in z.files})
    np.save(out / "ids.npy", ids.astype(np.int64))
    np.save(out / "logits.npy", logits.astype(np.float32))
    plain = InfiniSession.open(art, batch_size=batch, use_decode=False)  # partial segments re-run padded
    np.save(out / "logits_segment.npy", plain.feed(ids).astype(np.float32))
    plain.save_state(out / "state_v1.npz")
    twin = session.fork()
    greedy = twin.generate(np.zeros((batch, 0), dtype=np.int64), 24)
    np.save(out / "greedy.npy", greedy.astype(np.int64))
    rec = _RecordingRng()
    last = logits[:, -1]
    _sample(last, 0.8, 40, 0.9, rec)
    np.save(out / "sample_probs.npy", np.stack(rec.p))
    return {"artifact": str(art.resolve()), "segments": segments, "partial": partial, "batch": batch,
            "segment_len": N, "tokens_consumed": session.tokens_consumed, "fingerprint": session.manifest.fingerprint,
            "decoding": session.decoding,
            "sample": {"temperature": 0.8, "top_k": 40, "top_p": 0.9}}


def demo_text(art: Path) -> dict:
    """The demo page's free-text box on the text model's artifact: its default text (the first lines of a file the
    text model never saw in training) continued greedily by the Python runtime for the manifest's default number of
    new tokens, and again with a stop string that occurs in that continuation."""
    from runtime.manifest import Manifest
    from tasks.text import stdlib_root
    from tasks.text_eval import opening_lines
    from tokenizer_goldens import generate_text  # beside this file

    name, lines = DEMO_TEXT
    if name not in json.loads((TEXT_MODEL / "split.json").read_text())["heldout"]:
        raise SystemExit(f"{name} is not a held-out file of {TEXT_MODEL / 'split.json'}: the demo's text must be one")
    prompt = opening_lines(stdlib_root(), name, lines)
    manifest = Manifest.load(art)
    if manifest.tokenizer is None:
        raise SystemExit(f"{art} has no tokenizer: export {TEXT_MODEL} with its tokenizer.json")
    n = manifest.generation.max_new_tokens
    free = generate_text(art, prompt, n, [])
    stop = "\n\n" if "\n\n" in free["text"] else "\n"
    return {"artifact": str(art.resolve()), "fingerprint": manifest.fingerprint, "file": name, "lines": lines,
            "cases": [free, generate_text(art, prompt, n, [stop])]}


def passkey_prompts(out: Path) -> list[dict]:
    from tasks import passkey as pk

    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, (length, depth, key) in enumerate([(4096, 0.0, "71432"), (4096, 0.5, "10000"), (4096, 1.0, "99999"),
                                               (5000, 0.5, "31415"), (pk.min_length(), 0.5, "27182"),
                                               (32768, 0.25, "55555"), (1234, 0.3, "12345")]):
        sample = pk.make_sample(length, depth, key=key)
        np.save(out / f"passkey_{i}.npy", sample.ids.astype(np.int64))
        cases.append({"file": f"passkey_{i}.npy", "length": length, "depth": depth, "key": key,
                      "needle_start": sample.needle_start})
    return cases


def code_hash(small: Path, text: Path) -> str:
    """What the goldens depend on: the Python code that exports and runs, this file, the two bundled models'
    artifacts."""
    h = hashlib.sha256((small / "manifest.json").read_bytes() + (text / "manifest.json").read_bytes())
    for folder in ("runtime", "exporters", "infini_export"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode() + path.read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update((Path(__file__).parent / "tokenizer_goldens.py").read_bytes())
    return h.hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", default=str(ROOT / "out" / "web-onnx"), help="the bundled model's ONNX artifact "
                    "(exported here if missing)")
    ap.add_argument("--text", default=str(ROOT / "out" / "web-text"), help="the bundled text model's ONNX artifact, "
                    "with its tokenizer (exported here if missing)")
    ap.add_argument("--out", default=str(ROOT / "out" / "web-goldens"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    index_path = out / "index.json"
    small = export_checkpoint(PASSKEY_MODEL, Path(args.small))
    text = export_checkpoint(TEXT_MODEL, Path(args.text))
    made_by = code_hash(small, text)
    if index_path.is_file():
        old = json.loads(index_path.read_text())
        if old.get("version") == VERSION and old.get("made_by") == made_by:
            print(f"goldens up to date in {out}")
            return 0
    if (out / "tiny").is_dir():  # exported by other code: again
        shutil.rmtree(out / "tiny")
    tiny = export_tiny(out)
    index = {"version": VERSION, "made_by": made_by, "models": {
        "small": reference(small, out / "small-ref", segments=64, partial=37, batch=1, seed=1),
        "tiny": reference(tiny, out / "tiny-ref", segments=80, partial=5, batch=2, seed=2),
    }, "passkey": passkey_prompts(out / "passkey"), "demo_text": demo_text(text)}
    import tokenizer_goldens  # beside this file

    index["tokenizer"] = {"dir": "text", **tokenizer_goldens.write(small, out / "text")}
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    print(f"goldens written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
