"""Thin interactive wrappers over pure plotting functions.

`interactive(plot_fn, controls, static)` shows live controls when a widget frontend can draw them, and otherwise
draws a few representative static figures. The plotting function stays pure (tests call it directly); a ValueError
from it (an impossible slider combination) appears as a one-line message, never as a traceback.

Works with ipywidgets 7.7 (Google Colab) and 8 (JupyterLab 4): it only uses interactive_output, Output, VBox/HBox and
the basic controls, whose API is the same in both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import matplotlib.pyplot as plt

WIDGETS_ENV = "COURSE_WIDGETS"   # "static" forces the static fallback (what the test-suite uses), "live" forces widgets


@dataclass
class Slider:
    min: float
    max: float
    step: float = 0.01
    value: float | None = None
    description: str | None = None

    def default(self):
        return self.min if self.value is None else self.value


@dataclass
class IntSlider(Slider):
    step: int = 1


@dataclass
class Choice:
    options: Sequence
    value: Any = None
    description: str | None = None

    def default(self):
        return self.options[0] if self.value is None else self.value


@dataclass
class Toggle:
    value: bool = False
    description: str | None = None

    def default(self):
        return self.value


@dataclass
class Text:
    value: str = ""
    description: str | None = None

    def default(self):
        return self.value


def widgets_enabled() -> bool:
    """True when live widgets should be shown: ipywidgets importable, inside a kernel, not forced static."""
    mode = os.environ.get(WIDGETS_ENV, "").strip().lower()
    if mode not in ("", "static", "live"):
        raise ValueError(f"{WIDGETS_ENV}={mode!r}: use 'static', 'live' or leave it unset")
    if mode == "static":
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return mode == "live" or (shell is not None and getattr(shell, "kernel", None) is not None)


def _validate(controls: dict) -> None:
    for name, c in controls.items():
        if isinstance(c, Slider):
            if not c.min < c.max:
                raise ValueError(f"control {name!r}: min {c.min} must be below max {c.max}")
            if not c.min <= c.default() <= c.max:
                raise ValueError(f"control {name!r}: value {c.default()} is outside [{c.min}, {c.max}]")
        elif isinstance(c, Choice):
            if not len(c.options):
                raise ValueError(f"control {name!r}: a Choice needs options")
            if c.default() not in list(c.options):
                raise ValueError(f"control {name!r}: value {c.default()!r} is not one of the options")
        elif not isinstance(c, (Toggle, Text)):
            raise ValueError(f"control {name!r}: use Slider, IntSlider, Choice, Toggle or Text, got {type(c).__name__}")


def render(plot_fn: Callable, params: dict) -> Any:
    """Call plot_fn(**params) and show its figure; a ValueError becomes a one-line message. Returns the figure or None."""
    from IPython.display import display

    try:
        fig = plot_fn(**params)
    except ValueError as exc:
        plt.close("all")
        print(f"Not allowed: {exc}")
        return None
    if fig is None:
        fig = plt.gcf()
    display(fig)
    plt.close(fig)
    return fig


def _to_ipywidget(name: str, c):
    import ipywidgets as w

    label = c.description or name
    style = {"description_width": "initial"}
    if isinstance(c, IntSlider):
        return w.IntSlider(value=int(c.default()), min=int(c.min), max=int(c.max), step=int(c.step),
                           description=label, continuous_update=False, style=style)
    if isinstance(c, Slider):
        return w.FloatSlider(value=float(c.default()), min=c.min, max=c.max, step=c.step, description=label,
                             continuous_update=False, readout_format=".3g", style=style)
    if isinstance(c, Choice):
        return w.Dropdown(options=list(c.options), value=c.default(), description=label, style=style)
    if isinstance(c, Toggle):
        return w.Checkbox(value=bool(c.value), description=label, style=style)
    return w.Text(value=c.value, description=label, continuous_update=False, style=style)


def interactive(plot_fn: Callable, controls: dict, static: list[dict] | None = None, title: str | None = None):
    """Live controls around plot_fn when widgets can be shown, else one static figure per setting in `static`.

    Returns the ipywidgets container in live mode (tests can move its controls), else the list of figures drawn.
    """
    _validate(controls)
    defaults = {name: c.default() for name, c in controls.items()}
    if not widgets_enabled():
        figures = []
        for setting in static or [{}]:
            unknown = set(setting) - set(controls)
            if unknown:
                raise ValueError(f"static setting names unknown controls: {', '.join(sorted(unknown))}")
            params = {**defaults, **setting}
            print("Static preview: " + ", ".join(f"{k}={v!r}" for k, v in setting.items())
                  if setting else "Static preview with the default settings")
            figures.append(render(plot_fn, params))
        return figures

    import ipywidgets as w
    from IPython.display import display

    ui = {name: _to_ipywidget(name, c) for name, c in controls.items()}
    out = w.interactive_output(lambda **params: render(plot_fn, params), ui)
    children = ([w.HTML(f"<b>{title}</b>")] if title else []) + [w.HBox(list(ui.values()), layout=w.Layout(flex_flow="row wrap")), out]
    box = w.VBox(children)
    display(box)
    return box
