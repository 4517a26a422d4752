"""The text model: the standard library's split by file, the byte-fallback tokenizer, the bundled checkpoint's
held-out score, and a smoke run of the text training loop (loss goes down, the run resumes)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tasks import text as T
from tasks import text_eval as E
from training.config import TrainingSetupError

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "models" / "text-small"


def _split():
    return json.loads((BUNDLE / "split.json").read_text())


def test_split_is_disjoint_and_follows_the_path_hash():
    split = _split()
    train, held = set(split["train"]), set(split["heldout"])
    assert train and held and not train & held
    assert all(T.is_heldout(p) for p in held) and not any(T.is_heldout(p) for p in train)
    assert 0.01 < len(held) / (len(train) + len(held)) < 0.1
    assert all(not p.startswith("/") and ".." not in p for p in train | held)


def test_split_is_deterministic_and_excludes_tests_and_binary_files(tmp_path):
    files = {"a.py": "x = 1\n", "pkg/b.py": "def f():\n    return 2\n", "test/test_c.py": "assert 1\n",
             "pkg/tests/d.py": "pass\n", "e.py": "\x00\x01binary", "f.py": ""}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "g.py").write_bytes(b"\xff\xfe not utf-8")
    one, two = T.make_split(tmp_path), T.make_split(tmp_path)
    assert one == two
    assert sorted(one["train"] + one["heldout"]) == ["a.py", "pkg/b.py"]
    assert sum(one["excluded"].values()) == 5
    # a file's side depends on its path only
    assert T.is_heldout("fnmatch.py") == ("fnmatch.py" in _split()["heldout"])


HELD = "".join(f"    value_{i} = compute_something(argument_{i}, keyword={i})\n" for i in range(40))


def _site(tmp_path, files):
    """A folder of installed packages: ``pkg`` (version 1.0, BSD-3-Clause) with ``files``."""
    info = tmp_path / "pkg-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.4\nName: pkg\nVersion: 1.0\nLicense-Expression: BSD-3-Clause\n")
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_extra_text_leaves_out_copies_of_heldout_files_and_third_party_code(tmp_path):
    own = "".join(f"    other_{i} = something_else_entirely(parameter_{i})\n" for i in range(40))
    files = {"pkg/a.py": own, "pkg/copy.py": HELD, "pkg/part.py": own + "".join(HELD.splitlines(True)[:3]),
             "pkg/tests/t.py": own, "pkg/_vendor/v.py": own, "pkg/_distutils/d.py": own, "other/o.py": own}
    site = _site(tmp_path, files)
    extra = T.make_extra(site, [HELD], packages=(("pkg", "pkg"),))
    (pkg,) = extra["packages"]
    assert (pkg["version"], pkg["licence"]) == ("1.0", "BSD-3-Clause")  # the folder's distribution, not ours
    assert pkg["files"] == ["pkg/a.py"] and pkg["bytes"] == len(own)
    # a whole copy, and 3 of a held-out file's 40 long lines (7.5% of it, 4% of the copying file)
    assert extra["copies_of_heldout_files"] == ["pkg/copy.py", "pkg/part.py"]
    assert extra["excluded"] == {T.THIRD_PARTY: 2, "test suite, installed packages or build files": 1}
    assert T.extra_paths({"extra": extra}) == ["pkg/a.py"] and T.extra_paths({}) == []
    with pytest.raises(FileNotFoundError, match="--site"):
        T.make_extra(site, [HELD], packages=(("numpy", "numpy"),))
    with pytest.raises(FileNotFoundError, match="--root/--site"):
        T.read_texts(site, ["pkg/a.py", "pkg/missing.py"])


def test_windows_come_from_the_standard_library_by_share():
    data = T.TextData(np.zeros(1000, np.int32), np.zeros(10, np.int32), 10, np.ones(1000, np.int32))
    w = T.sample_windows(np.random.default_rng(0), data, 2000, 8, stdlib_share=0.3)
    assert w.shape == (2000, 9) and abs((w[:, 0] == 0).mean() - 0.3) < 0.04
    no_extra = T.TextData(data.train, data.heldout, 10, np.zeros(0, np.int32))
    assert (T.sample_windows(np.random.default_rng(0), no_extra, 50, 8, stdlib_share=0.0) == 0).all()
    short = T.TextData(data.train, data.heldout, 10, np.ones(9, np.int32))
    with pytest.raises(ValueError, match="extra packages' training stream has 9 tokens: windows of 9 need at least"):
        T.sample_windows(np.random.default_rng(0), short, 4, 8, stdlib_share=0.5)


@pytest.mark.parametrize("text", ["", "def f(x):\n\treturn x ** 2  # squared\n", "é 你好 🙂 \x00\x7f\r\n \u2028",
                                  "".join(chr(c) for c in range(0, 0x3000, 7))])
def test_tokenizer_round_trips_any_text(text):
    tok = T.load_tokenizer(BUNDLE)
    enc = tok.encode(text)
    assert enc.ids[0] == tok.token_to_id(T.BOS) == 0
    assert tok.decode(enc.ids) == text
    assert max(enc.ids) < tok.get_vocab_size()


def test_tokenizer_has_special_and_byte_tokens():
    tok = T.load_tokenizer(BUNDLE)
    assert 4096 <= tok.get_vocab_size() <= 8192
    assert tok.token_to_id(T.BOS) == 0 and tok.token_to_id(T.EOS) == 1
    assert all(tok.token_to_id(b) is not None for b in T.BYTE_TOKENS)
    rng = np.random.default_rng(0)
    for _ in range(20):  # arbitrary code points, unseen in training, come back through byte fallback
        s = "".join(chr(int(c)) for c in rng.integers(0x80, 0x10FFFF, 12) if not 0xD800 <= c < 0xE000)
        assert tok.decode(tok.encode(s).ids) == s
    tb = E.token_bytes(tok)
    ids = tok.encode("a b\u00e9\U0001F642").ids
    assert tb[ids].sum() == len("a b\u00e9\U0001F642".encode("utf-8"))


def test_bundled_checkpoint_scores_below_the_uniform_bound():
    from infini_export import load_checkpoint
    model = load_checkpoint(BUNDLE).eval()
    tok = T.load_tokenizer(BUNDLE)
    assert model.cfg.vocab_size == tok.get_vocab_size()
    split = _split()
    text = T.read_texts(T.stdlib_root(), split["heldout"][:1])
    ids = T.encode_texts(tok, text)[:2 * model.cfg.segment_len + 1]
    bits = E.eager_bits(model, ids)
    bpb = E.bits_per_byte(bits, ids, E.token_bytes(tok))
    uniform = math.log2(model.cfg.vocab_size) * (len(ids) - 1) / E.token_bytes(tok)[ids[1:]].sum()
    assert math.isfinite(bpb) and bpb < 0.75 * uniform


def test_training_smoke_run_learns_and_resumes(tmp_path):
    from training.text_config import TextTrainConfig
    from training.text_loop import train_text

    full = _split()
    data = tmp_path / "data"
    data.mkdir()
    small = dict(full, train=full["train"][:6], heldout=full["heldout"][:1], extra={"root": "", "packages": []})
    (data / "split.json").write_text(json.dumps(small))
    (data / "tokenizer.json").write_bytes((BUNDLE / "tokenizer.json").read_bytes())
    kw = dict(out=str(tmp_path / "run"), data=str(data), cache=str(tmp_path / "cache"), root=str(T.stdlib_root()),
              preset="tiny", lr=1e-2, warmup=1, batch=4, segments=2, eval_tokens=256, log_every=0.0, minutes=0.0)
    rep = train_text(TextTrainConfig(**kw, steps=12), argv=["smoke"])
    losses = [h["loss"] for h in rep["history"]]
    assert rep["steps"] == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "tokenizer.json").is_file()
    rep2 = train_text(TextTrainConfig(**kw, steps=14, resume=True), argv=["smoke", "--resume"])
    assert rep2["steps"] == 14 and len(rep2["runs"]) == 2
    assert rep2["history"][:12] == rep["history"]
    # a fresh run from those weights starts where they left off (its first loss is the trained model's, not a
    # random one's), with its own step count and schedule
    kw3 = dict(kw, out=str(tmp_path / "tuned"))
    rep3 = train_text(TextTrainConfig(**kw3, steps=2, init_weights=str(tmp_path / "run")), argv=["smoke"])
    assert rep3["steps"] == 2 and rep3["init_weights"] == str(tmp_path / "run")
    assert rep3["history"][0]["loss"] < losses[0] - 0.3
    with pytest.raises(TrainingSetupError, match="another config"):
        train_text(TextTrainConfig(**dict(kw3, preset="text-small"), steps=1, init_weights=str(tmp_path / "run")),
                   argv=["smoke"])
    with pytest.raises(TrainingSetupError, match="give one of them"):
        TextTrainConfig(**kw3, steps=1, init_weights=str(tmp_path / "run"), resume=True).validate()


def test_scoring_refuses_to_leave_out_a_file_that_is_not_held_out(tmp_path):
    with pytest.raises(ValueError, match=r"\['argparse.py'\] are not held-out files"):
        E.evaluate(BUNDLE, tmp_path, exclude=("fnmatch.py", "argparse.py"))
