"""Language modelling on the Python standard library's source: the corpus, its split by file, the BPE tokenizer
and the token streams the text model trains and is scored on.

- the corpus is every ``*.py`` file under the standard library's folder, minus test suites, generated tables and
  binary-ish files (:func:`list_corpus` says why each excluded file is out);
- a file is held out when the SHA-256 of its path (relative to the library root, ``/`` separators) falls in the
  first ``HELDOUT_PERCENT`` of 100 buckets: deterministic, independent of the machine and of the other files;
- the tokenizer is a byte-fallback BPE (``tokenizers``) trained on the training files only; ``<bos>`` starts every
  encoded text (its post-processor adds it), ``<eos>`` ends every file of a stream;
- a stream is the files in path order, ``<bos> text <eos>`` each, as one array of token ids;
- more training text (never held out) comes from permissively licensed packages installed beside the interpreter
  (``EXTRA_PACKAGES``), the same exclusions applied, minus any file that copies a held-out file's lines.
"""
from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from importlib import metadata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HELDOUT_PERCENT = 4
BOS, EOS = "<bos>", "<eos>"
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]
# runs of letters, of digits, of other symbols (each with one leading space), and whitespace (indentation kept
# whole, the last space going to the next word)
PRETOKENIZE = r" ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_EXCLUDED_DIRS = ("test", "tests", "idle_test", "site-packages", "__pycache__", "lib-dynload", "ensurepip")
_MAX_BYTES = 1 << 20  # larger files are data, not code
_MAX_NON_ASCII = 0.02  # share of non-ASCII characters above which a file is a table (codecs, ...)
# more training text: (import name, distribution name), each under a permissive licence (BSD, MIT, Apache-2.0, or
# matplotlib's PSF-style one; what each package's metadata says is recorded in split.json)
EXTRA_PACKAGES = (("numpy", "numpy"), ("scipy", "scipy"), ("pandas", "pandas"), ("sympy", "sympy"),
                  ("networkx", "networkx"), ("sklearn", "scikit-learn"), ("matplotlib", "matplotlib"),
                  ("setuptools", "setuptools"), ("pip", "pip"), ("onnx", "onnx"), ("onnxscript", "onnxscript"),
                  ("jinja2", "jinja2"), ("huggingface_hub", "huggingface_hub"))
# folders of the extra packages that hold other projects' code: vendored copies (their own licences) and forks of
# the standard library's distutils
_THIRD_PARTY_DIRS = ("_vendor", "vendor", "vendored", "externals", "_externals", "_distutils", "distutils")
_COPY_LINE_CHARS = 30  # lines at least this long (stripped) count when looking for copies of held-out files
_COPY_MIN_LINES = 3  # a file sharing fewer long lines than this with every held-out file is no copy of any
_COPY_SHARE_OWN = 0.2  # ... else it is one when the shared lines are this share of its own long lines
_COPY_SHARE_HELD = 0.05  # ... or this share of that held-out file's long lines
COPY = "shares lines with a held-out file"
THIRD_PARTY = "vendored or forked code"


def stdlib_root() -> Path:
    """The running interpreter's standard-library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def exclusion_reason(rel: str, data: bytes) -> str | None:
    """Why the file ``rel`` (relative path) with contents ``data`` is not in the corpus, or None."""
    parts = rel.split("/")
    if any(p in _EXCLUDED_DIRS or p.startswith("config-") for p in parts[:-1]):
        return "test suite, installed packages or build files"
    if parts[-1].startswith(("_sysconfigdata", "test_")):
        return "generated or test file"
    if len(data) > _MAX_BYTES:
        return "larger than 1 MB"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    if any(ch in text for ch in "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x1b\x7f"):
        return "control characters (binary-ish)"
    if not text.strip():
        return "empty"
    if sum(ord(c) > 127 for c in text) > _MAX_NON_ASCII * len(text):
        return "more than 2% non-ASCII characters (character tables)"
    return None


def list_corpus(root: str | Path) -> tuple[list[str], dict[str, list[str]]]:
    """(included paths, {reason: excluded paths}) of the ``*.py`` files under ``root``, sorted, relative."""
    root = Path(root)
    included, excluded = [], {}
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        why = exclusion_reason(rel, p.read_bytes())
        if why is None:
            included.append(rel)
        else:
            excluded.setdefault(why, []).append(rel)
    return included, excluded


def is_heldout(rel: str) -> bool:
    """Whether the file at relative path ``rel`` is held out (a hash of the path alone)."""
    h = int.from_bytes(hashlib.sha256(rel.encode("utf-8")).digest()[:8], "big")
    return h % 100 < HELDOUT_PERCENT


def make_split(root: str | Path) -> dict:
    """The split of the corpus under ``root``: what split.json holds."""
    included, excluded = list_corpus(root)
    root = Path(root)
    train = [p for p in included if not is_heldout(p)]
    held = [p for p in included if is_heldout(p)]
    size = lambda paths: sum((root / p).stat().st_size for p in paths)  # noqa: E731
    return {"source": "Python standard library, *.py files (PSF licence)",
            "python_version": sys.version.split()[0], "root": str(root),
            "rule": f"held out when int(sha256(path)[:8 bytes]) % 100 < {HELDOUT_PERCENT}; path relative to the root",
            "included": "*.py files, minus " + "; ".join(sorted(excluded)),
            "bytes": {"train": size(train), "heldout": size(held)},
            "excluded": {k: len(v) for k, v in sorted(excluded.items())},
            "train": train, "heldout": held}


def site_root() -> Path:
    """The running interpreter's folder of installed pure-Python packages."""
    return Path(sysconfig.get_paths()["purelib"])


def _licence(meta) -> str:
    if meta.get("License-Expression"):
        return meta["License-Expression"]
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return "; ".join(classifiers) or (meta.get("License") or "unknown").splitlines()[0]


def _long_lines(text: str) -> set[str]:
    return {ln.strip() for ln in text.splitlines() if len(ln.strip()) >= _COPY_LINE_CHARS}


def copies_heldout(lines: set[str], heldout: list[set[str]]) -> bool:
    """Whether a file of these long lines copies any of the held-out files' (each given as its long lines)."""
    for held in heldout:
        shared = len(lines & held)
        if shared >= _COPY_MIN_LINES and (shared >= _COPY_SHARE_OWN * len(lines)
                                          or shared >= _COPY_SHARE_HELD * len(held)):
            return True
    return False


def _package_files(site: Path, name: str, heldout: list[set[str]]) -> tuple[list[str], int, dict[str, list[str]]]:
    """(kept paths, their bytes, {reason: left-out paths}) of one package's ``*.py`` files under ``site``."""
    files, size, excluded = [], 0, {}
    for p in sorted((site / name).rglob("*.py")):
        rel = p.relative_to(site).as_posix()
        data = p.read_bytes()
        why = exclusion_reason(rel, data)
        if why is None and any(d in _THIRD_PARTY_DIRS for d in rel.split("/")[1:-1]):
            why = THIRD_PARTY
        if why is None and copies_heldout(_long_lines(data.decode("utf-8")), heldout):
            why = COPY
        if why is None:
            files.append(rel)
            size += len(data)
        else:
            excluded.setdefault(why, []).append(rel)
    return files, size, excluded


def make_extra(site: str | Path, heldout_texts: list[str], packages=EXTRA_PACKAGES) -> dict:
    """The extra training files: the ``*.py`` files of ``packages`` under ``site`` (paths relative to it), the
    corpus's exclusions applied, minus vendored or forked code and files that share lines with a held-out file
    (``copies_heldout``): what split.json's ``extra`` holds. Versions and licences are those of the distributions
    installed under ``site``."""
    site = Path(site)
    installed = {d.metadata["Name"].lower().replace("_", "-"): d for d in metadata.distributions(path=[str(site)])}
    heldout = [_long_lines(t) for t in heldout_texts]
    out, excluded = [], {}
    for name, dist in packages:
        found = installed.get(dist.lower().replace("_", "-"))
        if found is None or not (site / name).is_dir():
            raise FileNotFoundError(f"extra package {dist} ({name}/) is not installed under {site}: install it or "
                                    "give the folder of installed packages that has it (--site)")
        files, size, left_out = _package_files(site, name, heldout)
        for why, paths in left_out.items():
            excluded.setdefault(why, []).extend(paths)
        out.append({"package": name, "distribution": dist, "version": found.version,
                    "licence": _licence(found.metadata), "bytes": size, "files": files})
    return {"root": str(site), "rule": f"the packages' *.py files, minus the corpus's exclusions, {THIRD_PARTY} "
                                       f"(folders {', '.join(_THIRD_PARTY_DIRS)}) and files that share at least "
                                       f"{_COPY_MIN_LINES} lines of >= {_COPY_LINE_CHARS} characters with a held-out "
                                       f"file, {_COPY_SHARE_OWN:.0%} of their own or {_COPY_SHARE_HELD:.0%} of its; "
                                       "training only",
            "packages": out, "copies_of_heldout_files": excluded.pop(COPY, []),
            "excluded": {k: len(v) for k, v in sorted(excluded.items())}}


def extra_paths(split: dict) -> list[str]:
    """The extra training files of a split.json (relative to its ``extra.root``), in order."""
    return [f for pkg in split.get("extra", {}).get("packages", []) for f in pkg["files"]]


def read_texts(root: str | Path, paths: list[str]) -> list[str]:
    """The texts of ``paths`` under ``root``; a missing file is a FileNotFoundError naming the folder to give."""
    root = Path(root)
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} files of the split are not under {root} (first: {missing[0]}): "
                                "another Python or package version? Give the folder that holds them (--root/--site)")
    return [(root / p).read_bytes().decode("utf-8") for p in paths]


def train_tokenizer(texts, vocab_size: int = 4096, limit_alphabet: int = 160):
    """A byte-fallback BPE of ``vocab_size`` tokens (``<bos>``, ``<eos>``, the 256 byte tokens, then the merges
    learnt on ``texts``). Characters outside the ``limit_alphabet`` most frequent ones encode as their UTF-8 bytes,
    so any text encodes and decodes back exactly."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    n_fixed = 2 + len(BYTE_TOKENS)
    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PRETOKENIZE), behavior="isolated")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_fixed, limit_alphabet=limit_alphabet,
                                  special_tokens=[], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    spec = json.loads(tok.to_str())
    learnt = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {BOS: 0, EOS: 1, **{b: 2 + i for i, b in enumerate(BYTE_TOKENS)}}
    for piece, _ in learnt:
        if piece not in vocab:
            vocab[piece] = len(vocab)
    spec["model"]["vocab"] = vocab
    spec["model"]["byte_fallback"] = True
    spec["model"]["unk_token"] = None
    spec["added_tokens"] = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for i, t in enumerate((BOS, EOS))]
    spec["post_processor"] = None
    spec["decoder"] = None
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, 0)])
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return tok


def load_tokenizer(path: str | Path):
    """The ``tokenizers.Tokenizer`` of a tokenizer.json (or of a folder holding one)."""
    from tokenizers import Tokenizer
    path = Path(path)
    return Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))


def encode_texts(tok, texts) -> np.ndarray:
    """One stream, ``<bos> text <eos>`` per text, as int32 ids."""
    eos = tok.token_to_id(EOS)
    out = []
    for enc in tok.encode_batch(list(texts)):
        out.append(np.asarray(enc.ids + [eos], dtype=np.int32))
    return np.concatenate(out) if out else np.zeros(0, np.int32)


STREAMS_VERSION = 2  # of the cached streams' file (2: with the extra packages' stream)


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass
class TextData:
    """A split's token streams and the bytes of the held-out text."""
    train: np.ndarray  # the standard library's training files
    heldout: np.ndarray
    heldout_bytes: int
    extra: np.ndarray  # the extra packages' files (empty when the split has none)


def load_streams(split_path: str | Path, tokenizer_path: str | Path, cache_dir: str | Path | None = None,
                 root: str | Path | None = None, site: str | Path | None = None) -> TextData:
    """The train, held-out and extra streams of a split.json and tokenizer.json (the standard library under
    ``root``, the extra packages under ``site``, by default where split.json says), from ``cache_dir`` when it holds
    them for this tokenizer and split (keyed by their hashes)."""
    split = json.loads(Path(split_path).read_text())
    root = Path(root or split["root"])
    tok = load_tokenizer(tokenizer_path)
    key = f"v{STREAMS_VERSION}-{file_hash(tokenizer_path)}-{file_hash(split_path)}"
    cache = Path(cache_dir) / f"streams-{key}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        z = np.load(cache)
        return TextData(z["train"], z["heldout"], int(z["heldout_bytes"]), z["extra"])
    held_texts = read_texts(root, split["heldout"])
    extra = extra_paths(split)
    extra_texts = read_texts(site or split["extra"]["root"], extra) if extra else []
    data = TextData(encode_texts(tok, read_texts(root, split["train"])), encode_texts(tok, held_texts),
                    sum(len(t.encode("utf-8")) for t in held_texts), encode_texts(tok, extra_texts))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, train=data.train, heldout=data.heldout, heldout_bytes=data.heldout_bytes, extra=data.extra)
        tmp.replace(cache)
    return data


def sample_windows(rng: np.random.Generator, data: TextData, batch: int, length: int,
                   stdlib_share: float) -> np.ndarray:
    """(batch, length + 1) int64 windows (inputs and shifted targets) at uniform random offsets, each from the
    standard library's training stream with probability ``stdlib_share``, else from the extra packages' stream
    (always the standard library's when there is no extra text)."""
    streams = (("standard library's", data.train, False), ("extra packages'", data.extra, True))
    for name, stream, may_be_empty in streams:
        if len(stream) <= length + 1 and not (may_be_empty and len(stream) == 0):
            raise ValueError(f"the {name} training stream has {len(stream)} tokens: windows of {length + 1} need at "
                             f"least {length + 2}")
    share = stdlib_share if len(data.extra) else 1.0
    rows = []
    for from_stdlib in rng.random(batch) < share:
        stream = data.train if from_stdlib else data.extra
        start = int(rng.integers(0, len(stream) - length - 1))
        rows.append(stream[start:start + length + 1])
    return np.stack(rows).astype(np.int64)
