"""Config validation, presets, serialisation, and the errors of bad step input."""
import json

import pytest
import torch

from infini_export import InfiniConfig
from tests.conftest import make_model


def test_presets_and_round_trip(tmp_path):
    for name in ("tiny", "small", "medium"):
        cfg = InfiniConfig.from_name(name)
        assert InfiniConfig.from_dict(cfg.to_dict()) == cfg
        cfg.to_json(tmp_path / f"{name}.json")
        assert InfiniConfig.from_json(tmp_path / f"{name}.json") == cfg
        assert json.loads(cfg.to_json())["segment_len"] == cfg.segment_len
    assert InfiniConfig.from_name("tiny", update="linear").update == "linear"
    with pytest.raises(ValueError, match="unknown preset"):
        InfiniConfig.from_name("huge")


@pytest.mark.parametrize("field,value", [
    ("vocab_size", 0), ("d_model", -1), ("n_heads", 1.5), ("d_head", 7), ("segment_len", 0),
    ("update", "gated"), ("rope_base", 1.0), ("norm_eps", 0.0), ("memory_eps", 2.0), ("tie_embeddings", "yes"),
])
def test_bad_config_names_field(field, value):
    with pytest.raises(ValueError, match=f"InfiniConfig.{field}"):
        InfiniConfig.from_name("tiny", **{field: value})


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown InfiniConfig fields"):
        InfiniConfig.from_dict({**InfiniConfig().to_dict(), "n_kv_heads": 2})


@pytest.fixture(scope="module")
def model():
    return make_model("delta")


def ids(b=1, t=8, dtype=torch.int64):
    return torch.zeros(b, t, dtype=dtype)


@pytest.mark.parametrize("make_input,match", [
    (lambda m: (ids(dtype=torch.int32), m.init_state(1)), "dtype torch.int64"),
    (lambda m: (torch.zeros(8, dtype=torch.long), m.init_state(1)), "rank 2"),
    (lambda m: (ids(t=0), m.init_state(1)), "0 tokens"),
    (lambda m: (ids(t=17), m.init_state(1)), "17 tokens"),
    (lambda m: (ids() + 256, m.init_state(1)), r"\[0, 256\)"),
    (lambda m: (ids() - 1, m.init_state(1)), r"\[0, 256\)"),
    (lambda m: (ids(), m.init_state(1)[:1]), "tuple of 2 LayerMemory"),
    (lambda m: (ids(b=2), m.init_state(1)), "expected \\(2, 2, 16, 16\\)"),
    (lambda m: (ids(), tuple(type(s)(s.memory.double(), s.norm) for s in m.init_state(1))), "float32"),
    (lambda m: (ids(), tuple(type(s)(s.memory, s.norm[..., :3]) for s in m.init_state(1))), "norm has shape"),
])
def test_bad_step_input_raises(model, make_input, match):
    x, state = make_input(model)
    with pytest.raises(ValueError, match=match):
        model.step(x, state)
