"""Text <-> token ids with a Hugging Face ``tokenizer.json`` (the ``tokenizers`` library), torch-free.

The file comes with an artifact and is untrusted: it is read once (at most ``MAX_TOKENIZER_BYTES``), its sha256
compared with the manifest's before anything else, its JSON parsed and shape-checked, and only then handed to
``tokenizers.Tokenizer.from_str``. Every failure is a ``TokenizerError`` naming the problem.
"""
from __future__ import annotations

import hashlib
import json
import os
import reprlib
import stat

import numpy as np

from .errors import TokenizerError
from .tokenizer_section import TokenizerInfo

MAX_TOKENIZER_BYTES = 64 << 20  # real ones are 2-35 MB (Llama 3: 9 MB, Gemma 3: 33 MB)
MAX_TOKEN_ID = (1 << 31) - 1
MODEL_TYPES = ("BPE", "WordPiece", "WordLevel", "Unigram")
STREAM_CONTEXT = 5  # earlier tokens a TextStream decodes along with the new ones (leading spaces, merges)


def read_tokenizer_bytes(path: str | os.PathLike, max_bytes: int = MAX_TOKENIZER_BYTES) -> bytes:
    """The bytes of a tokenizer file: a regular file of at most ``max_bytes`` bytes."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise TokenizerError(f"tokenizer file {path} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
        raise TokenizerError(f"tokenizer file {path} is not a regular file of at most {max_bytes:,} bytes "
                             f"({info.st_size:,} bytes)")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TokenizerError(f"tokenizer file {path} grew past {max_bytes:,} bytes while it was read")
    return data


def _ids(where: str, pairs) -> int:
    """The largest id of (token, id) pairs, each a string and an integer in [0, 2^31)."""
    top = -1
    for token, i in pairs:
        if not isinstance(token, str) or not isinstance(i, int) or isinstance(i, bool) or not 0 <= i <= MAX_TOKEN_ID:
            raise TokenizerError(f"{where} holds {reprlib.repr((token, i))}; expected a token string "
                                 f"and an id in [0, {MAX_TOKEN_ID}]")
        top = max(top, i)
    return top


def check_tokenizer_json(doc, where: str = "tokenizer.json") -> int:
    """Check the shape of a parsed ``tokenizer.json`` (an object with a known ``model``, its vocabulary, the added
    tokens) and return its vocabulary size: the largest id + 1."""
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise TokenizerError(f"{where} is not a tokenizer: expected a JSON object with a 'model' object (the "
                             "tokenizers library's tokenizer.json)")
    model = doc["model"]
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind not in MODEL_TYPES:
        raise TokenizerError(f"{where} has model type {reprlib.repr(kind)}; expected one of {MODEL_TYPES}")
    vocab = model.get("vocab")
    if kind == "Unigram":
        if not isinstance(vocab, list) or not all(isinstance(e, list) and len(e) == 2 for e in vocab):
            raise TokenizerError(f"{where} Unigram model.vocab is not a list of [piece, score] pairs")
        top = len(vocab) - 1
        if len(vocab) > MAX_TOKEN_ID or not all(isinstance(e[0], str) for e in vocab):
            raise TokenizerError(f"{where} Unigram model.vocab holds a piece that is not a string")
    else:
        if not isinstance(vocab, dict):
            raise TokenizerError(f"{where} {kind} model.vocab is {type(vocab).__name__}; expected an object of "
                                 "token -> id")
        top = _ids(f"{where} model.vocab", vocab.items())
    added = doc.get("added_tokens", [])
    if not isinstance(added, list) or not all(isinstance(a, dict) for a in added):
        raise TokenizerError(f"{where} added_tokens is not a list of objects")
    top = max(top, _ids(f"{where} added_tokens", ((a.get("content"), a.get("id")) for a in added)))
    if top < 0:
        raise TokenizerError(f"{where} has an empty vocabulary; expected at least one token")
    return top + 1


class Tokenizer:
    """A checked ``tokenizers.Tokenizer`` and the manifest's special ids (bos, eos, add_bos)."""

    def __init__(self, backend, vocab_size: int, info: TokenizerInfo | None = None):
        self.backend = backend  # the tokenizers.Tokenizer
        self.vocab_size = vocab_size  # largest id + 1
        self.info = info
        self.bos = None if info is None else info.bos
        self.eos = () if info is None else info.eos
        self.add_bos = bool(info is not None and info.add_bos)

    @classmethod
    def from_bytes(cls, data: bytes, info: TokenizerInfo | None = None, where: str = "tokenizer.json") -> "Tokenizer":
        """Parse and check ``data`` (a ``tokenizer.json``), then build the tokenizer."""
        try:
            text = data.decode("utf-8")
            doc = json.loads(text)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError are ValueErrors
            raise TokenizerError(f"{where} is not valid JSON: {str(exc)[:200]}") from None
        vocab = check_tokenizer_json(doc, where)
        del doc
        try:
            import tokenizers
            backend = tokenizers.Tokenizer.from_str(text)
        except ImportError:
            raise TokenizerError("text needs the tokenizers library: pip install tokenizers") from None
        except BaseException as exc:  # a Rust panic surfaces as a BaseException
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise TokenizerError(f"{where} is not a tokenizer the tokenizers library reads: "
                                 f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None
        real = max(backend.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        if real != vocab:
            raise TokenizerError(f"{where} declares ids up to {vocab - 1} but the tokenizer built from it has "
                                 f"{real} ids; expected the same")
        if info is not None and info.vocab_size != vocab:
            raise TokenizerError(f"{where} has a vocabulary of {vocab} ids (largest id + 1), the manifest's "
                                 f"tokenizer.vocab_size says {info.vocab_size}")
        return cls(backend, vocab, info)

    @classmethod
    def from_file(cls, path: str | os.PathLike, info: TokenizerInfo | None = None, sha256: str | None = None,
                  max_bytes: int = MAX_TOKENIZER_BYTES) -> "Tokenizer":
        """Read ``path`` once (size cap), compare its sha256 with ``sha256`` where given, parse and check it."""
        data = read_tokenizer_bytes(path, max_bytes)
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise TokenizerError(f"tokenizer file {path} has sha256 {hashlib.sha256(data).hexdigest()[:16]}..., the "
                                 f"manifest says {sha256[:16]}... (corrupt or replaced)")
        return cls.from_bytes(data, info, str(path))

    @classmethod
    def from_manifest(cls, manifest, max_bytes: int = MAX_TOKENIZER_BYTES) -> "Tokenizer | None":
        """The artifact's tokenizer (confined path, size, sha256 checked), or None where it has none."""
        info = manifest.tokenizer
        if info is None:
            return None
        return cls.from_file(manifest.file_path(info.file), info, manifest.files[info.file].sha256,
                             max_bytes)

    def encode(self, text: str, add_bos: bool | None = None) -> np.ndarray:
        """Token ids of ``text`` (int64, 1-D), the tokenizer's own special tokens off; ``bos`` prepended when
        ``add_bos`` (None: the manifest's ``add_bos``)."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode takes a str, got {type(text).__name__}")
        ids = self.backend.encode(text, add_special_tokens=False).ids
        bos = self.add_bos if add_bos is None else add_bos
        if bos and self.bos is not None:
            ids = [self.bos, *ids]
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """The text of ``ids`` (a sequence or 1-D array of integers)."""
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise TokenizerError(f"decode takes a 1-D sequence of integer ids, got shape {arr.shape} {arr.dtype}")
        return self.backend.decode([int(i) for i in arr], skip_special_tokens=skip_special_tokens)

    def stream(self, context=()) -> "TextStream":
        """A ``TextStream`` continuing after ``context`` (the prompt's ids: the first pieces decode in context)."""
        return TextStream(self, context)


class TextStream:
    """Incremental detokenization: ``put(id)`` returns the new text that is stable, "" while it is not.

    A window of recent ids is decoded and only the text past the window's earlier part is emitted; text ending in
    U+FFFD (a character whose bytes are not all there yet, a byte-level or byte-fallback token of a multi-byte
    character) is held until the character is complete. The pieces joined equal the decoding of all the ids
    put, ``flush()`` giving the rest at the end."""

    def __init__(self, tokenizer: Tokenizer, context=()):
        ctx = [int(i) for i in context][-STREAM_CONTEXT:]
        self._tok = tokenizer
        self._ids = ctx
        self._prefix = 0  # window start
        self._read = len(ctx)  # ids before this were emitted (or are context)

    def _text(self, lo: int, hi: int) -> str:
        return self._tok.decode(self._ids[lo:hi])

    def put(self, token_id) -> str:
        """Add one id; return the text it completes (possibly "")."""
        self._ids.append(int(token_id))
        before = self._text(self._prefix, self._read)
        now = self._text(self._prefix, len(self._ids))
        if len(now) > len(before) and not now.endswith("\ufffd") and now.startswith(before):
            self._prefix, self._read = self._read, len(self._ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        """The text not yet returned (an incomplete character at the end decodes as U+FFFD)."""
        before = self._text(self._prefix, self._read)
        now = self._text(self._prefix, len(self._ids))
        self._prefix = self._read = len(self._ids)
        return now[len(os.path.commonprefix([before, now])):]  # a decoder that rewrote earlier text: the rest
