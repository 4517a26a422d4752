"""The bundled weights are exactly the average of the checkpoints soup.json names, and those are in the repo."""
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from infini_export import average_checkpoints

MODEL = Path(__file__).resolve().parent.parent / "models" / "passkey-small"


def test_bundled_model_is_the_average_of_its_ingredients():
    sources = json.loads((MODEL / "soup.json").read_text())["averaged"]
    assert len(sources) >= 2
    dirs = [MODEL / s["checkpoint"] for s in sources]
    for d, s in zip(dirs, sources):  # the ingredients are the files that were averaged
        assert hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest() == s["sha256"], d
    soup = average_checkpoints(dirs, [s["weight"] for s in sources]).state_dict()
    bundled = load_file(str(MODEL / "model.safetensors"))
    assert set(bundled) <= set(soup)
    for k, v in bundled.items():
        assert torch.equal(soup[k], v), k  # bit for bit
    ingredients = [load_file(str(d / "model.safetensors")) for d in dirs]
    assert not any(torch.equal(w["blocks.0.attn.wq.weight"], bundled["blocks.0.attn.wq.weight"]) for w in ingredients)
