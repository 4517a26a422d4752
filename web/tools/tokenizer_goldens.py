"""Tokenizer goldens for the JavaScript tests: the Python ``tokenizers`` ids of mixed text, and text generation.

Three tokenizers, each a ``tokenizer.json``:

* ``bytes``: byte b = id b, as a BPE model without merges that falls back to bytes (``<0x00>`` .. ``<0xFF>``);
* ``bytes-bytelevel``: byte b = id b through the GPT-2 byte alphabet (ByteLevel pre-tokenizer and decoder);
* ``bpe``: a byte-fallback BPE trained here on the Python standard library's sources (``<bos>`` and
  ``<eos>`` special tokens, a regex pre-tokenizer of the Llama-3 kind, about 4K tokens).

For each, the ids of a few thousand lines of mixed text (ASCII, accented Latin, CJK, emoji, whitespace runs,
the special tokens), encoded with ``add_special_tokens=False``, and their decodings; and the decodings of
random id sequences (characters cut between tokens, stray bytes, special tokens).

Text generation: the bundled model's artifact with the byte tokenizer (its own, where the exporter wrote one)
and a tiny random-weight model with the BPE tokenizer's vocabulary, each a copy of the artifact with
``tokenizer.json`` and the manifest's ``tokenizer`` and ``generation`` sections; greedy continuations of
prompts through the Python runtime's ``generate_text`` where it has one, else greedy ids decoded with the
tokenizer (stopping at an ``eos`` id or a stop string, which is left out).

Used by make_goldens.py; alone: ``python web/tools/tokenizer_goldens.py --small out/web-onnx --out DIR``.
"""
from __future__ import annotations

import argparse
import glob
import json
import random
import shutil
import sys
import sysconfig
from pathlib import Path

import numpy as np

VOCAB = 4096
LINES = 3000
SEED = 11
# the Llama-3 pre-tokenizer pattern: case-insensitive contractions, letters, 1-3 digits, lookahead on spaces
SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")

ASCII_WORDS = ["the", "sky", "is", "blue", "def", "return", "None", "self", "x", "==", "!=", "->", "0x1F", "42",
               "3.14159", "1234567", "don't", "I'M", "we'll", "THEY'RE", "it's", "#", "@", "()", "[]", "{}", "/*",
               "<", ">", "<b>", "</b>", "<0x41>", "&amp;", "'", '"', "\\", "`", "~", "^", "|", "_private"]
LATIN = ["café", "naïve", "Ærøskøbing", "Straße", "façade", "jalapeño", "Ångström", "Dvořák", "Łódź", "œuvre",
         "ÉCOLE", "résumé", "e\u0301", "A\u030a", "İstanbul", "ǅ", "ﬁne", "Ωmega", "Σίσυφος", "Привет", "мир"]
CJK = ["日本語", "のテキスト", "中文字符", "汉字", "한국어", "カタカナ", "ｶﾀｶﾅ", "東京都", "。", "、", "「引用」",
       "\U00020000", "𠮷野家", "漢"]
EMOJI = ["🙂", "👍🏽", "👩\u200d👩\u200d👧", "🇫🇷", "🏳️\u200d🌈", "❤️", "🤖", "🧑\u200d💻", "1️⃣", "🫠", "✨"]
OTHER = ["مرحبا", "שלום", "नमस्ते", "ภาษาไทย", "∑∫√∞", "€£¥", "°C", "½", "²", "—", "…", "«»", "“quoted”"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", " \t ", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "\u2009", "\u0085",
          "\ufeff", "\u200b", "    \n  "]
SPECIALS = ["<bos>", "<eos>", "<bos><eos>", "x<eos>y", " <bos> ", "<eos>\n"]


def bytes_fallback_json() -> str:
    """byte b = id b: a BPE without merges whose vocabulary is the 256 byte tokens, decoded by ByteFallback."""
    vocab = {f"<0x{b:02X}>": b for b in range(256)}
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": []}})


def bytes_bytelevel_json() -> str:
    """byte b = id b through the GPT-2 byte alphabet."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    table = _bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    assert sorted(vocab) == sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok.to_str()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map of bytes to printable characters (what the ByteLevel pre-tokenizer uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def train_bpe(vocab_size: int = VOCAB) -> str:
    """A byte-fallback BPE trained on the standard library's sources: ids 0 and 1 are <bos> and <eos>, then
    the 256 byte tokens, then the learnt tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    files = sorted(glob.glob(str(Path(sysconfig.get_paths()["stdlib"]) / "*.py")))
    if not files:
        raise SystemExit(f"no Python sources in {sysconfig.get_paths()['stdlib']} to train the tokenizer on")
    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(SPLIT), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 258, special_tokens=[], show_progress=False,
                                  limit_alphabet=400)
    tok.train(files, trainer)
    doc = json.loads(tok.to_str())
    learnt = sorted(doc["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<bos>": 0, "<eos>": 1}
    vocab.update({f"<0x{b:02X}>": 2 + b for b in range(256)})
    for token, _ in learnt:
        if token not in vocab:
            vocab[token] = len(vocab)
    doc["model"]["vocab"] = vocab
    doc["added_tokens"] = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                            "normalized": False, "special": True} for i, c in enumerate(["<bos>", "<eos>"])]
    return Tokenizer.from_str(json.dumps(doc)).to_str()


def mixed_lines(n: int = LINES, seed: int = SEED) -> list[str]:
    """Lines of source text and of mixed scripts, emoji, whitespace runs and the special tokens."""
    rng = random.Random(seed)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    source = []
    for name in ("textwrap.py", "string.py", "difflib.py"):
        path = stdlib / name
        if path.is_file():
            source += [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    pools = [ASCII_WORDS, LATIN, CJK, EMOJI, OTHER, SPACES, SPECIALS]
    lines = ["", " ", "a", "<bos>", "<eos>", "日本", "👩\u200d👩\u200d👧", "\n", "  leading and trailing  ",
             "\t\ttabs", "x" * 300, "😀" * 40, "ab" * 200]
    while len(lines) < n:
        kind = rng.random()
        if kind < 0.25 and source:
            line = rng.choice(source)
            if rng.random() < 0.3:  # a source line with something foreign spliced in
                at = rng.randrange(len(line) + 1)
                line = line[:at] + rng.choice(rng.choice(pools)) + line[at:]
        else:
            parts = []
            for _ in range(rng.randint(1, 14)):
                pool = rng.choice(pools)
                parts.append(rng.choice(pool))
                if rng.random() < 0.6:
                    parts.append(rng.choice([" ", " ", "", "\n", "  "]))
            line = "".join(parts)
        lines.append(line)
    return lines


def encode_cases(out: Path, lines: list[str]) -> dict:
    """Each tokenizer's tokenizer.json and the ids and decodings of ``lines`` (written to out/<name>/)."""
    from tokenizers import Tokenizer

    cases = {}
    for name, make in (("bytes", bytes_fallback_json), ("bytes-bytelevel", bytes_bytelevel_json), ("bpe", train_bpe)):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        text = make()
        (folder / "tokenizer.json").write_text(text, encoding="utf-8")
        tok = Tokenizer.from_str(text)
        encs = tok.encode_batch(lines, add_special_tokens=False)
        ids = [e.ids for e in encs]
        if name.startswith("bytes"):  # the contract: byte b = id b
            assert all(i == list(ln.encode()) for i, ln in zip(ids, lines)), name
        vocab = max(tok.get_vocab(with_added_tokens=True).values()) + 1
        rng = random.Random(SEED + 1)  # id sequences no text encodes to: cut characters, stray bytes, specials
        noise = [[rng.randrange(vocab) if rng.random() < 0.5 else rng.randrange(min(vocab, 300))
                  for _ in range(rng.randint(1, 30))] for _ in range(300)]
        data = {"ids": ids, "decoded": tok.decode_batch(ids, skip_special_tokens=False),
                "decoded_skip": tok.decode_batch(ids, skip_special_tokens=True),
                "noise": noise, "noise_decoded": tok.decode_batch(noise, skip_special_tokens=False),
                "noise_decoded_skip": tok.decode_batch(noise, skip_special_tokens=True)}
        (folder / "encoded.json").write_text(json.dumps(data, ensure_ascii=True) + "\n")
        cases[name] = {"tokenizer": f"{name}/tokenizer.json", "encoded": f"{name}/encoded.json", "vocab_size": vocab,
                       "round_trips": sum(d == ln for d, ln in zip(data["decoded"], lines))}
    (out / "lines.json").write_text(json.dumps(lines, ensure_ascii=True) + "\n")
    return cases


# ---- text generation ------------------------------------------------------------------------------------


def with_tokenizer(art: Path, dest: Path, tokenizer_json: str, section: dict, generation: dict) -> Path:
    """A copy of the artifact ``art`` in ``dest`` with tokenizer.json and the manifest's tokenizer sections, attached
    as the exporter attaches them."""
    from exporters.tokenizer import FILE_KEY, TokenizerPlan
    from runtime.manifest import Manifest
    from runtime.tokenizer_section import TOKENIZER_FORMAT, GenerationDefaults, TokenizerInfo

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(art, dest)
    manifest = Manifest.load(dest)
    info = TokenizerInfo.from_dict({"file": FILE_KEY, "format": TOKENIZER_FORMAT, **section}, {FILE_KEY: None},
                                   manifest.vocab_size)
    TokenizerPlan(tokenizer_json.encode(), info, GenerationDefaults.from_dict(generation)).attach(manifest).write()
    return dest


def generate_text(art: Path, prompt: str, max_new_tokens: int, stop: list[str]) -> dict:
    """Greedy continuation of ``prompt`` by the Python runtime's ``generate_text``, and its greedy ids."""
    from runtime import InfiniSession

    session = InfiniSession.open(art)
    ids = [int(i) for i in session.encode(prompt)]
    greedy = [int(t[0]) for t in InfiniSession.open(art).generate_iter(np.array([ids]), max_new_tokens)]
    text = session.generate_text(prompt, max_new_tokens=max_new_tokens, temperature=0.0, stop=stop or ())
    return {"prompt": prompt, "max_new_tokens": max_new_tokens, "stop": stop, "prompt_ids": ids,
            "greedy_ids": greedy, "text": text, "by": "InfiniSession.generate_text"}


def export_tiny_bpe(out: Path, vocab_size: int) -> Path:
    """The tiny preset with the BPE tokenizer's vocabulary and random weights (seeded), exported to ONNX."""
    import torch

    from infini_export import InfiniConfig, InfiniTransformer
    from export_artifact import export  # beside this file

    art = out / "tiny-bpe-model"
    if art.exists():
        shutil.rmtree(art)
    torch.manual_seed(3)
    model = InfiniTransformer(InfiniConfig.from_name("tiny", vocab_size=vocab_size)).eval()
    with torch.no_grad():  # weights scaled up: greedy continuations that do not repeat one token
        for p in model.parameters():
            p.mul_(6.0)
        for block in model.blocks:
            block.attn.beta.copy_(torch.linspace(-1.0, 1.0, block.attn.beta.numel()))
    return export(model, art)


def text_cases(small: Path, out: Path, cases: dict) -> dict:
    """Artifacts with tokenizers and the Python runtime's greedy text continuations on them."""
    from runtime.manifest import Manifest

    if Manifest.load(small).tokenizer is not None:  # the exporter's own tokenizer
        small_art = small
    else:
        small_art = with_tokenizer(small, out / "small-bytes", (out / cases["bytes"]["tokenizer"]).read_text(),
                                   {"vocab_size": 256, "bos": None, "eos": [], "add_bos": False},
                                   {"max_new_tokens": 40, "temperature": 0.0, "top_k": 0, "top_p": 1.0})
    prompt = "There is an important info hidden inside a lot of irrelevant text. The grass is green. The sky is"
    small_cases = [generate_text(small_art, prompt, 40, [])]
    second = "The grass is green. The sky is blue. The sun is"
    free = generate_text(small_art, second, 40, [])["text"]  # a stop string from inside it: generation stops there
    small_cases.append(generate_text(small_art, second, 40, [free[8:12]] if len(free) >= 12 else ["\n"]))
    bpe_json = (out / cases["bpe"]["tokenizer"]).read_text()
    vocab = cases["bpe"]["vocab_size"]
    tiny = export_tiny_bpe(out, vocab)
    section = {"vocab_size": vocab, "bos": 0, "eos": [1], "add_bos": True}
    generation = {"max_new_tokens": 24, "temperature": 0.0, "top_k": 0, "top_p": 1.0}
    tiny_art = with_tokenizer(tiny, out / "tiny-bpe", bpe_json, section, generation)
    # a second eos: a greedy token of the first prompt (from the 9th on, not seen before it), so generation stops there
    greedy = generate_text(tiny_art, "def main(argv=None):", 24, [])["greedy_ids"]
    section["eos"] = [1, next(t for i, t in enumerate(greedy) if i >= 8 and t not in greedy[:i])]
    tiny_art = with_tokenizer(tiny, out / "tiny-bpe", bpe_json, section, generation)
    tiny_cases = [generate_text(tiny_art, p, n, stop) for p, n, stop in (
        ("def main(argv=None):", 24, []),
        ("Straße, 日本語 and 🙂: ", 24, []),
        ("    return self", 24, []),
        ("import os\n", 40, []),
    )]
    # a stop string taken from inside an unstopped continuation
    free = tiny_cases[2]["text"]
    if len(free) >= 6:
        tiny_cases.append(generate_text(tiny_art, "    return self", 24, [free[3:6], "\u0000never"]))
    shutil.rmtree(tiny)  # the copy with the tokenizer is what the tests open
    return {"small": {"artifact": str(small_art.resolve()), "cases": small_cases},
            "tiny-bpe": {"artifact": str(tiny_art.resolve()), "cases": tiny_cases}}


def write(small: Path, out: Path) -> dict:
    """Every tokenizer golden into ``out``; returns the index entry."""
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        raise SystemExit("the tokenizer goldens need the tokenizers library: .venv/bin/pip install tokenizers") from None
    out.mkdir(parents=True, exist_ok=True)
    lines = mixed_lines()
    cases = encode_cases(out, lines)
    return {"lines": "lines.json", "tokenizers": cases, "text": text_cases(small, out, cases)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", required=True, help="the bundled model's ONNX artifact")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    index = write(Path(args.small), Path(args.out))
    Path(args.out, "index.json").write_text(json.dumps(index, indent=2) + "\n")
    print(json.dumps({k: v["round_trips"] for k, v in index["tokenizers"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
