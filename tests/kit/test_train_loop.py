"""course_lib.kit.train_loop: the learning-rate schedule and the shared loop, on toy problems with known answers."""
import math

import pytest
import torch

from course_lib.kit.train_loop import lr_at, train_lm


class Point(torch.nn.Module):
    """Two parameters; the loss (a - 3)^2 + (b + 1)^2 has its minimum 0 at (3, -1)."""

    def __init__(self):
        super().__init__()
        self.ab = torch.nn.Parameter(torch.zeros(2))


def bowl(model, x, y):
    a, b = model.ab
    return (a - 3) ** 2 + (b + 1) ** 2, {"a": a.item()}


def test_adamw_walks_down_a_known_bowl_and_logs_what_loss_fn_returns():
    model = Point()
    hist = train_lm(model, lambda step: (None, None), steps=300, lr=0.1, warmup=0, schedule="constant",
                    grad_clip=None, loss_fn=bowl, progress=False)
    assert hist["loss"][0] == pytest.approx(10.0)                    # (0 - 3)^2 + (0 + 1)^2
    assert hist["loss"][-1] < 1e-3 < hist["loss"][10]
    torch.testing.assert_close(model.ab.detach(), torch.tensor([3.0, -1.0]), atol=0.03, rtol=0)
    assert len(hist["a"]) == 300 and hist["a"][0] == 0.0            # logged before the step it belongs to
    assert not model.training


def _regression_run():
    """A 2-weight linear model fitted to y = 2 x1 - x2 on noisy batches seeded by the step number."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1, bias=False)

    def batch(step):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 2, generator=g)
        return x, x @ torch.tensor([[2.0], [-1.0]]) + 0.1 * torch.randn(16, 1, generator=g)

    def mse(m, x, y):
        return torch.nn.functional.mse_loss(m(x), y), {}

    hist = train_lm(model, batch, steps=150, lr=0.1, warmup=5, loss_fn=mse, progress=False)
    return hist["loss"], model.weight.detach().clone()


def test_same_seed_same_batches_same_run():
    (loss1, w1), (loss2, w2) = _regression_run(), _regression_run()
    assert loss1 == loss2 and torch.equal(w1, w2)
    assert loss1[-1] < loss1[0] / 20
    torch.testing.assert_close(w1, torch.tensor([[2.0, -1.0]]), atol=0.05, rtol=0)


def test_the_optimizer_follows_lr_at_and_the_callback_sees_each_step():
    model = Point()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    seen = []

    def callback(step, m):
        seen.append(step)
        return {"lr": opt.param_groups[0]["lr"]}

    hist = train_lm(model, lambda s: (None, None), steps=20, lr=0.01, warmup=4, loss_fn=bowl, optimizer=opt,
                    callback=callback, progress=False)
    assert seen == list(range(20))
    assert hist["lr"] == pytest.approx([lr_at(s, 20, 0.01, 4) for s in range(20)])


def test_gradient_clipping_bounds_each_sgd_step():
    model = Point()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = []
    train_lm(model, lambda s: (None, None), steps=5, lr=1.0, warmup=0, schedule="constant", grad_clip=0.01,
             loss_fn=bowl, optimizer=opt, progress=False, callback=lambda s, m: before.append(m.ab.detach().clone()))
    steps = [torch.linalg.vector_norm(b - a) for a, b in zip([torch.zeros(2)] + before, before)]
    assert all(s == pytest.approx(0.01, rel=1e-4) for s in steps)   # the gradient (norm ~6) clipped to 0.01


def test_lr_schedule_by_hand():
    assert [lr_at(s, 100, 1.0, warmup=4) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # cosine from lr at the end of warm-up to min_ratio * lr at the last step
    assert lr_at(4, 100, 1.0, warmup=4) == pytest.approx(1.0)
    assert lr_at(52, 100, 1.0, warmup=4) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, 100, 2.0, warmup=4, min_ratio=0.25) == pytest.approx(0.5)
    assert lr_at(500, 100, 1.0, warmup=4) == pytest.approx(0.1)     # stays at the floor past the end
    assert lr_at(60, 100, 3.0, warmup=4, schedule="constant") == 3.0


@pytest.mark.parametrize("call,match", [
    (lambda: train_lm(Point(), lambda s: (None, None), steps=0, loss_fn=bowl, progress=False), "steps"),
    (lambda: lr_at(5, 10, 1.0, schedule="linear"), "schedule"),
])
def test_bad_input_raises_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
