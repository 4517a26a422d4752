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

Answer convention: the expected continuation is ``" " + key``, i.e. ``ANSWER_LEN = 6`` tokens, a
space (byte 32) then the five ASCII digits (keys are 10000..99999, no leading zero). Greedy decoding
generates those 6 tokens; an answer is correct when the first run of digits in the decoded text is
exactly the key (``" 71432"`` and ``"71432."`` are correct, ``" 71439"`` and ``" 7143."`` are not).

Sessions (any backend): a duck-typed object with ``reset()`` and ``feed(ids: np.ndarray int64 (B, T))
-> np.ndarray logits (B, T, V)``. ``feed`` streams any number of tokens, keeps the state across
calls and handles partial segments itself.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

VOCAB_SIZE = 256
INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
               "I will quiz you about the important information there.")
FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
NEEDLE_TEMPLATE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
KEY_DIGITS = 5
ANSWER_LEN = 1 + KEY_DIGITS  # " " + 5 digits
_KEY_LO, _KEY_HI = 10 ** (KEY_DIGITS - 1), 10 ** KEY_DIGITS  # 10000 .. 99999

_PLACEHOLDER = "0" * KEY_DIGITS
_NEEDLE_LEN = len(NEEDLE_TEMPLATE.format(key=_PLACEHOLDER)) + 1  # with its trailing space
# offsets of the two key mentions inside the needle
KEY_OFFSETS = (NEEDLE_TEMPLATE.index("{key}"),
               len(NEEDLE_TEMPLATE.split("{key}")[0] + _PLACEHOLDER + NEEDLE_TEMPLATE.split("{key}")[1]))
_FILLER_UNITS = tuple(s + " " for s in FILLER)
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
    return (len(INSTRUCTION) + 1 if instruction else 0) + _NEEDLE_LEN + len(QUESTION)


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


def _rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _random_keys(rng: np.random.Generator, n: int) -> list[str]:
    return [str(int(k)) for k in rng.integers(_KEY_LO, _KEY_HI, size=n)]


def _layout(length_tokens: int, depth: float, instruction: bool) -> tuple[str, str, int, int]:
    """(text before the needle, filler after the needle, needle_start, question_start), key-free."""
    if isinstance(length_tokens, bool) or not isinstance(length_tokens, (int, np.integer)):
        raise ValueError(f"length_tokens must be an integer, got {length_tokens!r}")
    lo = min_length(instruction)
    if length_tokens < lo:
        raise ValueError(f"length_tokens={length_tokens} is too short: a passkey prompt needs at least {lo} tokens "
                         f"(instruction={instruction})")
    depth = float(depth)
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must lie in [0, 1], got {depth}")
    budget = int(length_tokens) - lo
    units: list[str] = []
    used = 0
    while used < budget:
        unit = _FILLER_UNITS[len(units) % len(_FILLER_UNITS)]
        room = budget - used
        if len(unit) > room:  # cut the last sentence, keep its trailing space
            unit = unit[:room - 1] + " "
        units.append(unit)
        used += len(unit)
    k = int(round(depth * len(units)))
    head = (INSTRUCTION + " " if instruction else "") + "".join(units[:k])
    tail = "".join(units[k:])
    needle_start = len(head)
    question_start = needle_start + _NEEDLE_LEN + len(tail)
    assert question_start + len(QUESTION) == length_tokens
    return head, tail, needle_start, question_start


_TEMPLATE_CACHE: dict[tuple[int, float, bool], tuple[np.ndarray, int, int]] = {}


def _template(length_tokens: int, depth: float, instruction: bool) -> tuple[np.ndarray, int, int]:
    """Token ids with a placeholder key (cached), needle_start, question_start."""
    cache_key = (int(length_tokens), float(depth), bool(instruction))
    hit = _TEMPLATE_CACHE.get(cache_key)
    if hit is None:
        head, tail, needle_start, question_start = _layout(length_tokens, depth, instruction)
        text = head + needle_text(_PLACEHOLDER) + " " + tail + QUESTION
        hit = (encode(text), needle_start, question_start)
        if len(_TEMPLATE_CACHE) >= 256:
            _TEMPLATE_CACHE.clear()
        _TEMPLATE_CACHE[cache_key] = hit
    return hit


def make_sample(length_tokens: int, depth: float, rng_or_seed=None, *, key: str | None = None,
                instruction: bool = True) -> PasskeySample:
    """One prompt of exactly ``length_tokens`` byte tokens with the needle at ``depth`` in [0, 1].

    ``rng_or_seed``: an int seed (deterministic), a ``np.random.Generator`` (consumed), or None.
    ``key``: force the five digits instead of drawing them.
    """
    template, needle_start, question_start = _template(length_tokens, depth, instruction)
    if key is None:
        key = _random_keys(_rng(rng_or_seed), 1)[0]
    if not (isinstance(key, str) and len(key) == KEY_DIGITS and key.isascii() and key.isdigit()):
        raise ValueError(f"key must be a string of {KEY_DIGITS} digits, got {key!r}")
    ids = template.copy()
    digits = encode(key)
    p1, p2 = needle_start + KEY_OFFSETS[0], needle_start + KEY_OFFSETS[1]
    ids[p1:p1 + KEY_DIGITS] = digits
    ids[p2:p2 + KEY_DIGITS] = digits
    return PasskeySample(ids=ids, key=key, depth=float(depth), needle_start=needle_start,
                         needle_end=needle_start + _NEEDLE_LEN - 1, key_positions=(p1, p2),
                         question_start=question_start, answer_ids=encode(answer_text(key)))


def make_batch(batch_size: int, length_tokens: int, depth, rng_or_seed=None, *,
               instruction: bool = True) -> PasskeyBatch:
    """``batch_size`` prompts of one length, stacked (B, T); vectorised over the keys.

    ``depth``: one float for every row, or a sequence of ``batch_size`` floats (one per row).
    Deterministic for an int seed; row i of ``make_batch(..., seed)`` is generally *not*
    ``make_sample(..., seed)`` (the keys are drawn together).
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    rng = _rng(rng_or_seed)
    depths = np.broadcast_to(np.asarray(depth, dtype=np.float64), (batch_size,)).copy()
    key_ints = rng.integers(_KEY_LO, _KEY_HI, size=batch_size)
    T = int(length_tokens)
    ids = np.empty((batch_size, T), dtype=np.int64)
    needle_start = np.empty(batch_size, dtype=np.int64)
    question_start = None
    for d in np.unique(depths):
        rows = np.nonzero(depths == d)[0]
        template, ns, qs = _template(T, float(d), instruction)
        ids[rows] = template
        needle_start[rows] = ns
        question_start = qs
    # digits of every key, most significant first: (B, 5)
    powers = 10 ** np.arange(KEY_DIGITS - 1, -1, -1)
    digit_ids = _DIGITS[(key_ints[:, None] // powers[None, :]) % 10]  # (B, 5)
    key_positions = needle_start[:, None] + np.asarray(KEY_OFFSETS)[None, :]  # (B, 2)
    rows = np.arange(batch_size)[:, None]
    for m in range(2):
        cols = key_positions[:, m:m + 1] + np.arange(KEY_DIGITS)[None, :]  # (B, 5)
        ids[rows, cols] = digit_ids
    answer_ids = np.concatenate([np.full((batch_size, 1), ord(" "), dtype=np.int64), digit_ids], axis=1)
    return PasskeyBatch(ids=ids, keys=[str(int(k)) for k in key_ints], depths=depths, needle_start=needle_start,
                        needle_end=needle_start + _NEEDLE_LEN - 1, key_positions=key_positions,
                        question_start=int(question_start), answer_ids=answer_ids)


# ---- scoring through any backend -----------------------------------------------------------------

_DIGIT_RUN = re.compile(r"[0-9]+")


def extract_key(answer: str) -> str | None:
    """The first run of ASCII digits in a decoded answer, or None."""
    match = _DIGIT_RUN.search(answer)
    return match.group(0) if match else None


def is_correct(answer: str, key: str) -> bool:
    """Exact match of the digits: the first digit run of ``answer`` is exactly ``key``."""
    return extract_key(answer) == key


def greedy_answer(session, prompts: np.ndarray, n_tokens: int = ANSWER_LEN, *, reset: bool = True) -> list[str]:
    """Greedy continuation of each prompt, decoded to text (``n_tokens`` tokens each).

    ``session`` needs ``reset()`` and ``feed(ids (B, T) int64) -> logits (B, T, V)``. The session is
    reset first (unless ``reset=False``), fed the prompts, then fed each argmax token in turn; the
    last generated token is not fed.
    """
    prompts = np.asarray(prompts)
    if prompts.ndim == 1:
        prompts = prompts[None, :]
    if prompts.ndim != 2 or prompts.shape[1] < 1:
        raise ValueError(f"prompts must be (batch, time) token ids, got shape {prompts.shape}")
    if reset:
        session.reset()
    logits = np.asarray(session.feed(np.ascontiguousarray(prompts, dtype=np.int64)))
    B = prompts.shape[0]
    if logits.ndim != 3 or logits.shape[:2] != prompts.shape:
        raise ValueError(f"session.feed returned logits of shape {logits.shape}, expected ({B}, {prompts.shape[1]}, V)")
    out = np.empty((B, n_tokens), dtype=np.int64)
    for i in range(n_tokens):
        out[:, i] = np.argmax(logits[:, -1, :], axis=-1)
        if i + 1 < n_tokens:
            logits = np.asarray(session.feed(out[:, i:i + 1].copy()))
    return [decode(row) for row in out]


@dataclass(frozen=True)
class PasskeyScore:
    accuracy: float  # exact-match rate in [0, 1]
    correct: list[bool]
    answers: list[str]  # decoded greedy answers
    keys: list[str]

    def __len__(self) -> int:
        return len(self.correct)


def score(session, prompts: np.ndarray, keys: Sequence[str], *, batch_size: int | None = None) -> PasskeyScore:
    """Greedy-decode every prompt and exact-match the digits against ``keys``.

    ``batch_size`` splits the prompts into sub-batches (None: all at once).
    """
    prompts = np.asarray(prompts)
    if prompts.ndim == 1:
        prompts = prompts[None, :]
    keys = [str(k) for k in keys]
    if len(keys) != prompts.shape[0]:
        raise ValueError(f"{prompts.shape[0]} prompts but {len(keys)} keys")
    step = batch_size or prompts.shape[0]
    answers: list[str] = []
    for start in range(0, prompts.shape[0], step):
        answers.extend(greedy_answer(session, prompts[start:start + step]))
    correct = [is_correct(a, k) for a, k in zip(answers, keys)]
    return PasskeyScore(accuracy=float(np.mean(correct)) if correct else 0.0, correct=correct, answers=answers,
                        keys=keys)


def score_batch(session, batch: PasskeyBatch, *, batch_size: int | None = None) -> PasskeyScore:
    return score(session, batch.ids, batch.keys, batch_size=batch_size)


def evaluate_grid(session, lengths: Sequence[int], depths: Sequence[float], n_prompts: int = 5, seed: int = 0,
                  *, batch_size: int | None = None, instruction: bool = True) -> dict[tuple[int, float], PasskeyScore]:
    """Exact match for every (length, depth) cell, ``n_prompts`` prompts each; deterministic from ``seed``."""
    results = {}
    for i, length in enumerate(lengths):
        for j, depth in enumerate(depths):
            batch = make_batch(n_prompts, int(length), float(depth), [seed, i, j], instruction=instruction)
            results[(int(length), float(depth))] = score_batch(session, batch, batch_size=batch_size)
    return results
