"""course_lib.nano: the DeepSeek-V3-shaped configuration, the model it builds and V3-style parameter counts."""
import pytest
import torch

from course_lib import configs, nano
from course_lib.mla import MLA
from course_lib.layers import SwiGLU
from course_lib.moe import MoE


def test_tiny_model_has_v3_structure():
    torch.manual_seed(0)
    model = nano.build_model(nano.TINY)
    blocks = list(model.model.blocks)
    assert len(blocks) == nano.TINY.num_hidden_layers and len(model.mtp) == nano.TINY.num_nextn_predict_layers
    assert all(isinstance(b.attn, MLA) for b in blocks)
    k = nano.TINY.first_k_dense_replace
    assert all(not isinstance(b.ffn, MoE) for b in blocks[:k]) and all(isinstance(b.ffn, MoE) for b in blocks[k:])
    moe = blocks[-1].ffn
    assert (moe.n_routed_experts, moe.num_experts_per_tok, moe.n_group, moe.topk_group, moe.scoring_func) == (
        8, 2, 4, 2, "sigmoid")
    assert moe.bias_update_speed > 0 and moe.seq_aux_loss_alpha > 0 and moe.aux_loss_alpha == 0
    # the MTP module's block is a MoE layer too (V3's layer 61 is), and shares the embedding and head
    assert isinstance(model.mtp[0].block.ffn, MoE) and model.mtp[0].head is model.model.head


def test_param_table_counts_the_built_model():
    """configs' formulas (used for V3's 671B) against the tensors of the instantiated tiny model."""
    torch.manual_seed(0)
    model = nano.build_model(nano.TINY)
    table = nano.param_table(nano.TINY)
    main = sum(p.numel() for p in model.model.parameters())
    mtp = sum(p.numel() for n, p in model.named_parameters() if n.startswith("mtp.")
              and ".embed." not in n and ".head." not in n)
    n_moe = nano.TINY.num_hidden_layers - nano.TINY.first_k_dense_replace
    bias = nano.TINY.n_routed_experts               # configs counts V3's router bias; ours is a buffer
    assert table["total"] == main + n_moe * bias
    assert table["mtp"] == mtp + bias
    assert table["embedding"] == 256 * nano.TINY.hidden_size
    # activated by hand: the routed experts count K_r / N_r of their weights, the embedding lookup not at all
    routed = n_moe * nano.TINY.n_routed_experts * 3 * nano.TINY.hidden_size * nano.TINY.moe_intermediate_size
    assert table["activated"] == table["total"] - table["embedding"] - routed + routed * 2 // 8


def test_deep_preset_is_tiny_with_more_layers():
    """nano-deep (notebook 10 §5's decoding model): TINY's widths, experts and MTP module, 8 layers, the first dense;
    its parameter table grows by exactly five MoE layers."""
    deep, tiny = nano.get_preset("deep"), nano.TINY
    assert deep is nano.DEEP and deep.name == "nano-deep"
    assert (deep.num_hidden_layers, deep.first_k_dense_replace, deep.num_nextn_predict_layers) == (8, 1, 1)
    assert {k: v for k, v in deep.to_dict().items() if k not in ("name", "num_hidden_layers")} == \
        {k: v for k, v in tiny.to_dict().items() if k not in ("name", "num_hidden_layers")}
    torch.manual_seed(0)
    model = nano.build_model(deep)
    blocks = list(model.model.blocks)
    assert len(blocks) == 8 and not isinstance(blocks[0].ffn, MoE) and all(isinstance(b.ffn, MoE) for b in blocks[1:])
    # one draft runs one decoder layer (the MTP module's block) next to the main model's eight
    assert len(model.mtp) == 1 and isinstance(model.mtp[0].block.ffn, MoE)
    moe_layer = sum(p.numel() for p in blocks[1].parameters()) + deep.n_routed_experts   # + the router bias
    extra = {k: nano.param_table(deep)[k] - nano.param_table(tiny)[k] for k in ("total", "mtp", "embedding")}
    assert extra == {"total": 5 * moe_layer, "mtp": 0, "embedding": 0}


def test_v3_preset_reproduces_published_sizes():
    t = nano.param_table(nano.V3)
    assert abs(t["total"] / 1e9 - configs.DEEPSEEK_V3.published_total) < 0.01 * configs.DEEPSEEK_V3.published_total
    assert abs(t["activated"] / 1e9 - configs.DEEPSEEK_V3.published_activated) < 0.02 * 37
    assert abs(t["mtp"] / 1e9 - 11.5) < 0.2                         # README_WEIGHTS.md: 11.5B MTP module


def test_v3_preset_is_never_built():
    with pytest.raises(ValueError, match="counting only"):
        nano.build_model(nano.V3)


def test_dense_baselines_match_activated_or_total_ffn():
    cfg = nano.TINY
    iso_flop, iso_param = nano.dense_baseline(cfg, "activated"), nano.dense_baseline(cfg, "total")
    torch.manual_seed(0)
    m = nano.build_model(iso_flop)
    ffn = m.model.blocks[-1].ffn
    assert isinstance(ffn, SwiGLU)
    # one token's FFN weights in the MoE layer: K_r routed + N_s shared experts of 3 d h each
    per_token = (cfg.num_experts_per_tok + cfg.n_shared_experts) * 3 * cfg.hidden_size * cfg.moe_intermediate_size
    assert sum(p.numel() for p in ffn.parameters()) == per_token
    all_experts = (cfg.n_routed_experts + cfg.n_shared_experts) * 3 * cfg.hidden_size * cfg.moe_intermediate_size
    assert 3 * cfg.hidden_size * iso_param.intermediate_size == all_experts
    with pytest.raises(ValueError, match="match"):
        nano.dense_baseline(cfg, "flops")


@pytest.mark.parametrize("field,value", [("hidden_size", 0), ("qk_rope_head_dim", 7), ("attention", "gqa"),
                                         ("first_k_dense_replace", 9), ("q_lora_rank", -1)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        nano.TINY.replace(**{field: value})


def test_forward_and_mtp_loss_run():
    torch.manual_seed(0)
    model = nano.build_model(nano.TINY)
    x = torch.randint(0, 256, (2, 16))
    out = model(x, x)
    assert out.logits.shape == (2, 16, 256) and len(out.mtp_losses) == 1
    out.loss.backward()
    assert model.model.blocks[1].attn.kv_up.weight.grad is not None
