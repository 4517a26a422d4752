"""The passkey training run's settings: one field per command-line option, its help text beside it."""
from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields

from runtime.measure import parse_length
from tasks import passkey as P


class TrainingSetupError(ValueError):
    """Settings, a resumed run or starting weights that cannot make a run (the message names the option)."""


def option(default, help: str, **cli):
    """A field with its help text and any argparse settings (``type``, ``choices``, ``metavar``, ``action``)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **cli})
    return field(default=default, metadata={"help": help, **cli})


def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",")]


def _floats(text: str) -> list[float]:
    return [float(x) for x in str(text).split(",")]


@dataclass
class TrainConfig:
    # run and budget
    out: str = option("models/passkey-small", "output folder")
    minutes: float = option(50.0, "wall-time budget in minutes, all runs together (0: none)")
    steps: int = option(0, "step budget (0: none)")
    resume: bool = option(False, "continue from OUT/train_state.pt", action="store_true")
    preset: str = option("small", "InfiniConfig preset")
    update: str | None = option(None, "override the memory rule", choices=("linear", "delta"))
    seed: int = option(0, "seed of the weights, the batches and the held-out prompts")
    quick: bool = option(False, "tiny smoke run: small batches, short inputs, little eval", action="store_true")
    threads: int = option(2, "torch threads; on a busy machine 1 can be several times faster than 2 (OpenMP "
                           "spin-waits)")
    # optimizer
    lr: float | None = option(None, "peak learning rate (default 2e-3; with --resume: the run's own unless given)",
                            type=float)
    gate_lr: float | None = option(None, "peak learning rate of the gates (*.beta) (default 2e-2; with --resume: the "
                                       "run's own unless given)", type=float)
    weight_decay: float = option(0.05, "AdamW weight decay of the matrices (not the embedding, norms or gates)")
    warmup: int = option(100, "linear warm-up steps before the cosine decay to 0.1x")
    # batches and curriculum
    tokens_per_step: int = option(16384, "tokens per batch (the batch shrinks as the inputs grow)")
    max_batch: int = option(16, "rows per batch at most")
    max_len: int = option(4096, "longest prompt of the curriculum")
    start_len: int = option(0, "first prompt length (0: 2 filler sentences)")
    no_filler_frac: float = option(0.25, "share of batches with no filler and no instruction (one segment)")
    boundary_frac: float = option(0.4, "share of filler batches whose prompt ends 0-3 tokens before a segment "
                                     "boundary, so the answer is generated in a fresh segment (as at lengths that "
                                     "are multiples of segment_len)")
    mix_frac: float = option(0.5, "share of filler batches at a shorter, log-uniform random length (not used for "
                                "promotion)")
    # the state-extrapolation lever (extrapolation.py)
    extrapolate_frac: float = option(0.0, "share of eligible filler rows whose answer reads a state extrapolated to "
                                        "a longer input")
    extrapolate_to: int = option(1 << 20, "longest extrapolated input, tokens")
    extrapolate_mode: str = option("first-order", "first-order: k times one filler segment's increment; doubling: "
                                                "the increment re-measured from the growing state, 1 + log2(k) "
                                                "segment runs", choices=("first-order", "doubling"))
    extrapolate_block: int = option(1, "doubling mode: filler segments run per step (7 x 128 tokens ~ 10 periods of "
                                     "the filler)")
    extrapolate_before_needle: float = option(0.0, "share of extrapolated rows whose extra filler goes before the "
                                                 "needle rather than after it (rows with the needle in the last two "
                                                 "segments can only take it there; 0: after the needle only)")
    # losses
    needle_weight: float = option(1.0, "weight of the loss on the key's second mention inside the needle")
    lm_weight: float = option(0.1, "weight of the language-model loss on every predictable byte")
    answer_weights: list[float] = option([1.0] * P.ANSWER_LEN, "relative loss weight of each answer target: the "
                                       "space, then the 5 digits (e.g. 1,1,1,1,2,2 to press on the 4th and 5th "
                                       "digits, where the long-input misses sit); normalised to mean 1, so the "
                                       "default is the plain mean", type=_floats, metavar="W0,...,W5")
    promote_em: float = option(0.8, "training exact match of the hard rows above which the input length grows")
    promote_rows: int = option(32, "training rows at the current length behind a promotion")
    # logs, evaluations, saves
    log_every: float = option(30.0, "seconds between progress lines")
    eval_every: float = option(5.0, "minutes between held-out evaluations")
    save_every: float = option(3.0, "minutes between saves of train_state.pt")
    heldout_lengths: list[int] = option([1000, 2048, 4096], "held-out prompt lengths", type=_ints)
    heldout_depths: list[float] = option([0.0, 0.5], "held-out needle depths", type=_floats)
    heldout_prompts: int = option(4, "held-out prompts per (length, depth)")
    # what ships
    ema: float = option(0.0, "keep an exponential moving average of the weights with this decay per step (e.g. "
                           "0.998; 0: off); model.safetensors, the evaluations and best/ are then the averaged "
                           "weights")
    proxy_every: float = option(0.0, "minutes between long-input proxy scores (0: off); the best-scoring weights go "
                                   "to OUT/best/")
    proxy_length: int = option(1 << 20, "the proxy's prompt length (a multiple of the segment length; 1M, 64K, ...)",
                             type=parse_length)
    proxy_prompts: int = option(16, "prompts the proxy scores")
    proxy_seed: int = option(31337, "keys of the proxy's prompts (keep it apart from the evaluation seeds: 77, 1234, "
                                  "2468, 4321, 5555, 9876)")
    init_weights: str | None = option(None, "start from the weights of this checkpoint of the same config (e.g. an "
                                          "`infini-export average` of several runs). With --resume: OUT's run goes on "
                                          "(optimizer, step, schedule, RNG) from these weights; without: a fresh run "
                                          "(new optimizer, warm-up, schedule) fine-tunes them, its curriculum "
                                          "starting at --start-len", metavar="CHECKPOINT")
    # evaluation only
    evaluate: bool = option(False, "only evaluate the checkpoint in OUT", action="store_true")
    eval_lengths: list[int] = option([8192, 32768], "--evaluate: prompt lengths", type=_ints)
    eval_depths: list[float] = option([0.0, 0.5, 1.0], "--evaluate: needle depths", type=_floats)
    eval_prompts: int = option(5, "--evaluate: prompts per (length, depth)")
    eval_json: str | None = option(None, "--evaluate: write the answers here")

    def validate(self) -> "TrainConfig":
        """Raise :class:`TrainingSetupError` naming the option for settings no run can use."""
        if self.extrapolate_block < 1:
            raise TrainingSetupError(f"--extrapolate-block must be >= 1 segment, got {self.extrapolate_block}")
        if self.extrapolate_block != 1 and self.extrapolate_mode != "doubling":
            raise TrainingSetupError("--extrapolate-block applies to --extrapolate-mode doubling only")
        if not 0.0 <= self.ema < 1.0:
            raise TrainingSetupError(f"--ema must be a decay in [0, 1), got {self.ema}")
        w = self.answer_weights
        if len(w) != P.ANSWER_LEN or min(w) < 0 or sum(w) <= 0:
            raise TrainingSetupError(f"--answer-weights needs {P.ANSWER_LEN} weights >= 0 (the space, then the "
                                     f"{P.KEY_DIGITS} digits), not all 0; got {w}")
        return self

    def apply_quick(self, segment_len: int) -> None:
        """--quick: small batches, short inputs, a small held-out set and proxy."""
        self.tokens_per_step, self.max_batch = 1024, 2
        self.max_len = min(self.max_len, P.min_length() + 120)
        self.heldout_lengths, self.heldout_depths, self.heldout_prompts = [P.min_length() + 80], [0.0], 2
        self.log_every, self.warmup = 0.0, 2
        self.proxy_length, self.proxy_prompts = 32 * segment_len, min(self.proxy_prompts, 2)


def add_settings_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--option`` per field of the settings dataclass ``cls``, with its default, type and help text."""
    for f in fields(cls):
        meta = dict(f.metadata)
        default = f.default_factory() if f.default is MISSING else f.default
        kw = {"default": default, "help": meta.pop("help")}
        if "action" not in meta and "type" not in meta and default is not None:
            kw["type"] = type(default)
        kw.update(meta)
        parser.add_argument("--" + f.name.replace("_", "-"), **kw)


def settings_from_arguments(cls, args: argparse.Namespace):
    """The validated ``cls`` settings of parsed :func:`add_settings_arguments` options."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)}).validate()


def run_training_command(description: str, cls, job, argv: list[str] | None = None) -> int:
    """A training script's ``main``: parse ``cls``'s options (a setup error is a usage error), set torch's threads,
    run ``job(settings, command_line)``; a setup error found later exits with its message."""
    import sys

    import torch

    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_arguments(ap, cls)
    args = ap.parse_args(argv)
    try:
        settings = settings_from_arguments(cls, args)
    except TrainingSetupError as exc:
        ap.error(str(exc))
    torch.set_num_threads(settings.threads)
    try:
        job(settings, sys.argv if argv is None else [sys.argv[0], *argv])
    except TrainingSetupError as exc:
        raise SystemExit(str(exc)) from None
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per :class:`TrainConfig` field, with its default, type and help text."""
    add_settings_arguments(parser, TrainConfig)


def from_arguments(args: argparse.Namespace) -> TrainConfig:
    """The validated settings of parsed :func:`add_arguments` options."""
    return settings_from_arguments(TrainConfig, args)
