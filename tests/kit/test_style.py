"""course_lib.kit.style: the one plotting look, its CJK font fallback and the sized subplots."""
from types import SimpleNamespace

import matplotlib
import matplotlib.pyplot as plt
import pytest
from matplotlib import font_manager

from course_lib.kit import style

matplotlib.use("Agg")


@pytest.fixture
def fonts(monkeypatch):
    """Pretend exactly these font families are installed."""
    def install(*names):
        monkeypatch.setattr(font_manager.fontManager, "ttflist", [SimpleNamespace(name=n) for n in names])
    return install


def test_use_sets_the_course_defaults(fonts):
    fonts("DejaVu Sans")
    with matplotlib.rc_context():
        style.use()
        rc = matplotlib.rcParams
        assert tuple(rc["figure.figsize"]) == (7.0, 3.6) and rc["figure.dpi"] == 90
        assert rc["axes.grid"] and rc["grid.alpha"] == 0.3
        assert not rc["axes.spines.top"] and not rc["axes.spines.right"]
        assert rc["axes.titleweight"] == "bold" and not rc["legend.frameon"] and rc["font.size"] == 10
        assert rc["axes.prop_cycle"].by_key()["color"] == style.CYCLE
    assert matplotlib.rcParams["axes.spines.top"]                     # rc_context restored matplotlib's default


def test_cycle_is_the_named_colours_all_different():
    assert style.CYCLE == list(style.COLORS.values())
    assert len(set(style.CYCLE)) == len(style.CYCLE) == 8
    assert all(c.startswith("#") and len(c) == 7 for c in style.CYCLE)


def test_an_installed_cjk_font_goes_first_and_none_is_invented(fonts):
    fonts("DejaVu Sans", "WenQuanYi Zen Hei", "Noto Sans CJK SC")
    assert style.has_cjk_font()
    with matplotlib.rc_context():
        style.use()
        assert matplotlib.rcParams["font.sans-serif"][:2] == ["Noto Sans CJK SC", "WenQuanYi Zen Hei"]   # course order
    fonts("DejaVu Sans")
    assert not style.has_cjk_font()
    with matplotlib.rc_context():
        before = list(matplotlib.rcParams["font.sans-serif"])
        style.use()
        assert list(matplotlib.rcParams["font.sans-serif"]) == before


@pytest.mark.parametrize("nrows,ncols,size", [(1, 1, (5.2, 3.6)), (2, 3, (13.0, 6.9)), (1, 2, (9.4, 3.6))])
def test_subplots_size_grows_with_the_grid_up_to_a_page(nrows, ncols, size):
    fig, axes = style.subplots(nrows, ncols)
    assert fig.get_size_inches() == pytest.approx(size)              # 4.2 per column + 1 (at most 13), 3.3 per row + 0.3
    assert fig.get_layout_engine().__class__.__name__ == "ConstrainedLayoutEngine"
    assert len(fig.axes) == nrows * ncols
    plt.close(fig)
    fig, _ = style.subplots(width=6, height=2, sharey=True)
    assert tuple(fig.get_size_inches()) == (6, 2)
    plt.close(fig)
