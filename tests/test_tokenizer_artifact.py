"""The tokenizer in the artifact: the manifest's section and files entry, integrity, and every bad input refused
(at export before anything is written, in the manifest, and when the runtime loads the file)."""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import re
import shutil

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.pre_tokenizers import ByteLevel

from exporters.tokenizer import (TOKENIZER_FILE, byte_level_chars, byte_level_tokenizer_json, cli_tokenizer,
                                 find_tokenizer, prepare_tokenizer)
from runtime import InfiniSession
from runtime.errors import ArtifactError, ManifestError, NoTokenizerError, TokenizerError
from runtime.manifest import Manifest
from runtime.tokenizer import MAX_TOKENIZER_BYTES, Tokenizer
from runtime.tokenizer_section import GenerationDefaults, TokenizerInfo
from tests.conftest import ROOT
from tests.text_artifacts import copy_with, text_artifact

BUNDLED = f"{ROOT}/models/passkey-small"


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return text_artifact(tmp_path_factory)


def test_the_manifest_lists_the_tokenizer_and_its_sections(art):
    _, folder, trained = art
    man = json.loads((folder / "manifest.json").read_text())
    data = trained.read_bytes()
    assert (folder / TOKENIZER_FILE).read_bytes() == data  # copied as it is
    assert man["files"]["tokenizer"] == {"path": "tokenizer.json", "sha256": hashlib.sha256(data).hexdigest(),
                                         "bytes": len(data)}
    hf = HFTokenizer.from_file(str(trained))
    assert man["tokenizer"] == {"file": "tokenizer", "format": "huggingface-tokenizers",
                                "vocab_size": max(hf.get_vocab().values()) + 1, "bos": hf.token_to_id("<s>"),
                                "eos": [hf.token_to_id("</s>")], "add_bos": True}
    assert man["generation"] == {"max_new_tokens": 128, "temperature": 0.0, "top_k": 0, "top_p": 1.0}
    m = Manifest.load(folder)
    assert m.tokenizer.to_dict() == man["tokenizer"] and m.generation == GenerationDefaults()
    assert man["tokenizer"]["vocab_size"] <= man["vocab_size"]


def test_an_artifact_without_the_sections_is_ids_only(art, tmp_path):
    model, folder, _ = art
    plain = copy_with(folder, tmp_path / "plain", tokenizer=None, generation=None)
    s = InfiniSession.open(plain)
    assert s.manifest.tokenizer is None and s.manifest.generation == GenerationDefaults()
    for call in (lambda: s.tokenizer, lambda: s.encode("a"), lambda: s.decode([1]), lambda: s.generate_text("a")):
        with pytest.raises(NoTokenizerError, match="no tokenizer"):
            call()
    assert issubclass(NoTokenizerError, __import__("runtime.errors").errors.InputError)
    assert s.generate(np.array([5, 6, 7]), 3).shape == (1, 3)  # ids keep working


def test_a_swapped_tokenizer_is_refused(art, tmp_path):
    _, folder, _ = art
    swapped = tmp_path / "swapped"
    shutil.copytree(folder, swapped)
    other = json.loads((swapped / TOKENIZER_FILE).read_text())
    other["added_tokens"][0]["content"] = "<start>"  # still a valid tokenizer, another file
    text = json.dumps(other).encode()
    (swapped / TOKENIZER_FILE).write_bytes(text)
    with pytest.raises(ArtifactError, match="tokenizer"):
        InfiniSession.open(swapped)
    s = InfiniSession.open(swapped, verify=False)
    with pytest.raises(TokenizerError, match="sha256"):
        s.tokenizer
    # replaced after the session opened: the loader hashes the bytes it parses
    s = InfiniSession.open(folder)
    later = tmp_path / "later"
    shutil.copytree(folder, later)
    s2 = InfiniSession.open(later)
    (later / TOKENIZER_FILE).write_bytes(text)
    with pytest.raises(TokenizerError, match="corrupt or replaced"):
        s2.tokenizer
    assert s.tokenizer.vocab_size == s.manifest.tokenizer.vocab_size


def _bad_files(tmp_path, trained):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(MAX_TOKENIZER_BYTES + 1)  # sparse: nothing read, the size is refused first
    cases = {"not JSON": b'{"model": ', "not UTF-8": b"\xff\xfe{}", "nested": b"[" * 100_000 + b"]" * 100_000,
             "not a tokenizer": b'{"tokens": [1, 2]}', "unknown model": b'{"model": {"type": "Magic"}}',
             "vocab of the wrong type": b'{"model": {"type": "BPE", "vocab": [1, 2], "merges": []}}',
             "negative id": b'{"model": {"type": "WordLevel", "vocab": {"a": -1}, "unk_token": "a"}}',
             "rejected by tokenizers": b'{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": 7}}'}
    out = {}
    for name, data in cases.items():
        out[name] = tmp_path / f"{name.replace(' ', '_')}.json"
        out[name].write_bytes(data)
    out["too big"] = big
    return out


def test_bad_tokenizer_files_are_refused_by_type(art, tmp_path):
    _, _, trained = art
    for name, path in _bad_files(tmp_path, trained).items():
        with pytest.raises(TokenizerError) as exc:
            Tokenizer.from_file(path)
        assert str(path) in str(exc.value), name
    with pytest.raises(TokenizerError, match="at most 1,000 bytes"):
        Tokenizer.from_file(trained, max_bytes=1000)


def test_export_refuses_bad_tokenizers_before_writing_anything(art, tmp_path):
    from exporters.pipeline import export_artifact
    from tests.conftest import make_model
    _, _, trained = art
    module = make_model()  # vocab_size 256 < the trained tokenizer's
    vocab = max(HFTokenizer.from_file(str(trained)).get_vocab().values()) + 1
    out = tmp_path / "out"
    with pytest.raises(TokenizerError) as exc:
        export_artifact(module, out, "onnx", parity_segments=1, progress=False, log=None, tokenizer=trained)
    assert f"{vocab - 1}" in str(exc.value) and "256" in str(exc.value) and str(vocab) in str(exc.value)
    for name, path in _bad_files(tmp_path, trained).items():
        with pytest.raises(TokenizerError):
            export_artifact(module, out, "onnx", parity_segments=1, progress=False, log=None, tokenizer=path)
    with pytest.raises(TokenizerError, match="'<nope>' is not a token"):
        prepare_tokenizer(trained, 1000, eos_tokens=["<nope>"])
    assert not out.exists()


def test_the_command_line_refuses_a_bad_tokenizer(art, tmp_path):
    from infini_cli.main import main
    from infini_export.checkpoint import save_checkpoint
    from tests.conftest import make_model
    _, _, trained = art
    ckpt = save_checkpoint(make_model(), tmp_path / "ckpt")
    out = tmp_path / "out"
    assert main(["export", str(ckpt), "--tokenizer", str(trained), "-o", str(out)]) == 2
    assert main(["export", str(ckpt), "--tokenizer", str(tmp_path / "missing.json"), "-o", str(out)]) == 2
    assert not out.exists()
    # a checkpoint folder's tokenizer.json is taken without the flag; --bos-token / --eos-token name the tokens
    shutil.copy(trained, ckpt / TOKENIZER_FILE)
    assert find_tokenizer(None, ckpt) == ckpt / TOKENIZER_FILE and find_tokenizer(None, tmp_path) is None
    hf = HFTokenizer.from_file(str(trained))
    args = argparse.Namespace(checkpoint=str(ckpt), tokenizer=None, bos_token="none", eos_token=["<pad>", "</s>"])
    plan = cli_tokenizer(args, 1000)
    assert plan.info == TokenizerInfo("tokenizer", "huggingface-tokenizers", plan.info.vocab_size, None,
                                      (hf.token_to_id("<pad>"), hf.token_to_id("</s>")), False)
    defaults = cli_tokenizer(argparse.Namespace(checkpoint=str(ckpt), tokenizer=None, bos_token=None,
                                                eos_token=None), 1000)
    assert (defaults.info.bos, defaults.info.eos, defaults.info.add_bos) == (hf.token_to_id("<s>"),
                                                                            (hf.token_to_id("</s>"),), False)


def test_bos_is_prepended_where_the_tokenizer_itself_prepends_it(art, tmp_path):
    from tokenizers.processors import TemplateProcessing
    _, _, trained = art
    hf = HFTokenizer.from_file(str(trained))
    bos = hf.token_to_id("<s>")
    hf.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    hf.save(str(tmp_path / "llama_like.json"))
    plan = prepare_tokenizer(tmp_path / "llama_like.json", 1000)
    assert (plan.info.bos, plan.info.add_bos) == (bos, True)


BAD_SECTIONS = [
    ("tokenizer", "file", "weights_nope", "tokenizer.file"),
    ("tokenizer", "format", "sentencepiece", "tokenizer.format"),
    ("tokenizer", "vocab_size", 10 ** 6, "tokenizer.vocab_size"),
    ("tokenizer", "vocab_size", True, "tokenizer.vocab_size"),
    ("tokenizer", "bos", -1, "tokenizer.bos"),
    ("tokenizer", "bos", 10 ** 6, "tokenizer.bos"),
    ("tokenizer", "eos", 3, "tokenizer.eos"),
    ("tokenizer", "eos", [1, 1], "tokenizer.eos"),
    ("tokenizer", "eos", ["</s>"], "tokenizer.eos[0]"),
    ("tokenizer", "add_bos", "yes", "tokenizer.add_bos"),
    ("generation", "max_new_tokens", -1, "generation.max_new_tokens"),
    ("generation", "max_new_tokens", 1.5, "generation.max_new_tokens"),
    ("generation", "temperature", -0.5, "generation.temperature"),
    ("generation", "temperature", "hot", "generation.temperature"),
    ("generation", "top_k", -1, "generation.top_k"),
    ("generation", "top_p", 0.0, "generation.top_p"),
    ("generation", "top_p", 1.5, "generation.top_p"),
]


@pytest.mark.parametrize("section,key,value,where", BAD_SECTIONS)
def test_bad_sections_are_refused_naming_the_field(art, section, key, value, where):
    _, folder, _ = art
    man = json.loads((folder / "manifest.json").read_text())
    man[section][key] = value
    with pytest.raises(ManifestError, match=f"manifest {re.escape(where)} "):
        Manifest.from_dict(man)


def test_sections_missing_keys_or_of_the_wrong_type_are_refused(art):
    _, folder, _ = art
    base = json.loads((folder / "manifest.json").read_text())
    for section in ("tokenizer", "generation"):
        for bad in ([], "x"):
            man = copy.deepcopy(base)
            man[section] = bad
            with pytest.raises(ManifestError, match=f"manifest {section} is"):
                Manifest.from_dict(man)
        man = copy.deepcopy(base)
        del man[section][next(iter(man[section]))]
        with pytest.raises(ManifestError, match="missing"):
            Manifest.from_dict(man)
    man = copy.deepcopy(base)
    man["tokenizer"].update(bos=None, add_bos=True)
    with pytest.raises(ManifestError, match="tokenizer.add_bos"):
        Manifest.from_dict(man)
    info = TokenizerInfo.from_dict(base["tokenizer"], base["files"], base["vocab_size"])
    assert TokenizerInfo.from_dict(info.to_dict(), base["files"], base["vocab_size"]) == info
    assert GenerationDefaults.from_dict(GenerationDefaults().to_dict()) == GenerationDefaults()


def test_the_runtime_refuses_a_tokenizer_larger_than_the_manifest_says(art, tmp_path):
    _, folder, _ = art
    man = json.loads((folder / "manifest.json").read_text())
    bad = copy_with(folder, tmp_path / "bad", tokenizer={**man["tokenizer"], "vocab_size": 300})
    with pytest.raises(TokenizerError, match="vocab_size says 300"):
        InfiniSession.open(bad).tokenizer


# ---- the bundled byte-level model -----------------------------------------------------------------
def test_the_bundled_tokenizer_is_reproducible_and_maps_byte_b_to_id_b():
    path = f"{BUNDLED}/{TOKENIZER_FILE}"
    with open(path, encoding="utf-8") as f:
        assert f.read() == byte_level_tokenizer_json()
    chars = byte_level_chars()
    assert set(chars) == set(ByteLevel.alphabet()) and len(chars) == 256
    plan = prepare_tokenizer(path, 256)
    assert plan.info.to_dict() == {"file": "tokenizer", "format": "huggingface-tokenizers",
                                            "vocab_size": 256, "bos": None, "eos": [], "add_bos": False}
    tok = Tokenizer.from_file(path)
    for b in range(256):
        assert tok.backend.token_to_id(chars[b]) == b and tok.backend.id_to_token(b) == chars[b]
    rng = random.Random(0)
    text = "".join(map(chr, range(0x800))) + "".join(
        chr(rng.choice([rng.randrange(0x800, 0xD800), rng.randrange(0xE000, 0x10000), rng.randrange(0x10000, 0x110000)]))
        for _ in range(3000))
    data = text.encode("utf-8")
    assert set(data) == set(range(256)) - {0xC0, 0xC1, *range(0xF5, 0x100)}  # every byte UTF-8 text can hold
    # the ByteLevel pre-tokenizer of the tokenizers library maps each byte to the character of our table
    pieces = ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)
    assert "".join(p for p, _ in pieces) == "".join(chars[b] for b in data)
    ids = tok.encode(text)
    np.testing.assert_array_equal(ids, np.frombuffer(data, np.uint8).astype(np.int64))
    assert tok.decode(ids) == text
    for _ in range(20):
        sample = "".join(rng.choice(text) for _ in range(rng.randrange(0, 50)))
        assert tok.encode(sample).tolist() == list(sample.encode("utf-8")) and tok.decode(tok.encode(sample)) == sample
