"""Text in, text out on an ``InfiniSession``: the artifact's tokenizer, and generation that streams text pieces.

Built on ``InfiniSession.generate_iter`` (one decode call per token). A piece never ends inside a character
(``TextStream``); generation stops at an end-of-text id of the manifest, at a stop string (excluded from the
text; a piece that may be the beginning of one is held until decided) or after ``max_new_tokens``.
"""
from __future__ import annotations

import time

import numpy as np

from .errors import InputError, NoTokenizerError
from .tokenizer import Tokenizer


def load_tokenizer(manifest) -> Tokenizer:
    """The artifact's tokenizer (checked: path, size, sha256); ``NoTokenizerError`` if the artifact has none."""
    tok = Tokenizer.from_manifest(manifest)
    if tok is None:
        raise NoTokenizerError("this artifact has no tokenizer (its manifest has no 'tokenizer' section): it takes "
                               "and gives token ids only; re-export it with --tokenizer tokenizer.json for text")
    return tok


def _stops(stop) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    for s in stops:
        if not isinstance(s, str) or not s:
            raise InputError(f"stop strings must be non-empty strings, got {s!r}")
    return stops


def _held(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of ``text`` that may be the beginning of a stop string."""
    for n in range(min(len(text), max(len(s) for s in stops) - 1), 0, -1):
        if any(s.startswith(text[-n:]) for s in stops):
            return n
    return 0


class TextGeneration:
    """The iterator ``generate_text_iter`` returns: text pieces, then what happened.

    ``ids`` the generated token ids (an end-of-text id included where it stopped there), ``stopped`` one of
    ``"eos"``, ``"stop"``, ``"length"``; ``prompt_tokens``, ``prefill_seconds`` (the prompt through the model) and
    ``decode_seconds`` (the new tokens, their text included)."""

    def __init__(self, session, prompt_ids: np.ndarray, n: int, sampling: tuple, stops: tuple[str, ...]):
        self.ids: list[int] = []
        self.stopped: str | None = None
        self.prompt_tokens = int(prompt_ids.size)
        self.prefill_seconds = self.decode_seconds = 0.0
        self._it = self._run(session, prompt_ids, n, sampling, stops)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        return next(self._it)

    def _run(self, session, prompt_ids, n, sampling, stops):
        tok = session.tokenizer
        eos, stream, held = set(tok.eos), tok.stream(prompt_ids), ""
        saved = session.snapshot()
        try:
            t0 = time.perf_counter()
            session.stream(prompt_ids[None])
            t1 = time.perf_counter()
            self.prefill_seconds = t1 - t0
            for t in session.generate_iter(np.zeros((1, 0), np.int64), n, *sampling):
                t = int(t[0])
                self.ids.append(t)
                if t in eos:
                    self.stopped = "eos"
                    break
                held += stream.put(t)
                piece, held, hit = _split(held, stops)
                self.decode_seconds = time.perf_counter() - t1
                if piece:
                    yield piece
                if hit:
                    self.stopped = "stop"
                    return
            held += stream.flush()
            piece, _, hit = _split(held, stops, final=True)
            self.stopped = self.stopped or ("stop" if hit else "length")
            self.decode_seconds = time.perf_counter() - t1
            if piece:
                yield piece
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit):  # a failure: the session as it was
                session.restore(saved)
            raise


def _split(text: str, stops: tuple[str, ...], final: bool = False) -> tuple[str, str, bool]:
    """(text to give now, text to hold, whether a stop string was found)."""
    if not stops:
        return text, "", False
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if hits:
        return text[:min(hits)], "", True
    keep = 0 if final else _held(text, stops)
    return text[:len(text) - keep], text[len(text) - keep:], False


def generate_text_iter(session, prompt: str, max_new_tokens=None, temperature=None, top_k=None, top_p=None,
                       seed=None, stop=()) -> TextGeneration:
    """Check everything, then return the iterator of text pieces (see ``InfiniSession.generate_text_iter``).
    ``bos`` is prepended (where the manifest says ``add_bos``) on a fresh session only: a prompt that continues a
    session's text gets none."""
    tok = session.tokenizer
    if not isinstance(prompt, str):
        raise InputError(f"the prompt must be a str, got {type(prompt).__name__} (token ids: generate_iter)")
    if session.batch_size != 1:
        raise InputError(f"text generation runs one sequence; the session has batch size {session.batch_size} "
                         "(reset(1))")
    stops = _stops(stop)
    d = session.manifest.generation
    n = d.max_new_tokens if max_new_tokens is None else max_new_tokens
    temp = d.temperature if temperature is None else temperature
    k = d.top_k if top_k is None else top_k
    p = d.top_p if top_p is None else top_p
    _check_sampling(n, temp, k, p)
    ids = tok.encode(prompt, add_bos=tok.add_bos and session.tokens_consumed == 0)
    if ids.size == 0:
        raise InputError(f"the prompt {prompt[:40]!r} encodes to no tokens; expected at least one")
    ids = session.checked_ids(ids, 1)[0]  # ids the model has rows for
    return TextGeneration(session, ids, int(n), (float(temp), int(k) or None, p, seed), stops)


def _check_sampling(n, temperature, top_k, top_p) -> None:
    """The sampling arguments, checked before anything runs (``generate_iter`` checks them only when iterated)."""
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
    if not is_int(n) or n < 0:
        raise InputError(f"max_new_tokens must be None or an integer >= 0, got {n!r}")
    if not isinstance(temperature, (int, float, np.floating)) or isinstance(temperature, bool) or \
            not np.isfinite(temperature) or temperature < 0:
        raise InputError(f"temperature must be None or a finite number >= 0 (0: greedy), got {temperature!r}")
    if not is_int(top_k) or top_k < 0:
        raise InputError(f"top_k must be None or an integer >= 0 (0: no top-k filter), got {top_k!r}")
    if not isinstance(top_p, (int, float, np.floating)) or isinstance(top_p, bool) or not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be None or a number in (0, 1] (1: no nucleus filter), got {top_p!r}")
