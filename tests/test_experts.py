"""course_lib.experts: the stacked routed experts against one SwiGLU per expert, on every path; MoE's config checks."""
import pytest
import torch
import torch.nn.functional as F

from course_lib.experts import RoutedExperts, check_moe_config
from course_lib.layers import SwiGLU


def _experts(n=4, d=16, h=24, seed=0):
    torch.manual_seed(seed)
    return RoutedExperts(n, d, h).double()


def _by_hand(ex: RoutedExperts, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert e as a separate layers.SwiGLU holding its slices of the stacked weights (W1 = gate rows, W3 = up rows)."""
    h = ex.hidden
    ffn = SwiGLU(x.shape[-1], h).double()
    with torch.no_grad():
        ffn.w1.weight.copy_(ex.gate_up[e, :h])
        ffn.w3.weight.copy_(ex.gate_up[e, h:])
        ffn.w2.weight.copy_(ex.down[e])
    return ffn(x)


def _sorted_rows(counts, d=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(int(sum(counts)), d, generator=g, dtype=torch.float64), torch.tensor(counts)


@pytest.mark.parametrize("counts", [[3, 0, 2, 5], [0, 0, 0, 1], [1, 1, 1, 1]])
def test_each_block_of_rows_goes_through_its_own_expert(counts):
    ex = _experts()
    x, c = _sorted_rows(counts)
    want = torch.cat([_by_hand(ex, e, chunk) for e, chunk in enumerate(x.split(counts)) if chunk.shape[0]])
    torch.testing.assert_close(ex.per_expert(x, c), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ex(x, c), want, rtol=1e-12, atol=1e-12)
    for e in range(len(ex)):
        torch.testing.assert_close(ex.expert(e, x), _by_hand(ex, e, x), rtol=1e-12, atol=1e-12)


def test_grouped_kernel_path_equals_the_loop_in_float32():
    torch.manual_seed(0)
    ex = RoutedExperts(4, 16, 24)
    x = torch.randn(10, 16)
    counts = torch.tensor([3, 0, 2, 5])
    with torch.no_grad():                      # inference: where F.grouped_mm may run on the CPU
        fast, loop = ex(x, counts), ex.per_expert(x, counts)
    torch.testing.assert_close(fast, loop, rtol=1e-5, atol=1e-5)


def test_gradients_of_the_stacked_weights_equal_each_experts_own():
    ex = _experts()
    x, c = _sorted_rows([2, 3, 0, 1])
    ex(x, c).square().sum().backward()
    for e, chunk in enumerate(x.split([2, 3, 0, 1])):
        w_gu = ex.gate_up.detach()[e].clone().requires_grad_()
        w_d = ex.down.detach()[e].clone().requires_grad_()
        if chunk.shape[0]:
            gate, up = F.linear(chunk, w_gu).chunk(2, dim=-1)
            F.linear(F.silu(gate) * up, w_d).square().sum().backward()
            torch.testing.assert_close(ex.gate_up.grad[e], w_gu.grad, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(ex.down.grad[e], w_d.grad, rtol=1e-10, atol=1e-10)
        else:
            assert ex.gate_up.grad[e].abs().max() == 0 and ex.down.grad[e].abs().max() == 0


def test_gathered_equals_one_expert_per_slot():
    ex = _experts()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 16, generator=g, dtype=torch.float64)
    idx = torch.tensor([[0, 3], [2, 2], [1, 0]])
    got = ex.gathered(x, idx)
    assert got.shape == (3, 2, 16)
    for t in range(3):
        for j in range(2):
            torch.testing.assert_close(got[t, j], _by_hand(ex, int(idx[t, j]), x[t]), rtol=1e-12, atol=1e-12)


GOOD = dict(d_model=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=8,
            scoring_func="sigmoid", n_group=4, topk_group=2, bias_update_speed=0.001, aux_loss_alpha=0.0,
            seq_aux_loss_alpha=0.0001, dispatch="sparse")


def test_a_good_config_passes():
    check_moe_config(**GOOD)


@pytest.mark.parametrize("field,value", [("n_routed_experts", 0), ("num_experts_per_tok", 9), ("n_group", 3),
                                         ("topk_group", 5), ("scoring_func", "relu"), ("moe_intermediate_size", 0)])
def test_a_bad_setting_names_its_parameter(field, value):
    with pytest.raises(ValueError, match=field):
        check_moe_config(**{**GOOD, field: value})


def test_too_few_experts_in_the_kept_groups():
    with pytest.raises(ValueError, match="topk_group=1 groups of 2 experts hold fewer than num_experts_per_tok=3"):
        check_moe_config(**{**GOOD, "num_experts_per_tok": 3, "topk_group": 1})
