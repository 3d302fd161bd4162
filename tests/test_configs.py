"""Parameter counting: checked against real modules at tiny sizes, then against the published totals."""
import pytest
import torch

from course_lib import configs
from course_lib.mla import MLA
from course_lib.configs import (DEEPSEEK_V2, DEEPSEEK_V2_LITE, DEEPSEEK_V3, DeepSeekConfig, count_activated,
                                count_params, main_total, stored_total)

torch.set_num_threads(2)


def tiny(**kw):
    args = dict(name="tiny", vocab_size=50, hidden_size=32, intermediate_size=40, moe_intermediate_size=12,
                num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4, q_lora_rank=16, kv_lora_rank=8,
                qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=5, n_routed_experts=8, n_shared_experts=1,
                num_experts_per_tok=2, router_bias=True)
    args.update(kw)
    return DeepSeekConfig(**args)


@pytest.mark.parametrize("q_lora_rank", [16, None])
def test_attention_count_equals_course_mla_module(q_lora_rank):
    cfg = tiny(q_lora_rank=q_lora_rank)
    module = MLA(**configs.mla_kwargs(cfg))
    assert configs.attention_params(cfg) == sum(p.numel() for p in module.parameters())


def _numel(module):
    # V3's router bias is a buffer in transformers (it is updated by a rule, not by gradients); count it.
    return sum(p.numel() for p in module.parameters()) + sum(
        b.numel() for n, b in module.named_buffers() if "e_score_correction_bias" in n)


def test_main_model_count_equals_transformers_deepseek_v3():
    tf = pytest.importorskip("transformers")
    cfg = tiny()
    hf = tf.DeepseekV3Config(vocab_size=50, hidden_size=32, intermediate_size=40, moe_intermediate_size=12,
                             num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4,
                             num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=6,
                             qk_rope_head_dim=4, v_head_dim=5, n_routed_experts=8, n_shared_experts=1,
                             num_experts_per_tok=2, n_group=1, topk_group=1)
    torch.manual_seed(0)
    assert main_total(count_params(cfg)) == _numel(tf.DeepseekV3ForCausalLM(hf))
    # One MTP module = enorm + hnorm + projection M (d x 2d) + one MoE block + the head's norm (V3 §2.2).
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer
    block = _numel(DeepseekV3DecoderLayer(hf, layer_idx=2))
    d = cfg.hidden_size
    assert configs.mtp_module_params(cfg) == block + 2 * d + 2 * d * d + d


def test_main_model_count_equals_transformers_deepseek_v2_lite_shape():
    tf = pytest.importorskip("transformers")
    if not hasattr(tf, "DeepseekV2ForCausalLM"):
        pytest.skip("this transformers has no DeepseekV2")
    cfg = tiny(q_lora_rank=None, router_bias=False, n_shared_experts=2)
    hf = tf.DeepseekV2Config(vocab_size=50, hidden_size=32, intermediate_size=40, moe_intermediate_size=12,
                             num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4,
                             num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=8, qk_nope_head_dim=6,
                             qk_rope_head_dim=4, v_head_dim=5, n_routed_experts=8, n_shared_experts=2,
                             num_experts_per_tok=2, n_group=1, topk_group=1)
    torch.manual_seed(0)
    assert main_total(count_params(cfg)) == _numel(tf.DeepseekV2ForCausalLM(hf))


@pytest.mark.parametrize("cfg,total_tol,act_tol", [
    (DEEPSEEK_V3, 0.005, 0.02), (DEEPSEEK_V2, 0.005, 0.02), (DEEPSEEK_V2_LITE, 0.005, 0.03)])
def test_reproduces_published_totals(cfg, total_tol, act_tol):
    total = main_total(count_params(cfg)) / 1e9
    active = main_total(count_activated(cfg)) / 1e9
    assert abs(total / cfg.published_total - 1) < total_tol, total
    assert abs(active / cfg.published_activated - 1) < act_tol, active


def test_v3_stored_size_with_mtp_matches_model_card():
    stored = stored_total(DEEPSEEK_V3) / 1e9
    assert abs(stored - DEEPSEEK_V3.published_stored) < 1.0, stored          # 685B on the model card
    mtp = count_params(DEEPSEEK_V3)["mtp"] / 1e9
    assert 11.4 < mtp < 11.7                                                  # README_WEIGHTS: 11.5B unique


def test_activated_uses_top_k_experts_only():
    cfg = tiny()
    tot, act = count_params(cfg), count_activated(cfg)
    assert act["routed_experts"] * cfg.n_routed_experts == tot["routed_experts"] * cfg.num_experts_per_tok
    assert act["embedding"] == 0 and act["shared_experts"] == tot["shared_experts"]


def test_yarn_scale_and_report():
    # V3: mscale = 0.1 * 1.0 * ln 40 + 1 -> scale grows by mscale^2 over the paper's 1/sqrt(192)
    assert configs.yarn_softmax_scale(DEEPSEEK_V3) * 192 ** 0.5 == pytest.approx((0.1 * 3.6888794541 + 1) ** 2)
    text = configs.report(DEEPSEEK_V2)
    assert "routed_experts" in text and "published" in text
    with pytest.raises(ValueError, match="name"):
        configs.get_config("DeepSeek-V9")
