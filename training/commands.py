"""The training command lines (``scripts/train_passkey.py``, ``scripts/train_text.py``): their options parsed into
the settings dataclass, then the run. A script passes its docstring as the help text."""
from __future__ import annotations


def passkey_main(description: str, argv: list[str] | None = None) -> int:
    """Train the passkey model, or with ``--evaluate`` only evaluate the checkpoint in OUT."""
    from .config import TrainConfig, run_training_command
    from .evaluate import evaluate_checkpoint
    from .loop import train

    def job(tc: TrainConfig, command: list[str]) -> None:
        if tc.evaluate:
            evaluate_checkpoint(tc)
        else:
            train(tc, command)

    return run_training_command(description, TrainConfig, job, argv)


def text_main(description: str, argv: list[str] | None = None) -> int:
    """Train (or go on training) the text model."""
    from .config import run_training_command
    from .text_config import TextTrainConfig
    from .text_loop import train_text

    return run_training_command(description, TextTrainConfig, train_text, argv)
