"""course_lib.policy_losses against TRL's GRPOTrainer loss code: the same per-token log-probabilities, advantages and
masks go into both, and the losses and their gradients must agree in float64 to 1e-10.

TRL keeps the loss inside the method ``GRPOTrainer._compute_loss(self, model, inputs)``; building a real trainer needs a
model, a dataset and accelerate. The test calls that method on the smallest stand-in object that lets it run: the
trainer attributes the method reads (loss type, clip range, beta, ...), an accelerator that does nothing (one process),
and a ``_get_per_token_logps_and_entropies`` that returns our log-probabilities instead of running a model. Everything
between those inputs and the returned loss is TRL's own code. Skipped when trl is not installed
(`pip install -e .[ref]`).

Not compared: GSPO-token (this TRL has no such level) and GSPO with the unbiased KL (TRL weights the KL by the sequence
ratio there; V3.2 eq. 7, which we follow, by the token ratio).
"""
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl", reason="trl is not installed (pip install -e .[ref])")
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402

from course_lib import policy_losses as pl  # noqa: E402

torch.set_num_threads(1)


def _inputs(seed=0, B=6, T=7):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    old = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)     # many ratios outside 1 +- 0.2
    ref = logp + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    sampler = old + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = [7, 3, 5, 1, 6, 4][:B]
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(T)] for n in lengths], dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0][:B], dtype=torch.float64)
    adv = pl.advantages(rewards, 2, "grpo").double()
    return logp, old, ref, sampler, mask, adv


def _trl_loss(logp, old, ref, sampler, mask, adv, *, loss_type="grpo", level="token", beta=0.0, eps_low=0.2,
              eps_high=0.2, bias_correction=False, off_policy=None, max_len=None):
    """TRL's GRPOTrainer._compute_loss on a stand-in trainer; returns (loss, d loss / d logp)."""
    lp = logp.clone().requires_grad_(True)
    accel = SimpleNamespace(num_processes=1, sync_gradients=True, gather=lambda x: x,
                            gather_for_metrics=lambda x: x, reduce=lambda x, reduction="sum": x)
    stand_in = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (lp, torch.zeros_like(lp), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=off_policy,
        get_off_policy_mask=GRPOTrainer.get_off_policy_mask, importance_sampling_level=level, beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=bias_correction, delta=None, steps_per_generation=1),
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
        model=SimpleNamespace(training=False), current_gradient_accumulation_steps=1, max_completion_length=max_len,
        _entropy_bonus_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)), accelerator=accel)
    B, T = logp.shape
    inputs = {"prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "sampling_per_token_logps": sampler, "num_items_in_batch": mask.sum()}
    loss = GRPOTrainer._compute_loss(stand_in, None, inputs)
    (grad,) = torch.autograd.grad(loss, lp)
    return loss.detach(), grad


def _ours(logp, old, adv, mask, variant, **kw):
    lp = logp.clone().requires_grad_(True)
    loss, _ = pl.policy_loss(lp, old, adv, mask, variant, **kw)
    (grad,) = torch.autograd.grad(loss, lp)
    return loss.detach(), grad


def _same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("beta,unbiased", [(0.0, False), (0.04, False), (0.04, True)])
def test_grpo_matches_trl(beta, unbiased):
    logp, old, ref, sampler, mask, adv = _inputs()
    trl_out = _trl_loss(logp, old, ref, sampler, mask, adv, beta=beta, bias_correction=unbiased)
    ours = _ours(logp, old, adv, mask, "grpo", ref_logp=ref if beta else None, beta=beta, unbiased_kl=unbiased)
    _same(ours, trl_out)
    assert ours[0].abs().item() > 1e-3


def test_dr_grpo_matches_trl():
    logp, old, ref, sampler, mask, adv = _inputs(1)
    trl_out = _trl_loss(logp, old, ref, sampler, mask, adv, loss_type="dr_grpo", max_len=9)
    _same(_ours(logp, old, adv, mask, "dr_grpo", max_completion_length=9), trl_out)


@pytest.mark.parametrize("unbiased", [False, True])
def test_dapo_clip_higher_token_level_matches_trl(unbiased):
    logp, old, ref, sampler, mask, adv = _inputs(2)
    trl_out = _trl_loss(logp, old, ref, sampler, mask, adv, loss_type="dapo", eps_high=0.28, beta=0.02,
                        bias_correction=unbiased)
    ours = _ours(logp, old, adv, mask, "dapo", epsilon_high=0.28, ref_logp=ref, beta=0.02, unbiased_kl=unbiased)
    _same(ours, trl_out)


def test_gspo_matches_trl_sequence_level_importance_sampling():
    """TRL's GSPO: importance_sampling_level='sequence' with loss_type='grpo' (its docs' setting for the paper)."""
    logp, old, ref, sampler, mask, adv = _inputs(3)
    old = logp + 0.05 * (old - logp)                                       # GSPO's ranges are per sequence
    trl_out = _trl_loss(logp, old, ref, sampler, mask, adv, level="sequence", eps_low=0.01, eps_high=0.015)
    ours = _ours(logp, old, adv, mask, "gspo", epsilon=0.01, epsilon_high=0.015)
    _same(ours, trl_out)
    assert (ours[1] == 0).any() and (ours[1] != 0).any()                     # some sequences clipped, some not


def test_cispo_matches_trl():
    """TRL's epsilon_high for cispo is the cap itself; ours is 1 + epsilon_high (MiniMax-M1's eps_high^IS)."""
    logp, old, ref, sampler, mask, adv = _inputs(4)
    trl_out = _trl_loss(logp, old, ref, sampler, mask, adv, loss_type="cispo", eps_high=1.1)
    _same(_ours(logp, old, adv, mask, "cispo", epsilon_high=0.1), trl_out)


@pytest.mark.parametrize("loss_type,variant", [("grpo", "grpo"), ("dapo", "dapo")])
def test_off_policy_sequence_masking_matches_trl(loss_type, variant):
    logp, old, ref, sampler, mask, adv = _inputs(5)
    delta = 0.02
    keep = pl.off_policy_mask(logp, sampler, adv, mask, delta)
    assert 0 < keep.sum() < len(keep)                                      # the case masks some sequences
    trl_keep = GRPOTrainer.get_off_policy_mask(adv.unsqueeze(1), logp, sampler, mask, delta).squeeze(1)
    assert torch.equal(keep, trl_keep)
    trl_out = _trl_loss(logp, old, ref, sampler, mask, adv, loss_type=loss_type, off_policy=delta, beta=0.03,
                        bias_correction=True)
    ours = _ours(logp, old, adv, mask, variant, off_policy_delta=delta, sampling_logp=sampler, ref_logp=ref,
                 beta=0.03, unbiased_kl=True)
    _same(ours, trl_out)


def test_overlong_reward_shaping_matches_trl():
    from trl.rewards import get_soft_overlong_punishment

    lengths = [3, 12, 15, 16, 17, 19, 20, 21, 30]
    theirs = get_soft_overlong_punishment(max_completion_len=20, soft_punish_cache=6)([[1] * n for n in lengths])
    ours = pl.overlong_penalty(torch.tensor(lengths), 20, 6).tolist()
    assert ours == pytest.approx(theirs, abs=1e-12) and min(ours) == -1.0 and ours[0] == 0.0
