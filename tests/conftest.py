import os
from pathlib import Path

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


@pytest.fixture(scope="session")
def et_artifacts(tmp_path_factory):
    """{(update, variant[, max_batch]): (model, artifact_dir, manifest, pipeline parity report)} (tests/et_artifacts.py);
    ``INFINI_TEST_EXECUTORCH_CACHE`` keeps them in a folder between runs (development only)."""
    from tests.et_artifacts import CACHE_ENV, export_all
    base = os.environ.get(CACHE_ENV)
    return export_all(Path(base) if base else tmp_path_factory.mktemp("executorch"))


def check_session_matches_forward(model, art, segments: int = 50):
    """Independent path: an artifact's session streaming loop vs the model's own forward, batch 2, with a
    5-token partial segment at the end (logits of every token, then the state of the complete segments)."""
    import numpy as np
    from runtime import InfiniSession
    N = model.cfg.segment_len
    ids = torch.randint(0, 256, (2, segments * N + 5), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref_logits, _ = model(ids)
        _, ref_state = model(ids[:, :segments * N])
    session = InfiniSession.open(art, batch_size=2)
    logits = session.feed(ids.numpy())
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4, rtol=1e-4)
    state = session.state
    for i, mem in enumerate(ref_state):
        np.testing.assert_allclose(state[f"memory.{i}"], mem.memory.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(state[f"norm.{i}"], mem.norm.numpy(), rtol=1e-5, atol=1e-5)
    assert session.pending_tokens.shape == (2, 5)
    assert session.tokens_consumed == segments * N + 5


def rehash_manifest(art) -> None:
    """Rewrite the manifest's sha256 and byte count of every file as they are now (a deliberately altered file then
    passes the integrity check, so what refuses it is the loader itself)."""
    import json

    from runtime.manifest import sha256_file
    man = json.loads((art / "manifest.json").read_text())
    for entry in man["files"].values():
        entry["sha256"] = sha256_file(art / entry["path"])
        entry["bytes"] = (art / entry["path"]).stat().st_size
    (art / "manifest.json").write_text(json.dumps(man))


FUZZ_COUNTS = pytest.StashKey[dict]()


@pytest.fixture
def fuzz_counts(request):
    """{kind: cases run}, shared by the fuzz tests and printed in the terminal summary of every run."""
    return request.config.stash.setdefault(FUZZ_COUNTS, {})


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = config.stash.get(FUZZ_COUNTS, None)
    if counts:
        terminalreporter.write_line("fuzzed cases: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
                                    + f" (total {sum(counts.values()):,})")
