"""course_lib.kit.widgets in live mode with whichever ipywidgets is installed.

`make test` runs this with ipywidgets 8 (JupyterLab 4); `make check-e2e` runs it again in the Colab-like environment
with ipywidgets 7.7.1. Every control type must become the matching ipywidget, hand plot_fn values of the right
Python type, and redraw the figure (a Figure passed to IPython's display) when it changes.
"""
import matplotlib

matplotlib.use("Agg")

import IPython.display  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from course_lib.kit import widgets  # noqa: E402
from course_lib.kit.widgets import Choice, IntSlider, Slider, Text, Toggle, interactive  # noqa: E402

ipywidgets = pytest.importorskip("ipywidgets")

CONTROLS = {"k": IntSlider(1, 8, value=2), "gamma": Slider(0.0, 0.1, step=0.001, value=0.01),
            "preset": Choice(["V2", "V3"], value="V3"), "log": Toggle(False), "label": Text("toy")}
EXPECTED = {"k": ("IntSlider", 3), "gamma": ("FloatSlider", 0.02), "preset": ("Dropdown", "V2"),
            "log": ("Checkbox", True), "label": ("Text", "toy model")}


@pytest.fixture
def live(monkeypatch):
    monkeypatch.setenv("COURSE_WIDGETS", "live")
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, *a, **k: shown.append(obj))
    return shown


def plot(k, gamma, preset, log, label):
    if k == 8 and preset == "V2":
        raise ValueError("k=8 needs preset V3")
    fig, ax = plt.subplots()
    ax.plot(range(k + 1), [gamma * i for i in range(k + 1)], label=f"{label} {preset}")
    ax.set_yscale("symlog" if log else "linear")
    return fig


def test_every_control_type_round_trips_and_redraws(live):
    calls = []

    def spy(**params):
        calls.append(params)
        return plot(**params)

    box = interactive(spy, CONTROLS)
    assert live[-1] is box and isinstance(box, ipywidgets.VBox)
    controls = dict(zip(CONTROLS, box.children[0].children))
    assert isinstance(box.children[-1], ipywidgets.Output)
    assert calls and calls[-1] == {"k": 2, "gamma": 0.01, "preset": "V3", "log": False, "label": "toy"}
    for name, (cls, new) in EXPECTED.items():
        assert type(controls[name]).__name__ == cls, f"{name}: {type(controls[name]).__name__}, expected {cls}"
        figures_before = sum(isinstance(o, plt.Figure) for o in live)
        controls[name].value = new
        assert calls[-1][name] == new and type(calls[-1][name]) is type(new)
        assert sum(isinstance(o, plt.Figure) for o in live) == figures_before + 1, f"moving {name} drew no figure"


def test_invalid_combination_prints_the_message(live, capsys):
    box = interactive(plot, CONTROLS)
    controls = dict(zip(CONTROLS, box.children[0].children))
    controls["preset"].value = "V2"
    capsys.readouterr()
    controls["k"].value = 8                          # must not raise through the widget callback
    assert "k=8 needs preset V3" in capsys.readouterr().out
    assert widgets.widgets_enabled()
