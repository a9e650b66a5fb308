"""Study figures: group bars with animals and significance, and average heatmaps in a common frame.

Two kinds of figure, each saved as PNG and SVG (matplotlib, Agg backend, no display):

* :func:`group_bar_figure`: per level, one panel per region; a bar per group
  at the mean with the SEM as error bar, every animal as a dot, and a
  bracket with stars over every pair that differs (``*`` p < 0.05,
  ``**`` < 0.01, ``***`` < 0.001); the test used is written under each panel.
* :func:`heatmap_figure`: per level, one panel per group; the average
  % axonal area map of the group's coronal sections brought into a common
  frame (:func:`common_frame_maps`): centred on the central canal (the
  midline point of :func:`analysis.regions.section_axes`), rotated so the
  section's left-right axis is horizontal and dorsal is up, and mirrored so
  the side contralateral to the injection (the labelled rubrospinal tract)
  is on the right. The gray/white matter boundary (where at least half the
  sections are gray matter) is drawn in white, the tissue outline in gray.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from numpy.typing import NDArray

from analysis.regions import section_axes
from analysis.stats import GroupComparison
from analysis.study import MAIN_REGIONS, SectionRecord, Study

__all__ = [
    "GROUP_COLORS",
    "REGION_LABELS",
    "CommonFrameMap",
    "common_frame_maps",
    "group_bar_figure",
    "heatmap_figure",
    "save_figure",
    "stars",
]

GROUP_COLORS: dict[str, str] = {"intact": "#6b6b6b", "vehicle": "#d55e00", "treated": "#0072b2"}
"""Colour per group (Okabe–Ito, colour-blind safe); other groups get the remaining palette."""
_OTHER_COLORS = ("#009e73", "#cc79a7", "#e69f00", "#56b4e9")

REGION_LABELS: dict[str, str] = {
    "section": "Whole section",
    "white_matter": "White matter",
    "gray_matter": "Gray matter",
    "rubrospinal_territory": "Rubrospinal territory",
    "left": "Left half",
    "right": "Right half",
    "dorsal": "Dorsal half",
    "ventral": "Ventral half",
}

FRAME_HALF_EXTENT_UM = (2400.0, 1800.0)
"""Half width and half height of the common frame (µm): room for a rat C5 cord and its rotation."""

FRAME_STEP_UM = 20.0
"""Grid step of the common frame (µm)."""


def region_label(region: str) -> str:
    """A region's name for people (``rc_-500_0`` → ``500–0 µm rostral``)."""
    if region in REGION_LABELS:
        return REGION_LABELS[region]
    if region.startswith("rc_"):
        try:
            a, b = (float(v) for v in region[3:].split("_"))
        except ValueError:
            return region
        if b <= 0:
            return f"{-b:g}–{-a:g} µm rostral"
        return f"{a:g}–{b:g} µm caudal"
    return region.replace("_", " ")


def group_color(group: str, groups: Sequence[str]) -> str:
    """The display colour of a group."""
    if group in GROUP_COLORS:
        return GROUP_COLORS[group]
    others = [g for g in groups if g not in GROUP_COLORS]
    return _OTHER_COLORS[others.index(group) % len(_OTHER_COLORS)] if group in others else "#333333"


def stars(p: float) -> str:
    """Significance stars of a p value (``""`` when p ≥ 0.05 or NaN)."""
    if not math.isfinite(p) or p >= 0.05:
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*"


def save_figure(fig: Figure, stem: str | Path) -> tuple[Path, Path]:
    """Save a figure as ``<stem>.png`` (200 dpi) and ``<stem>.svg``, then close it."""
    stem = Path(stem)
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    try:
        fig.savefig(png, dpi=200, bbox_inches="tight", metadata={"Software": "CordScope"})
        fig.savefig(svg, bbox_inches="tight", metadata={"Date": None})
    finally:
        plt.close(fig)
    return png, svg


def _pretty(ax: plt.Axes) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.tick_params(labelsize=10)


def group_bar_figure(
    study: Study,
    level: str,
    comparisons: Mapping[tuple[str, str], GroupComparison],
    *,
    regions: Sequence[str] = MAIN_REGIONS,
    column_label: str = "% axonal area",
    seed: int = 0,
) -> Figure:
    """Bars of mean ± SEM per group, each animal as a dot, brackets over pairs that differ.

    Parameters
    ----------
    study : Study
    level : str
    comparisons : mapping of (level, region) → GroupComparison (from ``study_comparisons``)
    regions : regions to show, one panel each (those without data are skipped)
    column_label : y axis label
    seed : int
        Seed of the horizontal jitter of the dots (deterministic figures).

    Raises
    ------
    ValueError
        If the level has no data for any of the regions.
    """
    shown = [r for r in regions if (level, r) in comparisons and comparisons[(level, r)].groups]
    if not shown:
        raise ValueError(f"level {level}: no data for {', '.join(regions)}")
    fig, axes = plt.subplots(1, len(shown), figsize=(2.7 * len(shown) + 0.6, 3.9), squeeze=False)
    rng = np.random.default_rng(seed)
    all_groups = study.groups
    for ax, region in zip(axes[0], shown, strict=True):
        comp = comparisons[(level, region)]
        names = [g.group for g in comp.groups]
        x = np.arange(len(names))
        top = 0.0
        for i, g in enumerate(comp.groups):
            color = group_color(g.group, all_groups)
            ax.bar(i, g.mean, width=0.62, color=color, alpha=0.35, edgecolor=color, linewidth=1.4)
            ax.errorbar(
                i, g.mean, yerr=g.sem if math.isfinite(g.sem) else 0.0, color="black", capsize=5, lw=1.3
            )
            jitter = rng.uniform(-0.14, 0.14, g.n)
            ax.scatter(i + jitter, g.values, s=22, color=color, edgecolor="black", linewidth=0.5, zorder=3)
            top = max(top, max(g.values), g.mean + (g.sem if math.isfinite(g.sem) else 0.0))
        top = top if top > 0 else 1.0
        step = 0.09 * top
        y = top + 0.6 * step
        for p in sorted(comp.pairs, key=lambda q: abs(names.index(q.group_b) - names.index(q.group_a))):
            s = stars(p.p_value)
            if not s:
                continue
            i, j = names.index(p.group_a), names.index(p.group_b)
            ax.plot([i, i, j, j], [y, y + 0.25 * step, y + 0.25 * step, y], color="black", lw=1.0)
            ax.text((i + j) / 2, y + 0.2 * step, s, ha="center", va="bottom", fontsize=11)
            y += 1.25 * step
        ax.set_ylim(0, max(y + 0.4 * step, top * 1.15))
        ax.set_xticks(x, [f"{n}\n(n={g.n})" for n, g in zip(names, comp.groups, strict=True)], fontsize=10)
        ax.set_title(region_label(region), fontsize=11)
        test = f"{comp.test}, {_p(comp.p_value)}" if comp.test else "no test"
        ax.text(0.5, -0.27, test, transform=ax.transAxes, ha="center", va="top", fontsize=8.5, color="#333")
        _pretty(ax)
    axes[0][0].set_ylabel(column_label, fontsize=11)
    fig.suptitle(f"{level}: {column_label} per animal (bars: mean ± SEM)", fontsize=12)
    fig.tight_layout()
    return fig


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


# ------------------------------------------------------------------ common frame


@dataclasses.dataclass(frozen=True)
class CommonFrameMap:
    """A group's average map at one level, in the common frame.

    Attributes
    ----------
    pct_axonal_area : (ny, nx) float64
        Mean over animals (each the mean of its sections) of % axonal area;
        NaN outside the tissue of most sections.
    gray_fraction, tissue_fraction : (ny, nx) float64
        Fraction of sections that are gray matter / tissue at each point.
    extent_um : (x0, x1, y0, y1)
        Frame coordinates of the grid's outer edges: x toward the side
        contralateral to the injection, y dorsal (µm from the central canal).
    n_animals, n_sections : int
    """

    pct_axonal_area: NDArray[np.float64]
    gray_fraction: NDArray[np.float64]
    tissue_fraction: NDArray[np.float64]
    extent_um: tuple[float, float, float, float]
    n_animals: int
    n_sections: int


def _frame_grid() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    hx, hy = FRAME_HALF_EXTENT_UM
    u = np.arange(-hx + FRAME_STEP_UM / 2, hx, FRAME_STEP_UM)
    v = np.arange(hy - FRAME_STEP_UM / 2, -hy, -FRAME_STEP_UM)  # dorsal (v > 0) at the top row
    return np.meshgrid(u, v)


def _sample(grid: NDArray[np.generic], origin: NDArray[np.float64], step: float, x, y, fill):  # type: ignore[no-untyped-def]
    c = np.floor((x - origin[0]) / step).astype(np.int64)
    r = np.floor((y - origin[1]) / step).astype(np.int64)
    inside = (r >= 0) & (r < grid.shape[0]) & (c >= 0) & (c < grid.shape[1])
    out = np.full(x.shape, fill, dtype=np.result_type(grid.dtype, type(fill)))
    out[inside] = grid[r[inside], c[inside]]
    return out


def section_in_frame(
    record: SectionRecord,
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.bool_]]:
    """One coronal section's % axonal area map, tissue and gray-matter masks on the common frame grid.

    Raises
    ------
    ValueError
        If the section has no tissue mask or no mask grid.
    """
    a = record.analysis
    if a.mask_origin_um is None or a.mask_cell_um is None or "section" not in a.masks:
        raise ValueError(f"{record.file}: section {record.section_id} has no tissue mask")
    tissue = a.masks["section"]
    gray = a.masks.get("gray_matter")
    axes = section_axes(
        tissue, origin_um=a.mask_origin_um, pixel_size_um=a.mask_cell_um, orientation="coronal", gray=gray
    )
    right = np.asarray(axes.right_direction)
    assert axes.ventral_direction is not None
    dorsal = -np.asarray(axes.ventral_direction)
    # the labelled (contralateral) side goes to +u: mirror sections injected on the right
    if record.injection_side not in ("left", "right"):
        raise ValueError(f"{record.file}: section {record.section_id} has no injection side to mirror by")
    lateral = right if record.injection_side == "left" else -right
    centre = np.asarray(axes.midline_point_um)
    u, v = _frame_grid()
    x = centre[0] + u * lateral[0] + v * dorsal[0]
    y = centre[1] + u * lateral[1] + v * dorsal[1]
    pct = _sample(a.maps.pct_axonal_area.astype(np.float64), a.maps.origin_um, a.maps.bin_um, x, y, np.nan)
    t = _sample(tissue, a.mask_origin_um, a.mask_cell_um, x, y, False).astype(bool)
    g = (
        _sample(gray, a.mask_origin_um, a.mask_cell_um, x, y, False).astype(bool)
        if gray is not None
        else np.zeros_like(t)
    )
    return np.where(t, pct, np.nan), t, g


def common_frame_maps(study: Study, level: str) -> dict[str, CommonFrameMap]:
    """Average % axonal area maps per group at one level, in the common frame.

    Coronal sections whose injection side is known only (the side decides the mirroring).
    """
    by_group: dict[str, dict[str, list[SectionRecord]]] = defaultdict(lambda: defaultdict(list))
    for rec in study.sections:
        # which side to mirror is the injection's: sections without it cannot be put in the common frame
        if rec.level == level and rec.orientation == "coronal" and rec.injection_side in ("left", "right"):
            by_group[rec.group][rec.animal].append(rec)
    out: dict[str, CommonFrameMap] = {}
    hx, hy = FRAME_HALF_EXTENT_UM
    for group in [g for g in study.groups if g in by_group]:
        animal_maps, tissue_all, gray_all = [], [], []
        for recs in by_group[group].values():
            maps = []
            for rec in recs:
                pct, t, g = section_in_frame(rec)
                maps.append(pct)
                tissue_all.append(t)
                gray_all.append(g)
            stack = np.stack(maps)
            with np.errstate(invalid="ignore"):
                count = np.isfinite(stack).sum(axis=0)
                animal_maps.append(
                    np.where(count > 0, np.nansum(stack, axis=0) / np.maximum(count, 1), np.nan)
                )
        tissue_frac = np.mean(tissue_all, axis=0)
        gray_frac = np.mean(gray_all, axis=0)
        stack = np.stack(animal_maps)
        count = np.isfinite(stack).sum(axis=0)
        mean = np.where(count > 0, np.nansum(stack, axis=0) / np.maximum(count, 1), np.nan)
        mean = np.where(tissue_frac >= 0.5, mean, np.nan)
        out[group] = CommonFrameMap(
            pct_axonal_area=mean,
            gray_fraction=gray_frac,
            tissue_fraction=tissue_frac,
            extent_um=(-hx, hx, -hy, hy),
            n_animals=len(animal_maps),
            n_sections=len(tissue_all),
        )
    return out


def heatmap_figure(study: Study, level: str, *, vmax: float | None = None) -> Figure:
    """Average % axonal area heatmaps of each group at one level in the common frame.

    Parameters
    ----------
    study : Study
    level : str
    vmax : float, optional
        Top of the colour scale (default: the 99th percentile over the groups' maps).

    Raises
    ------
    ValueError
        If the level has no coronal section.
    """
    maps = common_frame_maps(study, level)
    if not maps:
        raise ValueError(f"level {level}: no coronal sections for a heatmap")
    if vmax is None:
        finite = np.concatenate([m.pct_axonal_area[np.isfinite(m.pct_axonal_area)] for m in maps.values()])
        vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
        vmax = vmax if vmax > 0 else 1.0
    u, v = _frame_grid()
    anywhere = np.any([m.tissue_fraction > 0 for m in maps.values()], axis=0)
    margin = 150.0
    if anywhere.any():
        xlim = (float(u[anywhere].min()) - margin, float(u[anywhere].max()) + margin)
        ylim = (float(v[anywhere].min()) - margin, float(v[anywhere].max()) + margin)
    else:
        x0, x1, y0, y1 = next(iter(maps.values())).extent_um
        xlim, ylim = (x0, x1), (y0, y1)
    aspect = (ylim[1] - ylim[0]) / (xlim[1] - xlim[0])
    fig, axes = plt.subplots(1, len(maps), figsize=(3.6 * len(maps) + 0.9, 3.6 * aspect + 1.0), squeeze=False)
    cmap = plt.get_cmap("magma").with_extremes(bad="#e9e9e9")
    image = None
    for ax, (group, m) in zip(axes[0], maps.items(), strict=True):
        x0, x1, y0, y1 = m.extent_um
        image = ax.imshow(
            m.pct_axonal_area, extent=(x0, x1, y0, y1), origin="upper", cmap=cmap, vmin=0, vmax=vmax,
            interpolation="nearest",
        )  # fmt: skip
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        if m.tissue_fraction.max() >= 0.5:
            ax.contour(u, v, m.tissue_fraction, levels=[0.5], colors="#9a9a9a", linewidths=1.0)
        if m.gray_fraction.max() >= 0.5:
            ax.contour(u, v, m.gray_fraction, levels=[0.5], colors="white", linewidths=1.1)
        ax.set_title(f"{group} (n = {m.n_animals})", fontsize=11, color=group_color(group, study.groups))
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        ax.plot([xlim[1] - 1050, xlim[1] - 50], [ylim[0] + 60] * 2, color="black", lw=2)
        ax.text(xlim[1] - 550, ylim[0] + 110, "1 mm", ha="center", va="bottom", fontsize=8)
    axes[0][0].text(
        0.0, -0.06, "dorsal up; contralateral to the injection → right", transform=axes[0][0].transAxes,
        fontsize=8, va="top", color="#333",
    )  # fmt: skip
    assert image is not None
    bar = fig.colorbar(image, ax=axes[0].tolist(), fraction=0.025, pad=0.02)
    bar.set_label("% axonal area", fontsize=10)
    fig.suptitle(f"{level}: average axon distribution (white line: gray/white matter boundary)", fontsize=12)
    return fig
