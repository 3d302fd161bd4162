"""The diagrams drawn in code: they build, carry the course's names, reject bad options, and stay readable
(no label overlaps another, and a label written in a box stays inside it)."""
import itertools

import matplotlib.pyplot as plt
import pytest
from matplotlib.patches import FancyBboxPatch

from course_lib.figures import diagrams
from course_lib import grpo
from course_lib.figures.diagrams import PIPELINE_NODES, r1_pipeline_figure
from course_lib.kit.style import COLORS


def _texts(fig):
    return [t for ax in fig.axes for t in [*ax.texts, ax.title] if t.get_text().strip()] + \
        [t for t in fig.texts if t.get_text().strip()]


def _joined(fig):
    return "\n".join(t.get_text() for t in _texts(fig))


def _overlaps(fig, tol=1.0):
    """Pairs of labels whose rendered bounding boxes intersect (by more than tol pixels each way)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _texts(fig)]
    bad = []
    for (ta, a), (tb, b) in itertools.combinations(boxes, 2):
        dx = min(a.x1, b.x1) - max(a.x0, b.x0)
        dy = min(a.y1, b.y1) - max(a.y0, b.y0)
        if dx > tol and dy > tol:
            bad.append((ta, tb))
    return bad


def _spills(fig, tol=2.0):
    """Labels anchored inside a box whose rendered text runs past that box's edges."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bad = []
    for ax in fig.axes:
        patches = [p.get_window_extent(renderer) for p in ax.patches if isinstance(p, FancyBboxPatch)]
        for t in ax.texts:
            x, y = ax.transData.transform(t.get_position())
            around = [p for p in patches if p.x0 <= x <= p.x1 and p.y0 <= y <= p.y1]
            if not around or not t.get_text().strip():
                continue
            box = min(around, key=lambda p: p.width * p.height)
            ext = t.get_window_extent(renderer)
            if ext.x0 < box.x0 - tol or ext.x1 > box.x1 + tol or ext.y0 < box.y0 - tol or ext.y1 > box.y1 + tol:
                bad.append(t.get_text())
    return bad


FIGURES = {
    "mla_naive": lambda: diagrams.mla_figure("naive"),
    "mla_absorbed": lambda: diagrams.mla_figure("absorbed"),
    "moe_default": lambda: diagrams.moe_layer_figure(),
    "moe_wide": lambda: diagrams.moe_layer_figure(n_shared=2, n_routed=16, top_k=6),
    "moe_v2_small": lambda: diagrams.moe_layer_figure(n_shared=0, n_routed=4, top_k=1, scoring="softmax"),
    "mtp_1": lambda: diagrams.mtp_chain_figure(1),
    "mtp_3": lambda: diagrams.mtp_chain_figure(3),
    "grpo_symbols": lambda: diagrams.grpo_figure(),
    "grpo_numbers": lambda: diagrams.grpo_figure([1, 0, 0, 1, 2, 1, 0, 0], loss_type="dr_grpo", kl=False),
    "grpo_two": lambda: diagrams.grpo_figure(group_size=2, loss_type="dapo"),
    "pipeline": lambda: r1_pipeline_figure({"r1zero": "toy acc 0.9"}),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_no_label_overlaps_another_or_leaves_its_box(name):
    fig = FIGURES[name]()
    try:
        assert not _overlaps(fig), f"{name}: overlapping labels {_overlaps(fig)}"
        if name != "pipeline":      # the pipeline's notebook tags sit on the box corners on purpose
            assert not _spills(fig), f"{name}: labels leave their boxes {_spills(fig)}"
    finally:
        plt.close(fig)


def test_overlap_and_spill_checks_can_fail():
    fig, ax = plt.subplots()
    ax.text(0.5, 0.5, "one long label")
    ax.text(0.52, 0.5, "another label")
    assert _overlaps(fig)
    ax.add_patch(FancyBboxPatch((0.1, 0.1), 0.05, 0.05))
    ax.text(0.12, 0.12, "far too long for a tiny box")
    assert _spills(fig) == ["far too long for a tiny box"]
    plt.close(fig)


@pytest.mark.parametrize("path", ["naive", "absorbed"])
def test_mla_figure_names_the_modules_and_the_cache(path):
    fig = diagrams.mla_figure(path)
    text = _joined(fig)
    for name in ("q_down", "q_norm", "q_up", "kv_down", "kv_norm", '"c_kv"', '"k_rope"', "out", "(9)", "(12)",
                 "(15)", "18)", "(19)"):
        assert name in text, f"{name} missing from the {path} MLA figure"
    if path == "naive":
        assert "kv_up" in text and "(10-11)" in text and "q_lat" not in text
    else:
        assert "q_lat" in text and "o_lat" in text and "kv_up" not in text and "W^{UK" in text and "W^{UV" in text
    plt.close(fig)


def test_moe_figure_draws_the_chosen_experts_and_the_selection_only_bias():
    fig = diagrams.moe_layer_figure(n_shared=2, n_routed=8, top_k=3)
    text = _joined(fig)
    for name in ("shared_experts", "gate", "e_score_correction_bias", "top_k", "(12)", "(13-14)", "(15)", "(16)",
                 "selection only", "not s + b"):
        assert name in text, name
    assert text.count("shared_experts") == 2
    orange = [p for p in fig.axes[0].patches if p.get_edgecolor()[:3] == plt.matplotlib.colors.to_rgb(COLORS["orange"])]
    assert len(orange) == 3                                   # top_k routed experts are coloured as chosen
    plt.close(fig)
    v2 = _joined(diagrams.moe_layer_figure(scoring="softmax"))
    assert "Softmax" in v2 and "e_score_correction_bias" not in v2
    plt.close("all")


def test_mtp_figure_has_one_module_per_depth_and_shared_embedding_and_head():
    for depth in (1, 2, 3):
        fig = diagrams.mtp_chain_figure(depth)
        text = _joined(fig)
        for name in ("hnorm", "enorm", "proj", "block", "embed", "head"):
            assert text.count(name) >= depth, name
        assert text.count("hnorm") == depth and text.count("(shared)") == 2 * (depth + 1)
        assert "(21)" in text and "(22)" in text and "(23)" in text and "(24)" in text and "(25)" in text
        assert f"t_{{i+{depth + 1}}}" in text                   # the deepest module predicts depth + 1 ahead
        plt.close(fig)


def test_grpo_figure_names_the_pieces_and_writes_hand_checked_advantages():
    text = _joined(diagrams.grpo_figure())
    for name in ("group_advantages", "clipped_surrogate", "kl_k3", "aggregate", "(3)", "(4)"):
        assert name in text, name
    # rewards 1, 0, 0, 1: mean 0.5, sample std sqrt(1/3) = 0.577, so A = +-0.5 / 0.577 = +-0.87
    text = _joined(diagrams.grpo_figure([1, 0, 0, 1], kl=False))
    assert "$A_{1}$ = +0.87" in text and "$A_{2}$ = -0.87" in text and "$r_{4}$ = 1" in text
    assert "kl_k3" not in text
    assert set(diagrams.GRPO_REDUCTIONS) == set(grpo.LOSS_TYPES)
    plt.close("all")


@pytest.mark.parametrize("call,param", [
    (lambda: diagrams.mla_figure("auto"), "path"),
    (lambda: diagrams.moe_layer_figure(n_shared=5), "n_shared"),
    (lambda: diagrams.moe_layer_figure(n_routed=1), "n_routed"),
    (lambda: diagrams.moe_layer_figure(n_routed=4, top_k=5), "top_k"),
    (lambda: diagrams.moe_layer_figure(top_k=True), "top_k"),
    (lambda: diagrams.moe_layer_figure(scoring="relu"), "scoring"),
    (lambda: diagrams.mtp_chain_figure(0), "depth"),
    (lambda: diagrams.mtp_chain_figure(2.0), "depth"),
    (lambda: diagrams.grpo_figure(group_size=1), "group_size"),
    (lambda: diagrams.grpo_figure([1.0]), "rewards"),
    (lambda: diagrams.grpo_figure(loss_type="ppo"), "loss_type"),
])
def test_bad_options_raise_one_line_value_errors(call, param):
    with pytest.raises(ValueError, match=param) as info:
        call()
    assert "\n" not in str(info.value)
    plt.close("all")


def test_pipeline_figure_and_notes():
    fig = r1_pipeline_figure({"r1zero": "toy acc 0.9"})
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("toy acc 0.9" in t for t in texts)
    assert len([t for t in texts if t.startswith("nb ")]) == len(PIPELINE_NODES)
    with pytest.raises(ValueError, match="unknown stages"):
        r1_pipeline_figure({"v4": "x"})
    plt.close(fig)
