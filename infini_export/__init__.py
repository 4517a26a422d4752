"""infini-export: export Infini-attention transformers to ONNX and ExecuTorch, run them in constant memory."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import InfiniConfig
from .model import InfiniTransformer
from .state import LayerMemory, StepSpec, StateTensorSpec, io_names

__all__ = ["InfiniConfig", "InfiniTransformer", "LayerMemory", "StepSpec", "StateTensorSpec", "io_names",
           "save_checkpoint", "load_checkpoint"]
__version__ = "0.1.0"
