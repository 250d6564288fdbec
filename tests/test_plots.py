"""Method styles (`rismvdr.eval.styles`) and the plots that use them: one style per method,
colours by family, the bound dashed, legends outside the axes, no overlapping labels."""
from __future__ import annotations

import itertools

import matplotlib.colors as mcolors
import numpy as np
import pytest

from rismvdr.bench import plots as bench_plots
from rismvdr.eval import plots as eval_plots
from rismvdr.eval.styles import CRB_CURVE, FAMILY_COLORS, METHOD_STYLES, OTHER_COLORS, method_style
from rismvdr.localize.registry import METHODS
from rismvdr.physics.spectra import Grid

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STYLED = [*METHODS, CRB_CURVE]


def _family_by_rule(name: str) -> str:
    """The family a registered method belongs to, from its registry flags alone."""
    if name == "ml-oracle":
        return "bound"
    m = METHODS[name]
    if m.learned:
        return "learned"
    if m.needs_truth:
        return "reference"
    return "compressive" if m.maps_grid == "dictionary" else "classical"


def _triple(style):
    return (mcolors.to_rgba(style.color), style.marker, style.linestyle)


def test_every_registered_method_has_its_own_style():
    assert set(METHODS) <= set(METHOD_STYLES)  # a new method needs a row in the table
    triples = [_triple(method_style(n)) for n in STYLED]
    assert len(set(triples)) == len(triples)


def test_families_share_colours_by_rule():
    assert len({mcolors.to_rgba(c) for c in FAMILY_COLORS.values()}) == len(FAMILY_COLORS)
    for name in METHODS:
        style = method_style(name)
        assert style.family == _family_by_rule(name), name
        assert style.color == FAMILY_COLORS[style.family], name
    assert method_style(CRB_CURVE).family == "bound"
    # the bound dashed, sqrt(CRB) dotted, both black without markers; nothing else is dashed black
    assert (method_style("ml-oracle").linestyle, method_style(CRB_CURVE).linestyle) == ("--", ":")
    assert method_style("ml-oracle").marker == method_style(CRB_CURVE).marker == ""
    assert mcolors.to_rgba(method_style("ml-oracle").color) == (0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("name", ["my-method", "mvdr-als2", "", "ml-oracle (v2)"])
def test_unknown_methods_get_a_deterministic_style_of_their_own(name):
    style = method_style(name)
    assert style == method_style(name)
    assert style.family == "other" and style.color in OTHER_COLORS
    assert not {mcolors.to_rgba(c) for c in OTHER_COLORS} & {mcolors.to_rgba(c) for c in FAMILY_COLORS.values()}
    assert _triple(style) not in {_triple(method_style(n)) for n in STYLED}


def test_unknown_styles_vary_with_the_name():
    assert len({method_style(f"method-{i}") for i in range(40)}) > 20


# ---- the figures ---------------------------------------------------------------------------

def _check_layout(fig) -> None:
    """Every legend outside every axes' plotting area; the axes (with their labels, tick labels
    and colour bars) do not overlap each other."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends, "no legend"
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), (leg, ax)
    for a, b in itertools.combinations(fig.axes, 2):
        assert not a.get_tightbbox(renderer).overlaps(b.get_tightbbox(renderer)), (a, b)


@pytest.fixture
def checked(monkeypatch):
    """`save_figure` of both plot modules, checking each figure's layout before writing it."""
    seen = []
    real = eval_plots.save_figure

    def save(fig, path):
        _check_layout(fig)
        seen.append(fig)
        real(fig, path)

    monkeypatch.setattr(eval_plots, "save_figure", save)
    monkeypatch.setattr(bench_plots, "save_figure", save)
    return seen


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC


def _labelled(fig) -> dict:
    """label -> first line with that label, over every axes."""
    out = {}
    for ax in fig.axes:
        for ln in ax.get_lines():
            out.setdefault(ln.get_label(), ln)
    return out


NAMES = [*METHODS, "my-method"]


def test_snr_curves_every_method_in_its_style(tmp_path, checked):
    bins = ["[-5,0)", "[0,5)", "[5,10)"]
    ms = {n: dict(per_snr_bin={b: dict(f1=0.1 * j + 0.01 * i, median_pos_err_m=0.1 + i, rmse_phi_deg=1.0 + i,
                                         sqrt_crb_phi_deg=0.5) for j, b in enumerate(bins)})
          for i, n in enumerate(NAMES)}
    eval_plots.plot_snr_curves(tmp_path / "snr.png", ms, title="t")
    assert _is_png(tmp_path / "snr.png")
    lines = _labelled(checked[0])
    for n in NAMES:
        ln = lines["bound (ml-oracle)" if n == "ml-oracle" else n]
        want = method_style(n)
        assert (mcolors.to_rgba(ln.get_color()), ln.get_linestyle()) == (mcolors.to_rgba(want.color), want.linestyle)
    crb = lines["sqrt(CRB) (matched sources)"]
    assert crb.get_linestyle() == ":"
    assert len(checked[0].legends) == 1  # one legend for the three panels


def test_error_cdf(tmp_path, checked):
    rng = np.random.default_rng(0)
    eval_plots.plot_error_cdf(tmp_path / "cdf.png", {n: rng.lognormal(-2, 1, 50) for n in NAMES}, title="t")
    assert _is_png(tmp_path / "cdf.png")
    assert _labelled(checked[0])["somp-ml"].get_marker() == method_style("somp-ml").marker


def _records():
    return [dict(sweep=s, value=v, method=n, f1=0.5 + v / 100, tp=3, rmse_phi_deg=1.0 / (v + 12),
                 sqrt_crb_phi_deg=0.5 / (v + 12), rmse_r_m=0.2, sqrt_crb_r_m=0.1)
            for s in ("snr_k1", "snr_k3", "ula") for v in (0, 20) for n in NAMES]


def test_bench_plots(tmp_path, checked):
    recs = _records()
    assert bench_plots.plot_f1(tmp_path / "f1.png", recs, dict(snr_k1=("K = 1", "SNR (dB)"),
                                                                 snr_k3=("K = 3", "SNR (dB)")), bound="ml-oracle")
    assert bench_plots.plot_rmse_snr(tmp_path / "rmse.png", recs)
    assert bench_plots.plot_ula(tmp_path / "ula.png", recs)
    assert all(_is_png(tmp_path / f) for f in ("f1.png", "rmse.png", "ula.png"))
    f1_lines = _labelled(checked[0])
    assert f1_lines["bound (ml-oracle)"].get_linestyle() == "--"
    assert mcolors.to_rgba(f1_lines["learned"].get_color()) == mcolors.to_rgba(FAMILY_COLORS["learned"])
    assert _labelled(checked[1])["sqrt(CRB)"].get_linestyle() == ":"


@pytest.mark.parametrize("n_theta", [1, 7])
def test_scene_map_labels_do_not_overlap(tmp_path, checked, n_theta):
    """The first colour bar's label clear of the second panel's axis label (2-D map), and the
    linear array's curves."""
    phi = tuple(np.deg2rad(np.linspace(-60, 60, 13)))
    theta = tuple(np.deg2rad(np.linspace(-30, 30, n_theta))) if n_theta > 1 else (0.0,)
    grid = Grid(phi=phi, theta=theta, r=(1.0, 2.0, 4.0))
    rng = np.random.default_rng(1)
    power = 0.05 * rng.normal(size=(n_theta, 13))  # a flat map: long colour-bar tick labels
    plane = rng.integers(0, 3, size=(n_theta, 13))
    pts = (np.deg2rad([10.0, -20.0]), np.deg2rad([5.0, 0.0]) if n_theta > 1 else np.zeros(2), np.array([1.5, 3.0]))
    eval_plots.plot_scene_map(tmp_path / "scene.png", power, plane, grid, truth=pts, detections=pts, title="t")
    assert _is_png(tmp_path / "scene.png")
