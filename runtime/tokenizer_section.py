"""The manifest's ``tokenizer`` and ``generation`` sections: what text an artifact speaks and how it generates.

    "files": {..., "tokenizer": {"path": "tokenizer.json", "sha256": "...", "bytes": N}},
    "tokenizer": {"file": "tokenizer", "format": "huggingface-tokenizers", "vocab_size": <largest id + 1>,
                  "bos": <int or null>, "eos": [<int>, ...], "add_bos": <bool>},
    "generation": {"max_new_tokens": 128, "temperature": 0.0, "top_k": 0, "top_p": 1.0}

Both sections are optional: without ``tokenizer`` an artifact takes and gives token ids only. A runtime encodes
with the tokenizer's special tokens off and prepends ``bos`` itself when ``add_bos``; generation stops at any id
in ``eos``. Temperature 0 is greedy, ``top_k`` 0 and ``top_p`` 1 switch those filters off. Checked without any
file system access.
"""
from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass

from .errors import ManifestError

TOKENIZER_FORMAT = "huggingface-tokenizers"
MAX_NEW_TOKENS = 1 << 30  # a sanity bound on the manifest's default


def _fail(where: str, value, expected: str):
    raise ManifestError(f"manifest {where} is {reprlib.repr(value)}; expected {expected}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _object(where: str, d) -> dict:
    if not isinstance(d, dict):
        _fail(where, d, "a JSON object")
    return d


def _require(where: str, d: dict, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        _fail(where, d, f"an object with the keys {list(keys)} (missing {missing})")


def _token_id(where: str, value, vocab: int) -> int:
    if not _is_int(value) or not 0 <= value < vocab:
        _fail(where, value, f"a token id in [0, {vocab}) (the tokenizer's vocab_size)")
    return value


@dataclass(frozen=True)
class TokenizerInfo:
    """The ``tokenizer`` section: the tokenizer file (a key of ``files``), its size, and its special ids."""

    file: str  # key of the manifest's files
    format: str  # "huggingface-tokenizers": the tokenizers library's tokenizer.json
    vocab_size: int  # the tokenizer's largest id + 1 (<= the model's vocab_size)
    bos: int | None  # prepended by the runtime when add_bos
    eos: tuple[int, ...]  # generation stops at any of these
    add_bos: bool

    @classmethod
    def from_dict(cls, d, files: dict, vocab_size: int) -> "TokenizerInfo":
        """Check the section against the manifest's ``files`` and the model's ``vocab_size``; ``ManifestError``
        names the field and what was expected."""
        _object("tokenizer", d)
        _require("tokenizer", d, ("file", "format", "vocab_size", "bos", "eos", "add_bos"))
        if not isinstance(d["file"], str) or d["file"] not in files:
            _fail("tokenizer.file", d["file"], f"the key of an entry in files (one of {sorted(files)})")
        if d["format"] != TOKENIZER_FORMAT:
            _fail("tokenizer.format", d["format"], repr(TOKENIZER_FORMAT))
        vocab = d["vocab_size"]
        if not _is_int(vocab) or not 1 <= vocab <= vocab_size:
            _fail("tokenizer.vocab_size", vocab, f"an integer in [1, {vocab_size}] (the model's vocab_size): the "
                                                 "model must have a row for every id the tokenizer gives")
        bos = d["bos"]
        if bos is not None:
            _token_id("tokenizer.bos", bos, vocab)
        eos = d["eos"]
        if not isinstance(eos, list):
            _fail("tokenizer.eos", eos, "a JSON array of token ids (empty: no end-of-text token)")
        for i, e in enumerate(eos):
            _token_id(f"tokenizer.eos[{i}]", e, vocab)
        if len(set(eos)) != len(eos):
            _fail("tokenizer.eos", eos, "distinct token ids")
        if not isinstance(d["add_bos"], bool):
            _fail("tokenizer.add_bos", d["add_bos"], "true or false")
        if d["add_bos"] and bos is None:
            _fail("tokenizer.add_bos", True, "false when bos is null (there is no token to prepend)")
        return cls(d["file"], d["format"], vocab, bos, tuple(eos), d["add_bos"])

    def to_dict(self) -> dict:
        return {"file": self.file, "format": self.format, "vocab_size": self.vocab_size, "bos": self.bos,
                "eos": list(self.eos), "add_bos": self.add_bos}


@dataclass(frozen=True)
class GenerationDefaults:
    """The ``generation`` section: the sampling a text call uses for every argument it is not given."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1: no nucleus filter

    @classmethod
    def from_dict(cls, d, files: dict | None = None, vocab_size: int | None = None) -> "GenerationDefaults":
        """Check the section (``files`` and ``vocab_size`` are unused: the same signature as ``TokenizerInfo``)."""
        _object("generation", d)
        _require("generation", d, ("max_new_tokens", "temperature", "top_k", "top_p"))
        n, temp, k, p = d["max_new_tokens"], d["temperature"], d["top_k"], d["top_p"]
        if not _is_int(n) or not 0 <= n <= MAX_NEW_TOKENS:
            _fail("generation.max_new_tokens", n, f"an integer in [0, {MAX_NEW_TOKENS}]")
        if not _is_number(temp) or temp < 0:
            _fail("generation.temperature", temp, "a finite number >= 0 (0: greedy)")
        if not _is_int(k) or k < 0:
            _fail("generation.top_k", k, "an integer >= 0 (0: no top-k filter)")
        if not _is_number(p) or not 0 < p <= 1:
            _fail("generation.top_p", p, "a number in (0, 1] (1: no nucleus filter)")
        return cls(n, float(temp), k, float(p))

    def to_dict(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_k": self.top_k,
                "top_p": self.top_p}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def tokenizer_info(d: dict) -> TokenizerInfo | None:
    """The checked ``tokenizer`` section of a manifest document, or None where it has none (ids only)."""
    section = d.get("tokenizer")
    return None if section is None else TokenizerInfo.from_dict(section, d["files"], d["vocab_size"])


def generation_defaults(d: dict) -> GenerationDefaults:
    """The checked ``generation`` section of a manifest document, or the built-in defaults where it has none."""
    section = d.get("generation")
    return GenerationDefaults() if section is None else GenerationDefaults.from_dict(section, d["files"],
                                                                                     d["vocab_size"])


def check_text_sections(d: dict) -> None:
    """Raise ``ManifestError`` unless the document's ``tokenizer`` and ``generation`` sections (where present)
    are well formed; called by the manifest check after ``files`` and ``vocab_size`` were checked."""
    tokenizer_info(d)
    generation_defaults(d)
