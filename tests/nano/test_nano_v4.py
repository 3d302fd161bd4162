"""course_lib.nano.v4: the V4-style nano model (mHC streams, sliding/CSA/HCA attention, nano-DeepSeek's MoE)."""
import pytest
import torch

from course_lib.nano import v4 as nano_v4, train as train_v3
from course_lib.layers import SwiGLU
from course_lib.mhc import HyperConnection, mixing_matrices
from course_lib.moe import MoE, moe_layers

# a smaller copy for speed; the same structure as TINY_V4 (3 layers: sliding, CSA, HCA; first layer dense)
SMALL = nano_v4.TINY_V4.replace(hidden_size=32, intermediate_size=48, moe_intermediate_size=16, head_dim=16,
                                q_lora_rank=16, o_lora_rank=8, index_head_dim=8, vocab_size=64,
                                sliding_window=4, compress_rate_csa=2, compress_rate_hca=4, index_topk=2,
                                hc_sinkhorn_iters=5)


@pytest.fixture(autouse=True)
def one_thread():
    """The model runs many small ops: one thread avoids the cost of waking a second one for each (5x here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(cfg=SMALL, seed=0):
    torch.manual_seed(seed)
    return nano_v4.build_model(cfg)


def test_structure_follows_the_config():
    model = _model(nano_v4.TINY_V4)
    cfg = nano_v4.TINY_V4
    assert [b.attn.kind for b in model.blocks] == ["sliding", "csa", "hca"]
    assert model.blocks[1].attn.compressor.rate == 4 and model.blocks[1].attn.indexer.topk == 4
    assert model.blocks[2].attn.compressor.rate == 16 and model.blocks[2].attn.indexer is None
    assert all(b.attn.window == 16 for b in model.blocks)
    assert isinstance(model.blocks[0].ffn, SwiGLU) and all(isinstance(b.ffn, MoE) for b in model.blocks[1:])
    hcs = [m for m in model.modules() if isinstance(m, HyperConnection)]
    assert len(hcs) == 2 * cfg.num_hidden_layers and all(h.constrained and h.n_streams == 4 for h in hcs)


def test_forward_shapes_and_streams():
    model = _model()
    idx = torch.randint(0, SMALL.vocab_size, (2, 12))
    out = model(idx, idx)
    assert out.logits.shape == (2, 12, SMALL.vocab_size)
    assert out.hidden.shape == (2, 12, SMALL.hidden_size)
    assert out.loss.shape == () and out.aux_loss.shape == ()
    # the first loss of the small init is about log(vocab), as for TinyLM
    assert abs(out.loss.item() - torch.log(torch.tensor(float(SMALL.vocab_size))).item()) < 0.2
    # every residual mixing matrix of the last forward is doubly stochastic (mHC, V4 Eq. 8)
    for b in mixing_matrices(model):
        assert b.shape == (2, 12, 4, 4)
        assert torch.allclose(b.sum(-1), torch.ones(()), atol=1e-3) and torch.allclose(b.sum(-2), torch.ones(()),
                                                                                        atol=1e-3)


def test_causal_changing_a_future_token_leaves_earlier_logits():
    model = _model().eval()
    idx = torch.randint(0, SMALL.vocab_size, (1, 16))
    with torch.no_grad():
        ref = model(idx).logits
        for t in (3, 8, 15):
            changed = idx.clone()
            changed[0, t] = (changed[0, t] + 7) % SMALL.vocab_size
            out = model(changed).logits
            assert torch.allclose(out[:, :t], ref[:, :t], atol=1e-5), t
            assert not torch.allclose(out[:, t:], ref[:, t:], atol=1e-5), t


def test_loss_decreases_on_a_tiny_batch():
    model = _model()
    idx = torch.randint(0, SMALL.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = train_v3.make_optimizer(model, 1e-2)
    first = None
    for _ in range(15):
        logs = train_v3.train_step(model, opt, x, y, lr=1e-2)
        first = logs["main_loss"] if first is None else first
    assert logs["main_loss"] < first - 0.5


def test_trains_with_train_v3_and_updates_the_router_bias():
    model = _model()

    class Data:                                     # a minimal corpus: get_batch as course_lib.toys.corpus.Corpus
        def get_batch(self, split, batch_size, seq_len, generator=None, device=None):
            t = torch.randint(0, SMALL.vocab_size, (batch_size, seq_len + 1), generator=generator)
            return t[:, :-1], t[:, 1:]

    _, hist = train_v3.train(SMALL, 3, corpus=Data(), batch_size=2, seq_len=8, eval_every=3, eval_batches=1,
                             model=model, progress=False)
    assert len(hist["main_loss"]) == 3 and len(hist["val_loss"]) == 1
    assert any(m.e_score_correction_bias.abs().sum() > 0 for m in moe_layers(model))


@pytest.mark.parametrize("cfg", [nano_v4.TINY_V4, SMALL])
def test_param_count_matches_the_tensors(cfg):
    model = _model(cfg)
    table = nano_v4.count_params(cfg)
    assert table["total"] == sum(p.numel() for p in model.parameters())
    by = lambda *keys: sum(p.numel() for n, p in model.named_parameters() if any(k in n for k in keys))
    assert table["attention"] == by(".attn.")
    assert table["ffn"] == by(".ffn.")
    assert table["hyper_connections"] == by("_hc.", "hc_head.")
    assert table["embedding"] == by("embed.") and table["head"] == model.head.weight.numel()


@pytest.mark.parametrize("change, name", [
    (dict(hc_mult=0), "hc_mult"),
    (dict(layer_types=("sliding", "csa")), "layer_types"),
    (dict(layer_types=("sliding", "dense", "hca")), "layer_types"),
    (dict(index_topk=-1), "index_topk"),
    (dict(sliding_window=1.5), "sliding_window"),
    (dict(o_groups=3), "o_groups"),
    (dict(qk_rope_head_dim=7), "qk_rope_head_dim"),
    (dict(first_k_dense_replace=4), "first_k_dense_replace"),
])
def test_bad_config_raises_one_line_error_naming_the_field(change, name):
    with pytest.raises(ValueError, match=name) as info:
        nano_v4.TINY_V4.replace(**change)
    assert "\n" not in str(info.value)


def test_unknown_field_and_wrong_config_type():
    with pytest.raises(ValueError, match="unknown"):
        nano_v4.TINY_V4.replace(compress_ratio=4)
    with pytest.raises(ValueError, match="cfg"):
        nano_v4.build_model("tiny")


def test_config_round_trips_through_a_dict():
    d = nano_v4.TINY_V4.to_dict()
    assert d["layer_types"] == ["sliding", "csa", "hca"]
    assert nano_v4.NanoV4Config(**d) == nano_v4.TINY_V4


def test_nano_v4_adds_the_index_loss_to_aux_loss_in_training():
    torch.manual_seed(0)
    model = nano_v4.build_model(nano_v4.TINY_V4)
    x = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    out = model(x, x)
    kl = sum(b.attn.index_loss for b in model.blocks if b.attn.index_loss is not None)
    moe = sum(b.ffn.aux_loss for b in model.blocks if getattr(b.ffn, "aux_loss", None) is not None)
    assert kl.item() > 0
    torch.testing.assert_close(out.aux_loss, moe + kl)


def test_v4_defaults_are_nano_deepseeks_where_the_fields_are_shared():
    """nano-V4 differs from nano-DeepSeek only in residual and attention: every field both configs have starts equal,
    and both build their MoE layers from the same keyword arguments."""
    import dataclasses

    from course_lib import nano
    v3 = {f.name: f.default for f in dataclasses.fields(nano.NanoConfig)}
    shared = [f.name for f in dataclasses.fields(nano_v4.NanoV4Config) if f.name in v3 and f.name != "name"]
    assert {"hidden_size", "intermediate_size", "moe_intermediate_size", "n_routed_experts", "rope_theta"} <= set(shared)
    assert [n for n in shared if getattr(nano_v4.TINY_V4, n) != v3[n]] == []
    assert nano.moe_kwargs(nano_v4.TINY_V4) == nano.model_config(nano.TINY).moe
