import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# tiny models: one thread is faster than two (no synchronisation), and CI shares its cores
torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg():
    from infini_export import InfiniConfig
    return InfiniConfig.from_name("tiny")


def make_model(update="delta", seed=0, **overrides):
    from infini_export import InfiniConfig, InfiniTransformer
    torch.manual_seed(seed)
    model = InfiniTransformer(InfiniConfig.from_name("tiny", update=update, **overrides)).eval()
    # move gates off their initial 0 so each head mixes differently
    with torch.no_grad():
        for block in model.blocks:
            block.attn.beta.copy_(torch.linspace(-1.0, 1.0, block.attn.beta.numel()))
    return model


@pytest.fixture(scope="session")
def onnx_artifacts(tmp_path_factory):
    """The tiny preset exported to ONNX once per update rule: {update: (model, artifact_dir)}."""
    from exporters.pipeline import export_artifact
    out = {}
    for update in ("linear", "delta"):
        model = make_model(update)
        d = tmp_path_factory.mktemp(f"onnx_{update}")
        export_artifact(model, d, "onnx", parity_segments=8, progress=False, log=None)
        out[update] = (model, d)
    return out
