"""The bundled trained model, exported to ONNX and run by the torch-free runtime, retrieves passkeys
from 8K-token prompts through its memory; with the memory disabled it cannot."""
import os
from pathlib import Path

import numpy as np
import pytest

from tasks import passkey as pk

BUNDLED = Path(os.environ.get("INFINI_BUNDLED", Path(__file__).resolve().parent.parent / "models" / "passkey-small"))
DEPTHS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from exporters.pipeline import export_artifact
    from infini_export import load_checkpoint
    from runtime import InfiniSession
    art = tmp_path_factory.mktemp("bundled") / "onnx"
    export_artifact(load_checkpoint(BUNDLED), art, "onnx", parity_segments=16, progress=False, log=None)
    return InfiniSession.open(art)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(2024)
    return [(pk.prompt_layout(8192, d), str(rng.integers(10000, 100000))) for d in DEPTHS]


# The target is >= 9 of 10. The bundled model (fine-tuned with state extrapolation, see
# models/passkey-small/README.md) measures 10 of 10 here; the one before it measured 7.
MIN_CORRECT_8K = 9


def test_bundled_model_retrieves_passkeys_at_8k(session, prompts):
    answers = [pk.greedy_answer(session, p.prompts([key]))[0] for p, key in prompts]
    correct = [pk.is_correct(a, key) for a, (_, key) in zip(answers, prompts)]
    print(f"\nbundled model at 8K tokens: {sum(correct)}/10 correct: {list(zip([k for _, k in prompts], answers))}")
    assert sum(correct) >= MIN_CORRECT_8K, list(zip([k for _, k in prompts], answers))


def test_memory_off_control_fails_when_key_is_in_an_earlier_segment(session, prompts):
    N = session.segment_len
    earlier = [(p, key) for p, key in prompts if (p.needle_start + pk.NEEDLE_LEN) // N < p.question_start // N]
    assert len(earlier) >= 8
    answers = [pk.greedy_answer(session, p.prompts([key]), memory=False)[0] for p, key in earlier]
    assert not any(pk.is_correct(a, key) for a, (_, key) in zip(answers, earlier)), answers


def test_greedy_generation_equals_eager_for_512_tokens(session):
    """The runtime's greedy tokens (one decode call each) are the eager model's, its segment step re-run on the
    whole partial segment for every token (complete segments folded into its state once), and the logits agree
    within the manifest's tolerance at every token."""
    import torch

    from infini_export import load_checkpoint
    model = load_checkpoint(BUNDLED).eval()
    tol = session.manifest.parity.tolerance
    s = session.fork()
    s.reset()
    prompt = np.frombuffer(b"The grass is green. The sky is blue. The sun is yellow. Here we go. " * 2, np.uint8)
    ids = prompt.astype(np.int64)
    twin = s.fork()
    last = s.stream(ids)[0]
    tokens, N = [], model.cfg.segment_len
    state, start = model.init_state(1), 0
    with torch.no_grad():
        for _ in range(512):
            while len(ids) - start > N:  # a complete segment before the last token's: into the state
                _, state = model.step(torch.from_numpy(ids[start:start + N])[None], state)
                start += N
            ref = model.step(torch.from_numpy(ids[start:])[None], state)[0][0, -1].numpy()
            assert np.abs(last - ref).max() <= tol["logits_atol"] + tol["logits_rtol"] * np.abs(ref).max()
            tok = int(last.argmax())
            assert tok == int(ref.argmax())
            tokens.append(tok)
            ids = np.append(ids, tok)
            last = s.stream(np.array([tok]))[0]
    assert list(twin.generate(prompt.astype(np.int64), 512)[0]) == tokens
