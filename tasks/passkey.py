"""Passkey retrieval (Munkhdalai et al. 2024, Table 3; format from the landmark-attention work).

Torch-free: numpy only, so any backend (eager torch, ONNX Runtime, ExecuTorch) can be scored with it.

Tokens are UTF-8 bytes (vocab 256); all the text here is ASCII, so one character is one token.

A prompt of exactly ``length_tokens`` tokens reads::

    <INSTRUCTION> <filler ...><NEEDLE> <filler ...>What is the pass key? The pass key is

- ``INSTRUCTION``: "There is an important info hidden inside a lot of irrelevant text. Find it and memorize
  it. I will quiz you about the important information there." followed by one space (optional,
  ``instruction=False`` drops it and its space);
- the filler: the five sentences of ``FILLER`` repeated, every sentence followed by one space; its
  last sentence is cut at byte granularity (keeping its trailing space) so the prompt has exactly
  ``length_tokens`` tokens. ``length_tokens == min_length()`` gives a prompt with no filler at all;
- ``NEEDLE``: "The pass key is 71432. Remember it. 71432 is the pass key." followed by one space,
  inserted between two filler sentences: after ``round(depth * n)`` of the ``n`` filler sentences.
  ``depth=0`` puts it right after the instruction, ``depth=1`` right before the question;
- the question ``QUESTION`` = "What is the pass key? The pass key is" ends the prompt.

One description, :class:`PromptLayout` (a list of ``(kind, length)`` parts), yields any stretch of tokens of a
prompt (:meth:`PromptLayout.chunk`: a 1M-token prompt streamed in constant memory) and the whole prompt
(:func:`make_sample`, :func:`make_batch`): the same code, so the two are token-for-token equal.

Answer convention: the expected continuation is ``" " + key``, i.e. ``ANSWER_LEN = 6`` tokens, a
space (byte 32) then the five ASCII digits (keys are 10000..99999, no leading zero). Greedy decoding
generates those 6 tokens; an answer is correct when the first run of digits in the decoded text is
exactly the key (``" 71432"`` and ``"71432."`` are correct, ``" 71439"`` and ``" 7143."`` are not).

Sessions (any backend) follow the runtime's ``InfiniSession`` protocol: ``segment_len``, ``tokens_consumed``,
``reset(batch_size)`` and ``stream(ids int64 (B, T)) -> last logits (B, V)``; ``stream`` takes any number of
tokens, keeps the state across calls and handles partial segments itself.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm  # imported up front: a first import mid-run would show as RSS growth with length

VOCAB_SIZE = 256
INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
               "I will quiz you about the important information there.")
FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
NEEDLE_TEMPLATE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
KEY_DIGITS = 5
ANSWER_LEN = 1 + KEY_DIGITS  # " " + 5 digits
KEY_RANGE = (10 ** (KEY_DIGITS - 1), 10 ** KEY_DIGITS)  # keys are drawn from [10000, 100000)

FILLER_UNITS = tuple(s + " " for s in FILLER)  # the filler sentences, each with its trailing space
FILLER_TEXT = "".join(FILLER_UNITS)  # one period of the filler (90 bytes)
_PLACEHOLDER = "0" * KEY_DIGITS
NEEDLE_LEN = len(NEEDLE_TEMPLATE.format(key=_PLACEHOLDER)) + 1  # with its trailing space
# offsets of the two key mentions inside the needle
KEY_OFFSETS = (NEEDLE_TEMPLATE.index("{key}"),
               len(NEEDLE_TEMPLATE.split("{key}")[0] + _PLACEHOLDER + NEEDLE_TEMPLATE.split("{key}")[1]))
_DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8).astype(np.int64)


def encode(text: str) -> np.ndarray:
    """UTF-8 bytes of ``text`` as int64 token ids (T,)."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def decode(ids: Iterable[int]) -> str:
    """Token ids back to text (invalid UTF-8 is replaced, never raises)."""
    return bytes(int(i) & 0xFF for i in ids).decode("utf-8", errors="replace")


def needle_text(key: str) -> str:
    return NEEDLE_TEMPLATE.format(key=key)


def answer_text(key: str) -> str:
    """The expected continuation of a prompt: a space and the five digits."""
    return " " + key


def min_length(instruction: bool = True) -> int:
    """Length in tokens of a prompt with no filler."""
    return (len(INSTRUCTION) + 1 if instruction else 0) + NEEDLE_LEN + len(QUESTION)


def _rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def draw_keys(rng_or_seed, n: int) -> list[str]:
    """``n`` keys of five digits, uniform in ``KEY_RANGE``: an int seed (deterministic), a ``np.random.Generator``
    (consumed) or None. The keys of ``make_batch(n, ..., seed)`` and of ``infini-export passkey``'s cells."""
    return [str(int(k)) for k in _rng(rng_or_seed).integers(*KEY_RANGE, size=n)]


def check_key(key) -> str:
    """``key`` if it is a string of ``KEY_DIGITS`` ASCII digits, else a ValueError naming it."""
    if not (isinstance(key, str) and len(key) == KEY_DIGITS and key.isascii() and key.isdigit()):
        raise ValueError(f"key must be a string of {KEY_DIGITS} digits, got {key!r}")
    return key


def key_digits(keys: Sequence[str]) -> np.ndarray:
    """(B, KEY_DIGITS) int64 token ids of the keys' digits."""
    return np.stack([encode(check_key(k)) for k in keys]) if len(keys) else np.zeros((0, KEY_DIGITS), np.int64)


# ---- the prompt layout -------------------------------------------------------------------------------

_TEXTS = {"instruction": encode(INSTRUCTION + " "), "needle": encode(needle_text(_PLACEHOLDER) + " "),
          "question": encode(QUESTION)}
_FILLER_IDS = encode(FILLER_TEXT)
_UNIT_ENDS = np.cumsum([len(u) for u in FILLER_UNITS])  # (5,) end of each sentence inside the period


@dataclass(frozen=True)
class PromptLayout:
    """Where everything sits in a passkey prompt of ``length`` tokens, key-free.

    ``parts``: ``(kind, n_tokens)`` in prompt order, kinds ``instruction`` / ``filler`` / ``needle`` / ``question``
    (empty parts left out). The two filler parts are one stream of ``FILLER_TEXT`` periods cut by the needle; its
    last byte is always a space (the cut sentence keeps its trailing space).
    """

    length: int
    depth: float
    instruction: bool
    parts: tuple[tuple[str, int], ...]
    needle_start: int  # token position of the needle's first byte ("T" of "The pass key is")
    question_start: int  # token position of "What is the pass key?"
    filler_len: int  # filler tokens in all

    @property
    def needle_end(self) -> int:
        """One past the needle sentence's last byte (its final "."; the needle's trailing space is not counted)."""
        return self.needle_start + NEEDLE_LEN - 1

    @property
    def key_positions(self) -> tuple[int, int]:
        """Token positions of the first digit of the key's two mentions."""
        return tuple(self.needle_start + o for o in KEY_OFFSETS)

    def chunk(self, lo: int, hi: int, keys: Sequence[str]) -> np.ndarray:
        """Tokens ``[lo, hi)`` of the prompt of every key: (len(keys), hi - lo) int64."""
        if not 0 <= lo <= hi <= self.length:
            raise ValueError(f"chunk [{lo}, {hi}) is not inside a prompt of {self.length} tokens")
        out = np.empty(hi - lo, dtype=np.int64)
        start = filler_seen = 0
        for kind, n in self.parts:
            a, b = max(lo, start), min(hi, start + n)
            if a < b:
                idx = np.arange(a - start, b - start)
                if kind == "filler":
                    f = filler_seen + idx  # index into the filler stream
                    out[a - lo:b - lo] = np.where(f == self.filler_len - 1, ord(" "), _FILLER_IDS[f % len(_FILLER_IDS)])
                else:
                    out[a - lo:b - lo] = _TEXTS[kind][idx]
            filler_seen += n if kind == "filler" else 0
            start += n
        rows = np.repeat(out[None, :], len(keys), axis=0)  # (B, hi - lo)
        digits = key_digits(keys)  # (B, 5)
        for p in self.key_positions:
            a, b = max(lo, p), min(hi, p + KEY_DIGITS)
            if a < b:
                rows[:, a - lo:b - lo] = digits[:, a - p:b - p]
        return rows

    def ids(self, keys: Sequence[str]) -> np.ndarray:
        """The whole prompt of every key: (len(keys), length) int64."""
        return self.chunk(0, self.length, keys)

    def prompts(self, keys: Sequence[str]) -> "Prompts":
        """The prompts of ``keys`` as a streamed batch for :func:`greedy_answer` / :func:`score`."""
        return Prompts(self, tuple(check_key(k) for k in keys))


@lru_cache(maxsize=256)
def _cached_layout(length: int, depth: float, instruction: bool) -> PromptLayout:
    budget = length - min_length(instruction)
    period = int(_UNIT_ENDS[-1])
    cycles, rem = divmod(budget, period)
    n_units = len(FILLER_UNITS) * cycles + (int(np.searchsorted(_UNIT_ENDS, rem)) + 1 if rem else 0)
    k = int(round(depth * n_units))  # the needle goes after k filler sentences
    q, r = divmod(k, len(FILLER_UNITS))
    before = min(budget, q * period + (int(_UNIT_ENDS[r - 1]) if r else 0))
    head = len(INSTRUCTION) + 1 if instruction else 0
    parts = (("instruction", head), ("filler", before), ("needle", NEEDLE_LEN), ("filler", budget - before),
             ("question", len(QUESTION)))
    return PromptLayout(length=length, depth=depth, instruction=instruction,
                        parts=tuple((kind, n) for kind, n in parts if n), needle_start=head + before,
                        question_start=length - len(QUESTION), filler_len=budget)


def prompt_layout(length_tokens: int, depth: float, instruction: bool = True) -> PromptLayout:
    """The layout of a prompt of exactly ``length_tokens`` tokens with the needle at ``depth`` in [0, 1]."""
    if isinstance(length_tokens, bool) or not isinstance(length_tokens, (int, np.integer)):
        raise ValueError(f"length_tokens must be an integer, got {length_tokens!r}")
    lo = min_length(instruction)
    if length_tokens < lo:
        raise ValueError(f"length_tokens={length_tokens} is too short: a passkey prompt needs at least {lo} tokens "
                         f"(instruction={instruction})")
    depth = float(depth)
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must lie in [0, 1], got {depth}")
    return _cached_layout(int(length_tokens), depth, bool(instruction))


# ---- materialised prompts ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PasskeySample:
    ids: np.ndarray  # (T,) int64: the prompt, exactly length_tokens tokens, ends with QUESTION
    key: str  # the five digits
    depth: float  # requested depth in [0, 1]
    needle_start: int  # token position of the needle's first byte ("T" of "The pass key is")
    needle_end: int  # one past the needle's last byte (the final "." of the needle sentence)
    key_positions: tuple[int, int]  # token positions of the first digit of the key's 1st and 2nd mentions
    question_start: int  # token position of "What is the pass key?"
    answer_ids: np.ndarray  # (ANSWER_LEN,) int64: " " + key

    @property
    def text(self) -> str:
        return decode(self.ids)

    @property
    def full_ids(self) -> np.ndarray:
        """Prompt followed by the answer: (T + ANSWER_LEN,), for teacher-forced training."""
        return np.concatenate([self.ids, self.answer_ids])


@dataclass(frozen=True)
class PasskeyBatch:
    ids: np.ndarray  # (B, T) int64 prompts
    keys: list[str]  # B keys
    depths: np.ndarray  # (B,) float
    needle_start: np.ndarray  # (B,) int64
    needle_end: np.ndarray  # (B,) int64
    key_positions: np.ndarray  # (B, 2) int64
    question_start: int
    answer_ids: np.ndarray  # (B, ANSWER_LEN) int64

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def full_ids(self) -> np.ndarray:
        """(B, T + ANSWER_LEN): prompts followed by their answers."""
        return np.concatenate([self.ids, self.answer_ids], axis=1)


def answer_ids(keys: Sequence[str]) -> np.ndarray:
    """(B, ANSWER_LEN) int64: a space then the digits of each key."""
    digits = key_digits(keys)
    return np.concatenate([np.full((len(keys), 1), ord(" "), dtype=np.int64), digits], axis=1)


def make_sample(length_tokens: int, depth: float, rng_or_seed=None, *, key: str | None = None,
                instruction: bool = True) -> PasskeySample:
    """One prompt of exactly ``length_tokens`` byte tokens with the needle at ``depth`` in [0, 1].

    ``rng_or_seed``: an int seed (deterministic), a ``np.random.Generator`` (consumed), or None.
    ``key``: force the five digits instead of drawing them.
    """
    layout = prompt_layout(length_tokens, depth, instruction)
    key = check_key(draw_keys(rng_or_seed, 1)[0] if key is None else key)
    return PasskeySample(ids=layout.ids([key])[0], key=key, depth=layout.depth, needle_start=layout.needle_start,
                         needle_end=layout.needle_end, key_positions=layout.key_positions,
                         question_start=layout.question_start, answer_ids=answer_ids([key])[0])


def make_batch(batch_size: int, length_tokens: int, depth, rng_or_seed=None, *,
               instruction: bool = True) -> PasskeyBatch:
    """``batch_size`` prompts of one length, stacked (B, T).

    ``depth``: one float for every row, or a sequence of ``batch_size`` floats (one per row).
    Deterministic for an int seed; row i of ``make_batch(..., seed)`` is generally *not*
    ``make_sample(..., seed)`` (the keys are drawn together).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    depths = np.broadcast_to(np.asarray(depth, dtype=np.float64), (batch_size,)).copy()
    layouts = {float(d): prompt_layout(length_tokens, float(d), instruction) for d in np.unique(depths)}
    keys = draw_keys(rng_or_seed, batch_size)
    ids = np.empty((batch_size, int(length_tokens)), dtype=np.int64)
    needle_start = np.empty(batch_size, dtype=np.int64)
    for d, layout in layouts.items():
        rows = np.nonzero(depths == d)[0]
        ids[rows] = layout.ids([keys[r] for r in rows])
        needle_start[rows] = layout.needle_start
    return PasskeyBatch(ids=ids, keys=keys, depths=depths, needle_start=needle_start,
                        needle_end=needle_start + NEEDLE_LEN - 1,
                        key_positions=needle_start[:, None] + np.asarray(KEY_OFFSETS)[None, :],
                        question_start=layout.question_start, answer_ids=answer_ids(keys))


# ---- answering through any backend ---------------------------------------------------------------------

_DIGIT_RUN = re.compile(r"[0-9]+")


def extract_key(answer: str) -> str | None:
    """The first run of ASCII digits in a decoded answer, or None."""
    match = _DIGIT_RUN.search(answer)
    return match.group(0) if match else None


def is_correct(answer: str, key: str) -> bool:
    """Exact match of the digits: the first digit run of ``answer`` is exactly ``key``."""
    return extract_key(answer) == key


@dataclass(frozen=True)
class Prompts:
    """The prompts of ``keys`` laid out by ``layout``, generated chunk by chunk (never held whole)."""

    layout: PromptLayout
    keys: tuple[str, ...]

    @property
    def length(self) -> int:
        return self.layout.length

    def __len__(self) -> int:
        return len(self.keys)

    def chunk(self, lo: int, hi: int) -> np.ndarray:
        return self.layout.chunk(lo, hi, self.keys)

    def rows(self, a: int, b: int) -> "Prompts":
        return Prompts(self.layout, self.keys[a:b])


@dataclass(frozen=True)
class TokenRows:
    """Prompts already materialised: (B, T) token ids."""

    ids: np.ndarray

    @property
    def length(self) -> int:
        return self.ids.shape[1]

    def __len__(self) -> int:
        return self.ids.shape[0]

    def chunk(self, lo: int, hi: int) -> np.ndarray:
        return np.ascontiguousarray(self.ids[:, lo:hi], dtype=np.int64)

    def rows(self, a: int, b: int) -> "TokenRows":
        return TokenRows(self.ids[a:b])


def _as_prompts(prompts) -> Prompts | TokenRows:
    if isinstance(prompts, (Prompts, TokenRows)):
        return prompts
    if isinstance(prompts, PasskeyBatch):
        return TokenRows(prompts.ids)
    ids = np.asarray(prompts)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.shape[1] < 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"prompts must be (batch, time) integer token ids, got {ids.dtype} of shape {ids.shape}")
    return TokenRows(ids)


def greedy_answer(session, prompts, n_tokens: int = ANSWER_LEN, *, memory: bool = True, chunk: int | None = None,
                  progress: bool = False) -> list[str]:
    """Greedy continuation of each prompt, decoded to text (``n_tokens`` tokens each).

    ``prompts``: :class:`Prompts` (streamed), a :class:`PasskeyBatch` or (B, T) token ids. The session is reset to
    the batch size, streamed the prompts ``chunk`` tokens at a time (default 64 segments), then each argmax token
    in turn; the last generated token is not fed. ``memory=False`` is the memory-disabled control: the state is
    reset at every segment boundary, so only the prompt's last (partial) segment is fed, from a zero state.
    ``progress``: a bar on a terminal for prompts of more than 8 chunks.
    """
    prompts = _as_prompts(prompts)
    N, B, L = session.segment_len, len(prompts), prompts.length
    session.reset(B)
    chunk = chunk or 64 * N
    starts = range(0 if memory else (L - 1) // N * N, L, chunk)
    if progress and len(starts) > 8 and sys.stderr.isatty():
        starts = tqdm(starts, desc=f"{L:,} tokens x{B}", unit="chunk", leave=False)
    for lo in starts:
        last = np.asarray(session.stream(prompts.chunk(lo, min(L, lo + chunk))))
    if last.shape[0] != B or last.ndim != 2:
        raise ValueError(f"session.stream returned logits of shape {last.shape}, expected ({B}, vocab)")
    out = np.empty((B, n_tokens), dtype=np.int64)
    for i in range(n_tokens):
        out[:, i] = np.argmax(last, axis=-1)
        if i + 1 < n_tokens:
            if not memory and session.tokens_consumed % N == 0:  # a boundary: the control forgets
                session.reset(B)
            last = np.asarray(session.stream(out[:, i:i + 1].copy()))
    return [decode(row) for row in out]


@dataclass(frozen=True)
class PasskeyScore:
    accuracy: float  # exact-match rate in [0, 1]
    correct: list[bool]
    answers: list[str]  # decoded greedy answers
    keys: list[str]

    def __len__(self) -> int:
        return len(self.correct)


def score(session, prompts, keys: Sequence[str], *, batch_size: int | None = None) -> PasskeyScore:
    """Greedy-decode every prompt and exact-match the digits against ``keys``.

    ``prompts`` as for :func:`greedy_answer`; ``batch_size`` splits them into sub-batches (None: all at once).
    """
    prompts = _as_prompts(prompts)
    keys = [str(k) for k in keys]
    if len(keys) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(keys)} keys")
    step = batch_size or len(prompts)
    answers: list[str] = []
    for start in range(0, len(prompts), step):
        answers.extend(greedy_answer(session, prompts.rows(start, start + step)))
    correct = [is_correct(a, k) for a, k in zip(answers, keys)]
    return PasskeyScore(accuracy=float(np.mean(correct)) if correct else 0.0, correct=correct, answers=answers,
                        keys=keys)


def score_batch(session, batch: PasskeyBatch, *, batch_size: int | None = None) -> PasskeyScore:
    return score(session, batch, batch.keys, batch_size=batch_size)
