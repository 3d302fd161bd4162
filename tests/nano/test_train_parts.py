"""course_lib.nano.train_parts: the data, step and checkpoint pieces shared by nano.train and nano.train_ep.

Each expected value is computed independently: the batch from its own seeded generator, the weight counts from the
model's parameters, the FLOPs from the configuration, the step's effects from the optimiser state. The whole run
(resuming gives the uninterrupted curve) is tested in tests/nano/test_nano_train.py.
"""
import os

import pytest
import torch

from course_lib import nano
from course_lib.moe import MoE
from course_lib.nano import train_parts as tp

torch.set_num_threads(1)
CFG = nano.TINY.replace(hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_attention_heads=2,
                        q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8)


class FakeCorpus:
    """get_batch draws from the generator it is given, so the batch shows which generator batch_fn made."""

    def get_batch(self, split, batch_size, seq_len, generator=None, device=None):
        x = torch.randint(0, 256, (batch_size, seq_len), generator=generator)
        return x, torch.full_like(x, {"train": 0, "val": 1}[split])


def build(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    return nano.build_model(cfg)


# --------------------------------------------------------------------------------------------- data
def test_batch_n_comes_from_its_own_generator_seeded_by_seed_and_step():
    get = tp.batch_fn(FakeCorpus(), "val", 2, 5, seed=7)
    later = get(3)
    first = get(0)                                               # order of calls does not matter
    want = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(7 * 1_000_003 + 3))
    assert torch.equal(later[0], want) and (later[1] == 1).all()
    assert torch.equal(get(3)[0], later[0]) and not torch.equal(first[0], later[0])
    assert not torch.equal(tp.batch_fn(FakeCorpus(), "val", 2, 5, seed=8)(3)[0], later[0])


# --------------------------------------------------------------------------------------------- counting
def test_activated_params_count_every_matrix_but_the_embedding():
    """6 x activated weights: hand count for a dense model (every matrix but the embedding) and the routed experts'
    K_r/N_r share for the MoE."""
    dense = build(nano.dense_baseline(CFG).replace(num_nextn_predict_layers=0))
    want = sum(p.numel() for p in dense.parameters()) - dense.embed.weight.numel()
    assert tp.activated_params(dense) == want
    moe = build(CFG.replace(num_nextn_predict_layers=0))
    n_moe = CFG.num_hidden_layers - CFG.first_k_dense_replace
    routed = n_moe * CFG.n_routed_experts * 3 * CFG.hidden_size * CFG.moe_intermediate_size
    want = sum(p.numel() for p in moe.parameters()) - moe.embed.weight.numel() - routed + routed * 2 // 8
    assert tp.activated_params(moe) == want


def test_activated_params_count_the_shared_head_once_per_mtp_module():
    cfg = nano.dense_baseline(CFG).replace(num_nextn_predict_layers=2)
    model = build(cfg)
    lm = model.model
    # model.parameters() lists the shared embedding and head once; each MTP module reads out through the head again
    want = sum(p.numel() for p in model.parameters()) - lm.embed.weight.numel() + 2 * lm.head.weight.numel()
    assert tp.activated_params(model) == want


def test_train_flops_per_token_by_hand():
    model = build()                                              # 3 layers + 1 MTP block, MLA
    per_block = CFG.num_attention_heads * (CFG.qk_nope_head_dim + CFG.qk_rope_head_dim + CFG.v_head_dim)  # 2 x 20
    seq_len = 16
    want = 6.0 * tp.activated_params(model) + 6.0 * (seq_len / 2) * 4 * per_block
    assert tp.train_flops_per_token(model, seq_len) == want


# --------------------------------------------------------------------------------------------- step
def test_loss_of_adds_the_balance_loss_to_the_main_loss():
    model = build(CFG.replace(num_nextn_predict_layers=0, seq_aux_loss_alpha=0.1))
    x = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    model.train()
    loss, logs = tp.loss_of(model, x, x)
    out = model(x, x)
    assert out.aux_loss.item() > 0
    assert loss.item() == pytest.approx(out.loss.item() + out.aux_loss.item(), rel=1e-6)
    assert logs == {"main_loss": pytest.approx(out.loss.item(), rel=1e-6)}


def test_loss_of_an_mtp_model_logs_both_losses():
    model = build()
    x = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(2))
    loss, logs = tp.loss_of(model, x, x, lam=0.5)
    out = model(x, x, lam=0.5)
    assert set(logs) == {"main_loss", "mtp_loss"}
    assert logs["main_loss"] == pytest.approx(out.main_loss.item(), rel=1e-6)
    assert logs["mtp_loss"] == pytest.approx(torch.stack(out.mtp_losses).mean().item(), rel=1e-6)
    assert loss.item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_train_step_sets_the_lr_steps_and_updates_the_routing_biases():
    model = build()
    opt = tp.make_optimizer(model, 1e-3)
    assert type(opt) is torch.optim.AdamW
    assert (opt.defaults["betas"], opt.defaults["weight_decay"]) == ((0.9, 0.95), 0.1)     # V3 §4.2
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(3))
    logs = tp.train_step(model, opt, x, x, lr=5e-3)
    assert all(g["lr"] == 5e-3 for g in opt.param_groups)
    assert set(logs) == {"loss", "main_loss", "mtp_loss"} and logs["loss"] > 0
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.grad is not None
               and p.grad.abs().sum() > 0)
    biases = [m.e_score_correction_bias for m in model.modules() if isinstance(m, MoE)]
    # b_i <- b_i + gamma sign(mean load - load_i): every bias moved by exactly +-gamma (or 0 at the mean load)
    gamma = CFG.bias_update_speed
    assert biases and all(((b.abs() < 1e-9) | ((b.abs() - gamma).abs() < 1e-9)).all() for b in biases)
    assert any(b.abs().sum() > 0 for b in biases)


def test_validation_loss_is_the_mean_of_the_batches_and_keeps_the_mode():
    model = build()
    get_val = tp.batch_fn(FakeCorpus(), "train", 2, 8, seed=0)
    model.train()
    got = tp.validation_loss(model, get_val, 3)
    assert model.training
    model.eval()
    with torch.no_grad():
        want = sum(model.model(*get_val(i)).loss.item() for i in range(3)) / 3
    assert got == pytest.approx(want, rel=1e-6)
    assert tp.validation_loss(model, get_val, 3) == pytest.approx(want, rel=1e-6) and not model.training


# --------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path):
    model = build()
    opt = tp.make_optimizer(model, 1e-3)
    x = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(4))
    tp.train_step(model, opt, x, x, lr=1e-3)
    path = tmp_path / "run" / tp.CHECKPOINT
    tp.save_checkpoint(path, model, opt, 1, {"loss": [1.5]}, CFG, {"seed": 0})
    state = tp.load_checkpoint(path)
    assert (state["step"], state["history"], state["run"]) == (1, {"loss": [1.5]}, {"seed": 0})
    assert state["config"] == CFG.to_dict()
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    assert state["opt"]["param_groups"][0]["lr"] == 1e-3 and len(state["opt"]["state"]) > 0
    assert os.listdir(path.parent) == [tp.CHECKPOINT]                     # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model = build()
    opt = tp.make_optimizer(model, 1e-3)
    path = tmp_path / tp.CHECKPOINT
    tp.save_checkpoint(path, model, opt, 1, {}, CFG, {})

    def crash(state, f):
        with open(f, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(tp.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        tp.save_checkpoint(path, model, opt, 2, {}, CFG, {})
    monkeypatch.undo()
    assert tp.load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == [tp.CHECKPOINT]
