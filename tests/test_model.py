import math

import pytest
import torch

from course_lib.model import (ByteTokenizer, CharTokenizer, ModelConfig, RMSNorm, TinyLM, generate, sample_next,
                              token_logprobs)
from course_lib.kit.train_loop import lr_at, train_lm


def tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=17, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=48)
    cfg.update(kw)
    return TinyLM(ModelConfig(**cfg)).eval()


def test_tokenizers_round_trip():
    tok = CharTokenizer("0123456789+=", specials=["<think>", "</think>", "<t>"])
    text = "12+3=<think>15</think><t>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids.count(tok.id_of("<think>")) == 1 and len(ids) == 10
    with pytest.raises(ValueError, match="'x'"):
        tok.encode("1x")
    b = ByteTokenizer()
    assert b.decode(b.encode("混合专家 MoE")) == "混合专家 MoE"


@pytest.mark.parametrize("kw,match", [
    ({"num_attention_heads": 5}, "num_attention_heads=5 must divide"),
    ({"hidden_size": 20, "num_attention_heads": 4}, "even for RoPE"),
    ({"ffn": "sparse"}, "ffn"), ({"attention": "flash"}, "attention"), ({"vocab_size": 0}, "vocab_size"),
    ({"first_k_dense_replace": 3}, "first_k_dense_replace"), ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"max_position_embeddings": -1}, "max_position_embeddings"),
])
def test_config_errors_name_the_parameter(kw, match):
    cfg = dict(vocab_size=17, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    cfg.update(kw)
    with pytest.raises(ValueError, match=match):
        ModelConfig(**cfg)


def test_initial_loss_is_about_log_vocab():
    m = tiny()
    x = torch.randint(0, 17, (4, 20))
    assert abs(m(x, x).loss.item() - math.log(17)) < 0.1


def test_kv_cache_prefill_plus_steps_equals_full_forward():
    m = tiny().double()
    x = torch.randint(0, 17, (3, 16))
    full = m(x).logits
    cache = m.new_cache()
    parts = [m(x[:, :7], cache=cache).logits]
    for t in range(7, 16):
        parts.append(m(x[:, t:t + 1], cache=cache, start_pos=t).logits)
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-12)


def test_model_is_causal():
    m = tiny()
    x = torch.randint(0, 17, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 17
    assert torch.allclose(m(x).logits[:, :8], m(y).logits[:, :8], atol=1e-6)
    assert not torch.allclose(m(x).logits[:, 8:], m(y).logits[:, 8:], atol=1e-6)


def test_generate_with_and_without_cache_agree_and_respect_eos():
    m = tiny()
    prompt = torch.randint(0, 17, (4, 5))
    a = generate(m, prompt, 10, temperature=0)
    b = generate(m, prompt, 10, temperature=0, use_cache=False)
    assert torch.equal(a, b) and a.shape == (4, 15) and torch.equal(a[:, :5], prompt)
    g1 = generate(m, prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(3))
    g2 = generate(m, prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(g1, g2)
    eos = int(a[0, 5])   # the first generated token of row 0 becomes 'eos': row 0 must then stay eos
    c = generate(m, prompt, 10, temperature=0, eos_id=eos)
    assert (c[0, 5:] == eos).all()


def test_sample_next_top_k_and_greedy():
    logits = torch.tensor([[0.0, 5.0, 4.9, -1.0]])
    assert sample_next(logits, 0).item() == 1
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, 1.0, top_k=2, generator=g).item() for _ in range(50)}
    assert draws == {1, 2}
    with pytest.raises(ValueError, match="top_k"):
        generate(tiny(), torch.zeros(1, 2, dtype=torch.long), 2, top_k=0)


def test_token_logprobs_match_a_manual_softmax():
    m = tiny()
    x = torch.randint(0, 17, (2, 9))
    lp = token_logprobs(m, x)
    logits = m(x).logits
    manual = torch.stack([torch.stack([torch.log(torch.softmax(logits[b, t], -1)[x[b, t + 1]]) for t in range(8)])
                          for b in range(2)])
    assert lp.shape == (2, 8) and torch.allclose(lp, manual, atol=1e-5)


def test_rmsnorm_formula():
    n = RMSNorm(4)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.allclose(n(x), x / math.sqrt((1 + 4 + 9 + 16) / 4 + 1e-6))


def test_training_learns_a_repeating_pattern():
    m = tiny()
    pattern = torch.arange(16).repeat(4)[None, :49].repeat(8, 1)
    hist = train_lm(m, lambda step: (pattern[:, :-1], pattern[:, 1:]), steps=60, lr=1e-2, progress=False)
    assert hist["loss"][-1] < 0.2 < hist["loss"][0]


def test_lr_schedule():
    assert lr_at(0, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert lr_at(10, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, warmup=10) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule"):
        lr_at(50, 100, 1.0, schedule="linear")
