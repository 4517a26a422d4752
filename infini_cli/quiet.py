"""Known third-party noise, silenced for the command line only (tests and library users see it unchanged)."""
from __future__ import annotations

import logging
import warnings

# loggers that report things a user of this tool can do nothing about (optional CUDA kernels of torchao,
# torchvision ops the ONNX exporter skips, pytree deprecations inside torch.export)
NOISY_LOGGERS = ("torchao", "torch.onnx", "torch.utils._pytree", "torch._export", "torch.export", "executorch",
                 "onnxscript", "onnx_ir")
NOISY_WARNINGS = (
    (FutureWarning, r".*"),  # deprecations inside torch / torchao / executorch, not in this project's calls
    (UserWarning, r".*axis name.*will not be used.*"),  # torch.onnx: two dynamic axes share the symbol "batch"
    (UserWarning, r".*TypedStorage is deprecated.*"),
)


def silence_third_party() -> None:
    """Raise the noisy libraries' loggers to ERROR and ignore their known warnings."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category, message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
