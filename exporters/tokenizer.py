"""The tokenizer an artifact carries: found, checked against the model before anything is written, then copied.

``prepare_tokenizer`` reads a Hugging Face ``tokenizer.json`` with the runtime's own checked loader, refuses one
whose ids the model has no rows for, finds ``bos``/``eos`` among its special tokens (or takes the names given),
and returns a ``TokenizerPlan``; ``TokenizerPlan.attach`` copies the file into the artifact folder and adds its
``files`` entry and the ``tokenizer`` / ``generation`` sections (``runtime.tokenizer_section``) to the manifest.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from runtime.atomic import atomic_write
from runtime.errors import TokenizerError
from runtime.manifest import FileEntry, Manifest
from runtime.tokenizer import MAX_TOKENIZER_BYTES, Tokenizer, read_tokenizer_bytes
from runtime.tokenizer_section import TOKENIZER_FORMAT, GenerationDefaults, TokenizerInfo

TOKENIZER_FILE = "tokenizer.json"
FILE_KEY = "tokenizer"
BOS_NAMES = ("<bos>", "<s>", "<|begin_of_text|>", "<|startoftext|>", "<|im_start|>", "[BOS]")
EOS_NAMES = ("<eos>", "</s>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "<|end|>",
             "<end_of_turn>", "[EOS]")
NONE = "none"  # --bos-token none / --eos-token none: no such token


@dataclass(frozen=True)
class TokenizerPlan:
    """A checked tokenizer file (its bytes) and the manifest sections it gets."""

    data: bytes
    info: TokenizerInfo
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)

    def files_entry(self) -> FileEntry:
        return FileEntry(TOKENIZER_FILE, hashlib.sha256(self.data).hexdigest(), len(self.data))

    def attach(self, manifest: Manifest) -> Manifest:
        """Write ``tokenizer.json`` into the manifest's folder (atomically); the manifest with its ``files`` entry
        and the ``tokenizer`` / ``generation`` sections."""
        atomic_write(manifest.directory / TOKENIZER_FILE, lambda f: f.write(self.data))
        return manifest.replace(files={**manifest.files, FILE_KEY: self.files_entry()}, tokenizer=self.info,
                                generation=self.generation)


def find_tokenizer(explicit: str | Path | None, checkpoint: str | Path | None) -> Path | None:
    """``explicit`` (``--tokenizer``), else the checkpoint folder's ``tokenizer.json`` where it has one."""
    if explicit:
        return Path(explicit)
    if checkpoint and (Path(checkpoint) / TOKENIZER_FILE).is_file():
        return Path(checkpoint) / TOKENIZER_FILE
    return None


def _special_tokens(tok: Tokenizer) -> dict[str, int]:
    added = tok.backend.get_added_tokens_decoder()  # id -> AddedToken
    return {a.content: i for i, a in added.items() if a.special}


def _token_id(tok: Tokenizer, name: str, what: str) -> int:
    i = tok.backend.token_to_id(name)
    if i is None:
        raise TokenizerError(f"--{what}-token {name!r} is not a token of this tokenizer; expected one of its tokens "
                             f"(special ones: {sorted(_special_tokens(tok))[:20]}) or {NONE!r}")
    return i


def _adds_bos(tok: Tokenizer, bos: int) -> bool:
    """Whether the tokenizer's own post-processor starts a text with ``bos`` (as Llama's and Gemma's do)."""
    for probe in ("a", "0", " "):
        ids = tok.backend.encode(probe, add_special_tokens=True).ids
        if ids:
            return ids[0] == bos
    return False


def special_ids(tok: Tokenizer, bos_token: str | None = None,
                eos_tokens: list[str] | tuple[str, ...] | None = None) -> tuple[int | None, list[int], bool]:
    """``(bos, eos, add_bos)``: by name where given (``"none"``: no such token; a given bos is prepended), else
    the first of ``BOS_NAMES`` and every one of ``EOS_NAMES`` among the special tokens, bos prepended where the
    tokenizer's post-processor puts it first."""
    special = _special_tokens(tok)
    if bos_token is None:
        bos = next((special[n] for n in BOS_NAMES if n in special), None)
        add_bos = bos is not None and _adds_bos(tok, bos)
    elif bos_token.lower() == NONE:
        bos, add_bos = None, False
    else:
        bos, add_bos = _token_id(tok, bos_token, "bos"), True
    if eos_tokens is None:
        eos = [special[n] for n in EOS_NAMES if n in special]
    else:
        names = [n for n in eos_tokens if n.lower() != NONE]
        eos = [_token_id(tok, n, "eos") for n in names]
    return bos, list(dict.fromkeys(eos)), add_bos


def prepare_tokenizer(path: str | Path, model_vocab_size: int, *, bos_token: str | None = None,
                      eos_tokens: list[str] | None = None, generation: GenerationDefaults | dict | None = None,
                      max_bytes: int = MAX_TOKENIZER_BYTES) -> TokenizerPlan:
    """Read and check ``path`` for a model of ``model_vocab_size`` tokens; nothing is written. ``TokenizerError``
    for a file that is too big, not JSON, not a tokenizer, or has ids the model has no rows for."""
    data = read_tokenizer_bytes(path, max_bytes)
    tok = Tokenizer.from_bytes(data, where=str(path))
    if tok.vocab_size > model_vocab_size:
        raise TokenizerError(f"tokenizer {path} has ids up to {tok.vocab_size - 1} (a vocabulary of "
                             f"{tok.vocab_size}) but the model's vocab_size is {model_vocab_size}; expected the "
                             "model's vocab_size >= the tokenizer's largest id + 1")
    bos, eos, add_bos = special_ids(tok, bos_token, eos_tokens)
    info = TokenizerInfo(FILE_KEY, TOKENIZER_FORMAT, tok.vocab_size, bos, tuple(eos), add_bos)
    gen = generation if isinstance(generation, GenerationDefaults) else \
        GenerationDefaults.from_dict({**GenerationDefaults().to_dict(), **(generation or {})})
    TokenizerInfo.from_dict(info.to_dict(), {FILE_KEY: None}, model_vocab_size)  # what the runtime will check
    return TokenizerPlan(data, info, gen)


def byte_level_tokenizer_json() -> str:
    """A byte-level ``tokenizer.json`` where byte b is id b (the bundled model's vocabulary): a BPE model over the
    256 ByteLevel characters in byte order without merges, the ByteLevel pre-tokenizer without regex or prefix
    space, the ByteLevel decoder; no special tokens."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel

    tok = HFTokenizer(models.BPE(vocab={c: b for b, c in enumerate(byte_level_chars())}, merges=[]))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok.to_str(pretty=True) + "\n"


def byte_level_chars() -> list[str]:
    """The ByteLevel character of every byte, in byte order (GPT-2's bytes_to_unicode)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def write_byte_level_tokenizer(path: str | Path) -> Path:
    """Write ``byte_level_tokenizer_json()`` to ``path`` atomically."""
    text = byte_level_tokenizer_json().encode()
    return atomic_write(path, lambda f: f.write(text))


def tokenizer_plan(tokenizer, model_vocab_size: int) -> TokenizerPlan | None:
    """``tokenizer`` as a checked plan: None, a ``TokenizerPlan``, or a path (special tokens found in it)."""
    if tokenizer is None or isinstance(tokenizer, TokenizerPlan):
        if tokenizer is not None and tokenizer.info.vocab_size > model_vocab_size:
            raise TokenizerError(f"the tokenizer has ids up to {tokenizer.info.vocab_size - 1} but the model's "
                                 f"vocab_size is {model_vocab_size}; expected vocab_size >= largest id + 1")
        return tokenizer
    return prepare_tokenizer(tokenizer, model_vocab_size)


def cli_tokenizer(args, model_vocab_size: int) -> TokenizerPlan | None:
    """The plan for ``infini-export export``'s ``--tokenizer`` (or the checkpoint folder's), ``--bos-token``,
    ``--eos-token``."""
    path = find_tokenizer(getattr(args, "tokenizer", None), getattr(args, "checkpoint", None))
    if path is None:
        if args.bos_token or args.eos_token:
            raise TokenizerError("--bos-token / --eos-token need a tokenizer: give --tokenizer tokenizer.json")
        return None
    return prepare_tokenizer(path, model_vocab_size, bos_token=args.bos_token, eos_tokens=args.eos_token)
