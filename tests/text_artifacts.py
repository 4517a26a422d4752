"""A small byte-level BPE tokenizer trained here, and the ``tiny`` preset exported with it (once per test run)."""
from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import torch

SPECIALS = ["<s>", "</s>", "<pad>"]
# text with multi-byte characters (2-, 3- and 4-byte UTF-8), so that merges make tokens of partial characters
EXTRA = "Grüße aus Köln, naïve café. 世界你好，世界和平。 日本語のテキスト。 🙂🙃 emoji 🚀✨ and ∑ ≤ ∞. "
_CACHE: dict = {}


def corpus(limit: int = 12_000) -> str:
    """A few KB of Python standard library source plus multi-byte text."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    text = "".join((lib / name).read_text(encoding="utf-8") for name in ("json/decoder.py", "textwrap.py"))
    return text[:limit] + EXTRA * 30


def train_tokenizer(path: Path, vocab_size: int = 360) -> Path:
    """A byte-level BPE (GPT-2 style) of ``vocab_size`` tokens with ``<s>``, ``</s>``, ``<pad>`` special."""
    from tokenizers import Tokenizer, decoders, models, trainers
    from tokenizers.pre_tokenizers import ByteLevel

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=ByteLevel.alphabet(),
                                  special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator([corpus()], trainer)
    tok.save(str(path))
    return path


def tokenizer_vocab(path: Path) -> int:
    from tokenizers import Tokenizer
    return max(Tokenizer.from_file(str(path)).get_vocab().values()) + 1


def make_text_model(tokenizer_path: Path, seed: int = 0):
    """The tiny preset over the tokenizer's vocabulary, its LM head set so that each token of ``EXTRA`` predicts
    the token that follows it there: a greedy continuation walks through multi-byte characters split over
    tokens (random weights alone repeat one token)."""
    from tokenizers import Tokenizer

    from infini_export import InfiniConfig, InfiniTransformer
    tok = Tokenizer.from_file(str(tokenizer_path))
    ids = tok.encode(EXTRA, add_special_tokens=False).ids
    successor: dict[int, int] = {}
    for a, b in zip(ids, ids[1:]):
        successor.setdefault(a, b)
    torch.manual_seed(seed)
    model = InfiniTransformer(InfiniConfig.from_name("tiny", vocab_size=tokenizer_vocab(tokenizer_path),
                                                     tie_embeddings=False)).eval()
    with torch.no_grad():
        for a, b in successor.items():
            model.lm_head.weight[b] = 3 * model.embed.weight[a]
    return model


def text_artifact(tmp_path_factory):
    """(model, artifact folder, tokenizer.json path): the tiny preset, its vocabulary the tokenizer's, exported to
    ONNX with the tokenizer, ``<s>`` prepended to prompts; exported once per test run (tests/shared.py)."""
    if "art" not in _CACHE:
        from tests.shared import build_once, shared_root

        def build(folder: Path) -> dict:
            from exporters.pipeline import export_artifact
            from exporters.tokenizer import prepare_tokenizer
            folder.mkdir(parents=True, exist_ok=True)
            path = train_tokenizer(folder / "trained.json")
            model = make_text_model(path)
            plan = prepare_tokenizer(path, model.cfg.vocab_size, bos_token="<s>")
            export_artifact(model, folder / "onnx", "onnx", parity_segments=2, progress=False, log=None,
                            tokenizer=plan)
            return {}
        folder, _ = build_once(shared_root(tmp_path_factory), "text", build)
        path = folder / "trained.json"
        _CACHE["art"] = (make_text_model(path), folder / "onnx", path)
    return _CACHE["art"]


def copy_with(art: Path, dest: Path, **sections) -> Path:
    """A copy of the artifact whose manifest has ``sections`` replaced (a key set to None is removed)."""
    shutil.copytree(art, dest)
    man = json.loads((dest / "manifest.json").read_text())
    for key, value in sections.items():
        if value is None:
            man.pop(key, None)
        else:
            man[key] = value
    (dest / "manifest.json").write_text(json.dumps(man))
    return dest
