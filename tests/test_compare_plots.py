"""`compare --plots` figures, read from the matplotlib objects: no variant's roofline points hidden under
another's, a bar short of unpriced ops says so, one colour per op kind in every figure, and a vector op
at the util the table prints sits that far under the vector roof."""

from __future__ import annotations

import pytest

from mabert_hw.cli import compare as compare_cli
from mabert_hw.cost import hardware
from mabert_hw.report import plots
from mabert_hw.report.figures import plt
from mabert_hw.spec import PRESETS

from .helpers import no_exp_hardware

VARIANT_NAMES = ["bert", "ma", "power", "fff"]


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions finish, kept open instead of written."""
    kept = []

    def keep(fig, path):
        kept.append(fig)
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    yield kept
    for fig in kept:
        plt.close(fig)


def outcomes(hw, seq_len=32):
    return compare_cli.evaluate(PRESETS["minilm-l6"], VARIANT_NAMES, 1, seq_len, hw)


def scatters(fig) -> dict[str, object]:
    """label ("bert vector") -> the PathCollection of the roofline's points."""
    return {c.get_label(): c for c in fig.axes[0].collections}


def test_roofline_points_are_hollow_and_smaller_for_each_later_variant(figures, tmp_path):
    """power and fff share bert's op shapes: filled markers of one size hid every bert point."""
    hw = hardware.load("edge-32x32-int8")
    compare_cli.write_plots(outcomes(hw), hw, tmp_path, "t")
    points = scatters(figures[1])
    sizes = []
    for variant in VARIANT_NAMES:
        mine = [points[f"{variant} {unit}"] for unit in ("array", "vector")]
        for collection in mine:
            faces = collection.get_facecolors()
            assert len(faces) == 0 or all(face[3] == 0 for face in faces), f"{variant}: filled markers {faces}"
        assert len({c.get_sizes()[0] for c in mine}) == 1
        sizes.append(mine[0].get_sizes()[0])
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes), sizes
    assert "shared op" in figures[1].axes[0].get_legend().get_title().get_text()


def test_unpriced_variants_are_marked_on_the_cycles_bars(figures, tmp_path):
    hw = hardware.load(no_exp_hardware(tmp_path))
    done = outcomes(hw)
    compare_cli.write_plots(done, hw, tmp_path, "t")
    ax = figures[0].axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    short = {o.name: len(o.estimate.unknown) for o in done}
    assert short["bert"] > 0 and short["ma"] == 0  # no exp: softmax unpriced, but MA has none
    for variant, label in zip(VARIANT_NAMES, labels):
        assert label.startswith(variant)
        assert (f"{short[variant]} ops unpriced" in label) == (short[variant] > 0), label
    for container in ax.containers:
        for variant, bar in zip(VARIANT_NAMES, container.patches):
            assert bool(bar.get_hatch()) == (short[variant] > 0), (container.get_label(), variant)
    assert "short" in ax.get_title()


def bar_colours(fig) -> dict[str, tuple]:
    return {c.get_label(): tuple(c.patches[0].get_facecolor()) for c in fig.axes[0].containers}


def test_an_op_kind_has_one_colour_in_every_figure(figures, tmp_path):
    """Colours went by each figure's cycle ranking: mask changed colour when it changed rank."""
    plots.stacked_cycles({"a": {"mask": 10, "linear": 1}}, tmp_path / "1.png", "one")
    plots.stacked_cycles({"a": {"linear": 10, "gelu": 5, "mask": 1, "zz_new": 2}}, tmp_path / "2.png", "two")
    first, second = (bar_colours(f) for f in figures)
    assert first["mask"] == second["mask"] and first["linear"] == second["linear"]
    assert len(set(second.values())) == len(second)
    assert list(second) == ["linear", "gelu", "mask", "zz_new"]  # stacked in KINDS' order, unknown kinds last
    assert second["zz_new"] == tuple(plots.PALETTE[len(plots.KINDS) % len(plots.PALETTE)])


def test_vector_points_sit_under_the_vector_roof_by_the_tables_util(figures, tmp_path):
    """Software exp (14 cycles) and erf (40): in FLOPs, a softmax or GELU at 100 % util sat far under both
    roofs. In issue slots a vector point's height over the roof is its util."""
    hw = hardware.load("ma-motivation")
    done = outcomes(hw, seq_len=128)
    compare_cli.write_plots(done, hw, tmp_path, "t")
    roof = hw.lanes * hw.clock_ghz * 1e9
    bert = next(o.estimate for o in done if o.name == "bert")
    plotted = sorted(y / roof for _, y in scatters(figures[1])["bert vector"].get_offsets())
    expected = sorted(c.utilisation for c in bert.costs if c.unit == "vector" and c.cycles)
    assert plotted == pytest.approx(expected, rel=1e-12)
    softmax = [c for c in bert.costs if c.op.kind == "softmax"]
    assert all(c.utilisation > 5 * c.count.flops / (hw.lanes * c.cycles) for c in softmax)  # FLOPs would miss
    assert "issue slots" in figures[1].axes[0].get_ylabel()
