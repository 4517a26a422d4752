"""infini-export average: a parameter-by-parameter mean of checkpoints of one config (a model soup)."""
import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from infini_export import InfiniConfig, InfiniTransformer, load_checkpoint, save_checkpoint
from infini_cli.main import main


def _tiny(tmp_path, name, seed, **overrides):
    torch.manual_seed(seed)
    return save_checkpoint(InfiniTransformer(InfiniConfig.from_name("tiny", **overrides)), tmp_path / name)


def test_uniform_and_weighted_average(tmp_path):
    a, b = _tiny(tmp_path, "a", 0), _tiny(tmp_path, "b", 1)
    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))  # independent of the model
    assert main(["average", str(a), str(b), "-o", str(tmp_path / "ab")]) == 0
    got = load_checkpoint(tmp_path / "ab").state_dict()
    for k in ta:
        torch.testing.assert_close(got[k], (ta[k] + tb[k]) / 2, rtol=0, atol=1e-7)
    soup = json.loads((tmp_path / "ab" / "soup.json").read_text())["averaged"]
    assert [s["sha256"] for s in soup] == [hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
                                           for d in (a, b)]
    assert main(["average", str(a), str(b), "-o", str(tmp_path / "w"), "--weights", "3,1"]) == 0
    got = load_checkpoint(tmp_path / "w").state_dict()
    for k in ta:
        torch.testing.assert_close(got[k], 0.75 * ta[k] + 0.25 * tb[k], rtol=0, atol=1e-7)


def test_bad_inputs_are_named(tmp_path, capsys):
    a, b = _tiny(tmp_path, "a", 0), _tiny(tmp_path, "b", 1)
    other = _tiny(tmp_path, "lin", 2, update="linear")
    assert main(["average", str(a), str(other), "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "configs differ" in err and "update" in err
    assert not (tmp_path / "x").exists()  # nothing written
    assert main(["average", str(a), "-o", str(tmp_path / "x")]) == 2
    assert "at least 2 checkpoints" in capsys.readouterr().err
    assert main(["average", str(a), str(b), "-o", str(tmp_path / "x"), "--weights", "1"]) == 2
    assert "one non-negative weight per checkpoint" in capsys.readouterr().err
    (b / "model.safetensors").write_bytes(b"garbage")
    assert main(["average", str(a), str(b), "-o", str(tmp_path / "x")]) == 2
    assert "cannot read" in capsys.readouterr().err
