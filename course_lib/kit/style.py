"""One plotting look for every notebook: call style.use() once in the setup cell."""
from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

# Named colours, so 'the shared expert' or 'the aux-loss-free arm' has the same colour in every notebook.
COLORS = {
    "blue": "#3b6fb6", "orange": "#e07b39", "green": "#4a9c5d", "red": "#c8453b", "purple": "#7d5ba6",
    "grey": "#8a8a8a", "teal": "#2a9d8f", "gold": "#d4a72c",
}
CYCLE = list(COLORS.values())

_CJK_FONTS = ["Noto Sans CJK SC", "Noto Sans SC", "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei", "PingFang SC"]


def use() -> None:
    """Course defaults: readable sizes, light grid, no top/right spines, a CJK font where one is installed."""
    from matplotlib import font_manager

    available = {f.name for f in font_manager.fontManager.ttflist}
    cjk = [name for name in _CJK_FONTS if name in available]
    mpl.rcParams.update({
        "figure.figsize": (7.0, 3.6),
        "figure.dpi": 90,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titleweight": "bold",
        "axes.prop_cycle": mpl.cycler(color=CYCLE),
        "font.size": 10,
        "legend.frameon": False,
        "font.sans-serif": cjk + list(mpl.rcParams["font.sans-serif"]),
    })


def has_cjk_font() -> bool:
    from matplotlib import font_manager

    available = {f.name for f in font_manager.fontManager.ttflist}
    return any(name in available for name in _CJK_FONTS)


def subplots(nrows: int = 1, ncols: int = 1, width: float | None = None, height: float | None = None, **kw):
    """plt.subplots with a size that grows with the grid, and constrained layout."""
    width = width or min(4.2 * ncols + 1.0, 13.0)
    height = height or 3.3 * nrows + 0.3
    return plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", **kw)
