"""course_lib.figures.mtp_analysis.draft_weight_fraction: a draft step's weights counted from the modules."""
import pytest
import torch

from course_lib import mtp
from course_lib.figures import mtp_analysis
from course_lib.model import ModelConfig, TinyLM


def _model(layers, d=32, heads=2, vocab=64, **kw):
    cfg = ModelConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                      max_position_embeddings=16, **kw)
    torch.manual_seed(0)
    return mtp.MTPModel(TinyLM(cfg), depth=1), cfg


@pytest.mark.parametrize("layers,d,vocab", [(2, 32, 64), (8, 64, 256), (5, 48, 100)])
def test_draft_weight_fraction_matches_the_formula(layers, d, vocab):
    net, cfg = _model(layers, d=d, vocab=vocab)
    # one MHA + SwiGLU block: q, k, v, out (4 d^2) and w1, w3, w2 (3 d I); the head V d; M_1 is d x 2d (V3 Eq. 21)
    block = 4 * d * d + 3 * d * cfg.intermediate_size
    head = vocab * d
    expected = (2 * d * d + block + head) / (layers * block + head)
    assert mtp_analysis.draft_weight_fraction(net) == pytest.approx(expected, rel=1e-12)


def test_draft_weight_fraction_falls_with_depth_and_counts_the_shipped_model():
    shallow, deep = (mtp_analysis.draft_weight_fraction(_model(n)[0]) for n in (2, 12))
    assert 1 > shallow > deep > 0
    net, meta = mtp_analysis.load_checkpoint()
    own = sum(p.numel() for n, p in net.mtp[0].named_parameters() if p.dim() == 2 and n.split(".")[0] != "embed")
    main = sum(p.numel() for n, p in net.model.named_parameters() if p.dim() == 2 and n.split(".")[0] != "embed")
    assert mtp_analysis.draft_weight_fraction(net) == pytest.approx(own / main, rel=1e-12)


def test_draft_weight_fraction_rejects_bad_models():
    with pytest.raises(ValueError, match="mtp_model"):
        mtp_analysis.draft_weight_fraction(TinyLM(_model(2)[1]))
    moe, _ = _model(2, ffn="moe", moe=dict(n_routed_experts=4, num_experts_per_tok=2))
    with pytest.raises(ValueError, match="dense FFN"):
        mtp_analysis.draft_weight_fraction(moe)
