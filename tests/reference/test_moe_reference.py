"""course_lib.moe.MoE equals transformers' DeepseekV3MoE when both hold the same weights.

transformers is a test-only dependency (the ``ref`` extra); without it these tests are skipped.
Weight mapping (transformers -> ours):
  gate.weight (E, d)                        -> gate.weight
  gate.e_score_correction_bias (E,)         -> e_score_correction_bias
  experts.gate_up_proj (E, 2h, d)           -> experts.gate_up   (same layout: gate rows first, then up)
  experts.down_proj (E, d, h)               -> experts.down
  shared_experts.gate_proj.weight           -> shared_experts.w1.weight (course_lib.layers.SwiGLU)
  shared_experts.up_proj.weight             -> shared_experts.w3.weight
  shared_experts.down_proj.weight           -> shared_experts.w2.weight
"""
import pytest
import torch

from course_lib.kit.versions import transformers_problem  # noqa: E402

if why := transformers_problem():             # an older transformers computes other numbers: skip, saying which
    pytest.skip(why, allow_module_level=True)
from transformers import DeepseekV3Config  # noqa: E402
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE  # noqa: E402

from course_lib.moe import MoE  # noqa: E402

D, H, E, K, GROUPS, KEPT, SHARED = 32, 16, 16, 4, 4, 2, 2


def make_pair(dtype, seed=0):
    """A transformers DeepseekV3MoE with random weights (incl. a non-zero bias) and our MoE holding the same."""
    g = torch.Generator().manual_seed(seed)
    cfg = DeepseekV3Config(hidden_size=D, moe_intermediate_size=H, n_routed_experts=E, n_shared_experts=SHARED,
                           num_experts_per_tok=K, n_group=GROUPS, topk_group=KEPT, routed_scaling_factor=2.5,
                           norm_topk_prob=True, hidden_act="silu")
    ref = DeepseekV3MoE(cfg)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        # a bias large enough to change which experts win, so the test covers "select with s + b, gate with s"
        ref.gate.e_score_correction_bias.copy_(torch.randn(E, generator=g) * 0.2)
    ref = ref.to(dtype)
    # transformers keeps the router weight and bias in float32 (like V3's own code) -- restore them
    ref.gate.weight.data = ref.gate.weight.data.float()
    ref.gate.e_score_correction_bias.data = ref.gate.e_score_correction_bias.data.float()

    ours = MoE(d_model=D, n_routed_experts=E, n_shared_experts=SHARED, num_experts_per_tok=K,
               moe_intermediate_size=H, scoring_func="sigmoid", n_group=GROUPS, topk_group=KEPT,
               norm_topk_prob=True, routed_scaling_factor=2.5)
    with torch.no_grad():
        ours.gate.weight.copy_(ref.gate.weight)
        ours.e_score_correction_bias.copy_(ref.gate.e_score_correction_bias)
        ours.experts.gate_up.copy_(ref.experts.gate_up_proj)
        ours.experts.down.copy_(ref.experts.down_proj)
        ours.shared_experts.w1.weight.copy_(ref.shared_experts.gate_proj.weight)
        ours.shared_experts.w3.weight.copy_(ref.shared_experts.up_proj.weight)
        ours.shared_experts.w2.weight.copy_(ref.shared_experts.down_proj.weight)
    ours = ours.to(dtype)
    ours.gate.weight.data = ours.gate.weight.data.float()
    return ref.eval(), ours.eval()


def test_same_experts_and_output_float32():
    ref, ours = make_pair(torch.float32)
    x = torch.randn(3, 10, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, ref_w, ref_idx = ref.gate(x)
        w, idx, _ = ours.router(x.reshape(-1, D))
        # same experts (transformers returns them unsorted, so compare as sorted sets)
        assert torch.equal(ref_idx.sort(-1).values, idx.sort(-1).values)
        # same gate value for each chosen expert
        torch.testing.assert_close(ref_w.gather(1, ref_idx.argsort(-1)), w.gather(1, idx.argsort(-1)),
                                   rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


def test_bias_and_groups_are_active():
    """Guard against a vacuous test: the bias and the group limit must change the chosen experts here."""
    ref, ours = make_pair(torch.float32)
    x = torch.randn(3, 10, D, generator=torch.Generator().manual_seed(1)).reshape(-1, D)
    with torch.no_grad():
        _, idx, _ = ours.router(x)
        ours.e_score_correction_bias.zero_()
        _, idx_no_bias, _ = ours.router(x)
        ours.n_group, ours.topk_group = 1, 1
        _, idx_plain, _ = ours.router(x)
    assert not torch.equal(idx.sort(-1).values, idx_no_bias.sort(-1).values)
    assert not torch.equal(idx_no_bias.sort(-1).values, idx_plain.sort(-1).values)


def test_same_output_float64():
    """float64 experts. Both routers run in float32 (transformers always does, and so do we), so the experts
    chosen are identical; the float32 gate values may differ in the last bit (the top-k weights are summed
    in a different order), so the full output agrees to float32 level, and the expert computation fed the
    same routing agrees to float64 precision."""
    ref, ours = make_pair(torch.float64)
    x = torch.randn(4, 16, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        _, ref_w, ref_idx = ref.gate(x)
        w, idx, _ = ours.router(x.reshape(-1, D))
        assert torch.equal(ref_idx.sort(-1).values, idx.sort(-1).values)
        torch.testing.assert_close(ref_w.gather(1, ref_idx.argsort(-1)).double(), w.gather(1, idx.argsort(-1)),
                                   rtol=1e-6, atol=1e-7)
        out = ours(x)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)
        flat = x.reshape(-1, D)
        torch.testing.assert_close(ours.experts_sparse(flat, ref_w.double(), ref_idx),
                                   ref.experts(flat, ref_idx, ref_w), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.shared_experts(flat), ref.shared_experts(flat), rtol=1e-12, atol=1e-12)


def test_loop_dispatch_matches_reference():
    ref, ours = make_pair(torch.float32, seed=3)
    ours.dispatch = "loop"
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
