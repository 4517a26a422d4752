"""The text model's training settings: one field per command-line option of ``scripts/train_text.py``, and the
model sizes it can train."""
from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields

from infini_export import InfiniConfig

from .config import TrainingSetupError


def _opt(default, help: str, **cli):
    return field(default=default, metadata={"help": help, **cli})


def model_config(preset: str, vocab_size: int) -> InfiniConfig:
    """The model of ``preset`` for a tokenizer of ``vocab_size`` tokens.

    ``text-small``: d_model 192, 4 blocks of 3 heads x 64, SwiGLU 512, segments of 256 tokens (2.56M parameters at
    4,096 tokens, 0.79M of them the tied embedding); ``tiny``: the ``tiny`` preset (segments of 16) with this
    vocabulary, for smoke runs; any other name: that ``InfiniConfig`` preset with this vocabulary."""
    if preset == "text-small":
        return InfiniConfig(vocab_size=vocab_size, d_model=192, n_layers=4, n_heads=3, d_head=64, d_ff=512,
                            segment_len=256)
    return InfiniConfig.from_name(preset, vocab_size=vocab_size)


@dataclass
class TextTrainConfig:
    out: str = _opt("out/text-run", "output folder (checkpoint, train_state.pt, report)")
    data: str = _opt("models/text-small", "folder holding split.json and tokenizer.json (scripts/text_data.py)")
    cache: str = _opt("out/text-data", "folder for the encoded token streams")
    root: str | None = _opt(None, "standard-library folder (default: split.json's)")
    minutes: float = _opt(85.0, "wall-time budget in minutes, all runs together (0: none)")
    steps: int = _opt(0, "step budget (0: none)")
    resume: bool = _opt(False, "continue from OUT/train_state.pt", action="store_true")
    preset: str = _opt("text-small", "model size: text-small, tiny, or an InfiniConfig preset")
    seed: int = _opt(0, "seed of the weights and the batches")
    threads: int = _opt(1, "torch threads")
    lr: float = _opt(3e-3, "peak learning rate")
    gate_lr: float = _opt(2e-2, "peak learning rate of the gates (*.beta)")
    weight_decay: float = _opt(0.1, "AdamW weight decay of the matrices")
    warmup: int = _opt(100, "linear warm-up steps before the cosine decay to 0.1x")
    batch: int = _opt(4, "sequences per step")
    segments: int = _opt(3, "segments per sequence: back-propagation runs through the memory across all of them")
    eval_tokens: int = _opt(16384, "held-out tokens of the in-training evaluation")
    log_every: float = _opt(30.0, "seconds between progress lines")
    eval_every: float = _opt(10.0, "minutes between held-out evaluations")
    save_every: float = _opt(4.0, "minutes between saves of train_state.pt and the checkpoint")

    def validate(self) -> "TextTrainConfig":
        if self.segments < 2:
            raise TrainingSetupError(f"--segments must be >= 2 (the memory learns across segments), got "
                                     f"{self.segments}")
        if self.batch < 1:
            raise TrainingSetupError(f"--batch must be >= 1, got {self.batch}")
        return self


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per :class:`TextTrainConfig` field."""
    for f in fields(TextTrainConfig):
        meta = dict(f.metadata)
        default = f.default_factory() if f.default is MISSING else f.default
        kw = {"default": default, "help": meta.pop("help")}
        if "action" not in meta and default is not None:
            kw["type"] = type(default)
        kw.update(meta)
        parser.add_argument("--" + f.name.replace("_", "-"), **kw)


def from_arguments(args: argparse.Namespace) -> TextTrainConfig:
    """The validated settings of parsed :func:`add_arguments` options."""
    return TextTrainConfig(**{f.name: getattr(args, f.name) for f in fields(TextTrainConfig)}).validate()
