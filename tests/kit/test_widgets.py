import matplotlib.pyplot as plt
import pytest

from course_lib.kit import widgets
from course_lib.kit.widgets import Choice, IntSlider, Slider, Toggle, interactive, widgets_enabled


def plot_power(k, scale=1.0, log=False):
    if k == 3 and scale > 1.5:
        raise ValueError("k=3 needs scale <= 1.5")
    fig, ax = plt.subplots()
    xs = range(10)
    ax.plot(xs, [scale * x ** k for x in xs])
    if log:
        ax.set_yscale("symlog")
    return fig


CONTROLS = {"k": IntSlider(1, 4, value=2), "scale": Slider(0.5, 2.0, step=0.5, value=1.0), "log": Toggle(False)}


def test_static_mode_draws_one_figure_per_setting(monkeypatch):
    monkeypatch.setenv("COURSE_WIDGETS", "static")
    assert not widgets_enabled()
    figs = interactive(plot_power, CONTROLS, static=[{"k": 1}, {"k": 4, "log": True}])
    assert len(figs) == 2 and all(f is not None for f in figs)
    assert figs[1].axes[0].get_yscale() == "symlog"


def test_invalid_combination_prints_one_line_not_a_traceback(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_WIDGETS", "static")
    figs = interactive(plot_power, CONTROLS, static=[{"k": 3, "scale": 2.0}])
    assert figs == [None]
    out = capsys.readouterr().out
    assert "Not allowed: k=3 needs scale <= 1.5" in out and "Traceback" not in out


def test_static_setting_with_unknown_control_is_rejected(monkeypatch):
    monkeypatch.setenv("COURSE_WIDGETS", "static")
    with pytest.raises(ValueError, match="unknown controls: kk"):
        interactive(plot_power, CONTROLS, static=[{"kk": 1}])


@pytest.mark.parametrize("controls,match", [
    ({"k": Slider(2, 1)}, "min 2 must be below max 1"),
    ({"k": IntSlider(1, 4, value=9)}, "outside"),
    ({"k": Choice(["a", "b"], value="c")}, "not one of the options"),
    ({"k": (1, 4)}, "use Slider"),
])
def test_invalid_controls_name_the_control(controls, match):
    with pytest.raises(ValueError, match=match):
        interactive(plot_power, controls)


def test_bad_mode_variable(monkeypatch):
    monkeypatch.setenv("COURSE_WIDGETS", "sometimes")
    with pytest.raises(ValueError, match="COURSE_WIDGETS"):
        widgets_enabled()


def test_live_mode_builds_controls_and_rerenders_on_change(monkeypatch):
    """Live widgets with the installed ipywidgets (8 here; the ipywidgets-7.7.1 environment runs this test too)."""
    ipywidgets = pytest.importorskip("ipywidgets")
    monkeypatch.setenv("COURSE_WIDGETS", "live")
    calls = []

    def spy(**params):
        calls.append(params)
        return plot_power(**params)

    box = interactive(spy, CONTROLS, title="powers")
    assert isinstance(box, ipywidgets.VBox)
    sliders = [w for w in box.children[1].children]
    assert [type(w).__name__ for w in sliders] == ["IntSlider", "FloatSlider", "Checkbox"]
    n = len(calls)
    sliders[0].value = 4
    assert len(calls) == n + 1 and calls[-1]["k"] == 4
    sliders[0].value, sliders[1].value = 3, 2.0   # invalid combination: must not raise
    assert calls[-1] == {"k": 3, "scale": 2.0, "log": False}
