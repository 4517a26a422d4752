"""The text model's training settings: one field per command-line option of ``scripts/train_text.py``, and the
model sizes it can train."""
from __future__ import annotations

from dataclasses import dataclass

from infini_export import InfiniConfig

from .config import TrainingSetupError, option


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
    out: str = option("out/text-run", "output folder (checkpoint, train_state.pt, report)")
    data: str = option("models/text-small", "folder holding split.json and tokenizer.json (scripts/text_data.py)")
    cache: str = option("out/text-data", "folder for the encoded token streams")
    root: str | None = option(None, "standard-library folder (default: split.json's)")
    site: str | None = option(None, "folder of the extra packages (default: split.json's)")
    minutes: float = option(85.0, "wall-time budget in minutes, all runs together (0: none)")
    steps: int = option(0, "step budget (0: none)")
    resume: bool = option(False, "continue from OUT/train_state.pt", action="store_true")
    init_weights: str | None = option(None, "start a fresh run (new optimizer, warm-up and schedule) from the weights "
                                          "of this checkpoint of the same config, e.g. models/text-small",
                                      metavar="CHECKPOINT")
    preset: str = option("text-small", "model size: text-small, tiny, or an InfiniConfig preset")
    seed: int = option(0, "seed of the weights and the batches")
    threads: int = option(1, "torch threads")
    lr: float = option(3e-3, "peak learning rate")
    gate_lr: float = option(2e-2, "peak learning rate of the gates (*.beta)")
    weight_decay: float = option(0.1, "AdamW weight decay of the matrices")
    warmup: int = option(100, "linear warm-up steps before the cosine decay to 0.1x")
    batch: int = option(4, "sequences per step")
    segments: int = option(3, "segments per sequence: back-propagation runs through the memory across all of them")
    stdlib_share: float = option(0.3, "share of training windows from the standard library's files, the rest from "
                                      "split.json's extra packages (all of them when it has none)")
    eval_tokens: int = option(16384, "held-out tokens of the in-training evaluation")
    log_every: float = option(30.0, "seconds between progress lines")
    eval_every: float = option(10.0, "minutes between held-out evaluations")
    save_every: float = option(4.0, "minutes between saves of train_state.pt and the checkpoint")

    def validate(self) -> "TextTrainConfig":
        if self.segments < 2:
            raise TrainingSetupError(f"--segments must be >= 2 (the memory learns across segments), got "
                                     f"{self.segments}")
        if self.init_weights and self.resume:
            raise TrainingSetupError("--init-weights starts a fresh run from a checkpoint's weights; --resume goes on "
                                     "with OUT's own run: give one of them")
        if not 0.0 <= self.stdlib_share <= 1.0:
            raise TrainingSetupError(f"--stdlib-share must be in [0, 1], got {self.stdlib_share}")
        if self.batch < 1:
            raise TrainingSetupError(f"--batch must be >= 1, got {self.batch}")
        return self
