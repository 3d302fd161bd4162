"""course_lib.figures.grpo_figures: what notebook 05's figures show, read back from the matplotlib objects.

Bar heights are checked against course_lib.grpo's advantages and the per-token weights written out; curves against
the history they were drawn from; the diagram by its labels.
"""
import matplotlib
import pytest
import torch

from course_lib import grpo
from course_lib.figures import grpo_figures

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_advantage_playground_bars_are_rewards_advantages_and_token_weights():
    rewards, lengths = [1.0, 0, 0, 1, 0, 0], [8, 8, 8, 34, 34, 34]
    fig = grpo_figures.advantage_playground(rewards, lengths=lengths)
    left, right = fig.axes[0], fig.axes[1]
    adv = grpo.group_advantages(torch.tensor(rewards), 6)
    G, L = 6, 34
    heights = [p.get_height() for p in left.patches]
    assert heights[:6] == pytest.approx(rewards) and heights[6:] == pytest.approx(adv.tolist())
    heights = [p.get_height() for p in right.patches]
    # grpo: A_i / (G |o_i|) ; dr_grpo: A_i / (G L), L the longest completion
    assert heights[:6] == pytest.approx([a / (G * n) for a, n in zip(adv.tolist(), lengths)])
    assert heights[6:] == pytest.approx([a / (G * L) for a in adv.tolist()])
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["reward r_i", "advantage A_i"]
    assert right.get_xlabel() == "completion i  (lengths: 8,8,8,34,34,34)"
    assert [t.get_text() for t in left.get_xticklabels()] == ["1", "2", "3", "4", "5", "6"]
    plt.close(fig)


def test_advantage_playground_rejects_bad_input():
    with pytest.raises(ValueError, match="lengths"):
        grpo_figures.advantage_playground([1, 0, 0], lengths=[8, 8])
    with pytest.raises(ValueError, match="lengths"):
        grpo_figures.advantage_playground([1, 0], lengths=[8, 0])
    with pytest.raises(ValueError, match="group_size"):
        grpo_figures.advantage_playground([1.0])


def test_ppo_vs_grpo_figure_shows_the_value_model_only_for_ppo():
    fig = grpo_figures.ppo_vs_grpo_figure()
    ppo, grpo_ax = fig.axes
    assert (ppo.get_title(loc="left"), grpo_ax.get_title(loc="left")) == ("PPO", "GRPO")
    assert "value\nmodel" in _texts(ppo) and "GAE" in _texts(ppo)
    assert "value\nmodel" not in _texts(grpo_ax) and "group\nmean / std" in _texts(grpo_ax)
    for ax in (ppo, grpo_ax):
        assert {"policy\nmodel", "reference\nmodel", "reward\nmodel / rules"} <= set(_texts(ax))
    plt.close(fig)


def test_plot_history_draws_each_run_in_each_panel():
    a = {"step": [1, 2, 3], "reward": [0.5, 1.0, 0.75], "length": [3, 4, 5], "kl": [0, 0.1, 0.2],
         "eval_step": [0, 3], "eval_accuracy": [0.1, 0.9]}
    b = {**a, "reward": [0.0, 0.25, 0.5], "eval_accuracy": [0.2, 0.4]}
    fig = grpo_figures.plot_history({"a": a, "b": b})
    assert [ax.get_title() for ax in fig.axes] == ["held-out accuracy", "mean reward (train)",
                                                   "response length (tokens)", "KL(policy || base), k3"]
    acc, reward = fig.axes[0], fig.axes[1]
    assert [list(line.get_ydata()) for line in acc.lines] == [[0.1, 0.9], [0.2, 0.4]]
    assert all(list(line.get_xdata()) == [0, 3] for line in acc.lines)                 # eval curves on eval steps
    assert [list(line.get_ydata()) for line in reward.lines] == [a["reward"], b["reward"]]
    assert all(list(line.get_xdata()) == [1, 2, 3] for line in reward.lines)
    assert [t.get_text() for t in acc.get_legend().get_texts()] == ["a", "b"]
    assert all(ax.get_xlabel() == "RL step" for ax in fig.axes)
    plt.close(fig)
    fig = grpo_figures.plot_history({"a": a}, keys=("reward", "kl"))
    assert len(fig.axes) == 2 and fig.axes[0].get_legend() is None                  # one run: no legend
    plt.close(fig)
