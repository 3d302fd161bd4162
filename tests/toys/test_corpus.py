"""The shipped corpus matches its manifest, and Corpus splits and batches it correctly."""
import hashlib
import json

import pytest
import torch

from course_lib import asset_path
from course_lib.toys.corpus import DOMAINS, Corpus, load_parts
from course_lib.model import ByteTokenizer, CharTokenizer


def test_files_match_manifest_and_size_limit():
    manifest = json.loads(asset_path("corpus", "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["parts"]) == set(DOMAINS)
    total = 0
    for name, entry in manifest["parts"].items():
        data = asset_path("corpus", entry["file"]).read_bytes()
        assert len(data) == entry["bytes"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        data.decode("utf-8")                                  # valid UTF-8 (no character cut in half)
        total += len(data)
    assert total <= 5_000_000


def test_parts_look_like_their_domain():
    parts = load_parts()
    assert "def " in parts["python"] and "return" in parts["python"]
    assert '"""' not in parts["python"]                          # docstrings were stripped
    # every arithmetic line is a correct equation
    for line in parts["arithmetic"].splitlines()[:500]:
        lhs, rhs = line.split("=")
        a, op, b = next((lhs.partition(o) for o in "+-*" if o in lhs[1:]))
        assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(rhs)
    han = sum("\u4e00" <= c <= "\u9fff" for c in parts["chinese"])
    assert han / len(parts["chinese"]) > 0.6
    assert "床前明月光" in parts["chinese"]
    letters = sum(c.isalpha() for c in parts["english"])
    assert letters / len(parts["english"]) > 0.7 and "def " not in parts["english"]


def test_split_is_disjoint_and_complete():
    corpus = Corpus(max_chars=5000)
    tok = ByteTokenizer()
    for d in DOMAINS:
        ids = tok.encode(corpus.texts[d])
        train, val = corpus.data["train"][d].tolist(), corpus.data["val"][d].tolist()
        assert train + val == ids
        assert len(val) == len(ids) - int(len(ids) * 0.9)


def test_batches_are_shifted_windows_of_the_right_domain():
    corpus = Corpus(max_chars=20000)
    g = torch.Generator().manual_seed(0)
    x, y, dom = corpus.get_batch("train", 16, 32, generator=g, return_domains=True)
    assert x.shape == y.shape == (16, 32) and dom.shape == (16,)
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row, d in zip(x, dom.tolist()):
        data = corpus.data["train"][corpus.domains[d]]
        # the row occurs in its domain's training tokens
        windows = data.unfold(0, 32, 1)
        assert (windows == row).all(dim=1).any()
    x2, _ = corpus.get_batch("train", 16, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)                                  # seeded -> same batch
    xp, _ = corpus.get_batch("val", 4, 16, generator=g, domain="python")
    assert all(b < 128 for b in xp.flatten().tolist())        # python part is ASCII


def test_char_tokenizer_works_with_alphabet():
    corpus0 = Corpus(domains=["arithmetic"], max_chars=1000)
    tok = CharTokenizer(corpus0.alphabet())
    corpus = Corpus(tokenizer=tok, domains=["arithmetic"], max_chars=1000)
    assert tok.decode(corpus.data["train"]["arithmetic"].tolist()) == corpus.texts["arithmetic"][:900]


@pytest.mark.parametrize("kwargs, name", [
    (dict(val_fraction=0.0), "val_fraction"),
    (dict(max_chars=0), "max_chars"),
    (dict(domains=["klingon"]), "domains"),
])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Corpus(**kwargs)


def test_bad_batch_arguments():
    corpus = Corpus(max_chars=500)
    with pytest.raises(ValueError, match="split"):
        corpus.get_batch("test", 2, 8)
    with pytest.raises(ValueError, match="domain"):
        corpus.get_batch("train", 2, 8, domain="latin")
    with pytest.raises(ValueError, match="seq_len"):
        corpus.get_batch("val", 2, 400)
