"""A section turned into screen pixels: mosaic composite, heatmap colours, region outlines.

Pure numpy (no widgets): :func:`render_section` runs off the Qt thread, and
the widgets of :mod:`gui.live_view` only wrap the finished pixels. The
live scan view, the results browser and the region editor all draw a
section through it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analysis.exports import region_color
from analysis.figures import CHANNEL_COLORS
from analysis.maps import RegionRow

__all__ = [
    "BIN_OUTLINE_COLOR",
    "HEATMAP_COLORMAP",
    "HIGHLIGHT_RGBA",
    "OUTLINE_COLORS",
    "Contour",
    "SectionPicture",
    "composite",
    "heat_lut",
    "heatmap_rgba",
    "heatmap_scale_max",
    "outline_color",
    "outlined_by_default",
    "region_label",
    "render_section",
]

#: matplotlib colormap of the % axonal area heatmap (as in the saved PNG figures).
HEATMAP_COLORMAP = "magma"
#: Regions outlined on the mosaic, with their outline colour; ``rc_*`` bins of
#: horizontal sections are drawn in :data:`BIN_OUTLINE_COLOR`.
OUTLINE_COLORS: dict[str, str] = {
    "section": "#ffffff",
    "gray_matter": "#4dd0e1",
    "rubrospinal_territory": "#ffd600",
}
BIN_OUTLINE_COLOR = "#9ccc65"
#: Fill colour of the region selected in the region table.
HIGHLIGHT_RGBA = (0, 230, 118, 110)

Contour = NDArray[np.float64]


def outlined_by_default(region: str) -> bool:
    """Whether a region is outlined on every picture (the section, gray matter, the territory, bins)."""
    return region in OUTLINE_COLORS or region.startswith("rc_")


def outline_color(region: str) -> str:
    """A region's outline colour (``#rrggbb``): :data:`OUTLINE_COLORS`, bins green, else its export colour."""
    if region in OUTLINE_COLORS:
        return OUTLINE_COLORS[region]
    if region.startswith("rc_"):
        return BIN_OUTLINE_COLOR
    return "#{:02x}{:02x}{:02x}".format(*region_color(region))


def region_label(name: str) -> str:
    """A region name for people: ``"rubrospinal_territory"`` → ``"rubrospinal territory"``.

    Rostro-caudal bins ``rc_<a>_<b>`` read ``"rostro-caudal a…b µm"``.
    """
    if name.startswith("rc_"):
        parts = name[3:].split("_")
        if len(parts) == 2:
            return f"rostro-caudal {parts[0]}…{parts[1]} µm"
    return name.replace("_", " ")


def heatmap_scale_max(pct_axonal_area: NDArray[Any]) -> float:
    """Top of the heatmap colour scale (%): the map's 99th percentile rounded up to 1, 2 or 5 × 10ⁿ.

    At least 0.1 %, so an almost empty section does not turn noise into full colour.
    """
    finite = np.asarray(pct_axonal_area, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    top = float(np.percentile(finite, 99)) if finite.size else 0.0
    top = max(top, 0.1)
    exponent = math.floor(math.log10(top))
    for step in (1.0, 2.0, 5.0, 10.0):
        nice = step * 10.0**exponent
        if nice >= top * (1 - 1e-9):
            return float(nice)
    return float(10.0 ** (exponent + 1))


def _colormap_lut(name: str) -> NDArray[np.uint8]:
    from matplotlib import colormaps

    lut = colormaps[name](np.linspace(0.0, 1.0, 256))
    return (lut * 255 + 0.5).astype(np.uint8)


_LUT: NDArray[np.uint8] | None = None


def heat_lut() -> NDArray[np.uint8]:
    """The heatmap colormap as a (256, 4) uint8 RGBA lookup table (made once)."""
    global _LUT
    if _LUT is None:
        _LUT = _colormap_lut(HEATMAP_COLORMAP)
    return _LUT


def _channel_color(name: str, fallback: tuple[float, float, float]) -> NDArray[np.float32]:
    return np.asarray(CHANNEL_COLORS.get(name, fallback), dtype=np.float32)


def _scaled(image: NDArray[Any], low_pct: float, high_pct: float) -> NDArray[np.float32]:
    """Image scaled to 0..1 between two percentiles of its finite values; NaN → 0."""
    a = np.asarray(image, dtype=np.float32)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(a.shape, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(finite, [low_pct, high_pct]))
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    out[~np.isfinite(out)] = 0.0
    return out.astype(np.float32, copy=False)


def composite(
    anatomy: NDArray[Any] | None,
    tracer: NDArray[Any] | None,
    *,
    anatomy_name: str = "DAPI",
    tracer_name: str = "tdTomato",
) -> NDArray[np.uint8]:
    """Anatomy (its usual colour, DAPI blue) plus tracer (tdTomato red) as one RGB image.

    Parameters
    ----------
    anatomy, tracer : (H, W) float arrays, NaN where not imaged (either may be None)

    Returns
    -------
    (H, W, 3) uint8; black where nothing is imaged.
    """
    shape = next(a.shape for a in (anatomy, tracer) if a is not None)
    rgb = np.zeros((*shape, 3), dtype=np.float32)
    if anatomy is not None:
        # the counterstain is lifted toward grey and brightened (gamma) so tissue reads at a glance
        # and red axons still stand out on it
        color = 0.6 * _channel_color(anatomy_name, (0.25, 0.45, 1.0)) + 0.3
        rgb += np.sqrt(_scaled(anatomy, 1.0, 99.0))[..., None] * color
    if tracer is not None:
        rgb += _scaled(tracer, 50.0, 99.9)[..., None] * _channel_color(tracer_name, (1.0, 0.25, 0.2))
    return (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def heatmap_rgba(pct_axonal_area: NDArray[Any], scale_max_pct: float) -> NDArray[np.uint8]:
    """Colour each bin by the heatmap colormap (0 … ``scale_max_pct``); NaN bins transparent.

    Opacity grows with the value (30 % at 0), so the tissue shows through where there is little tracer.
    """
    pct = np.asarray(pct_axonal_area, dtype=np.float64)
    finite = np.isfinite(pct)
    index = np.zeros(pct.shape, dtype=np.intp)
    index[finite] = np.clip(np.round(pct[finite] / scale_max_pct * 255), 0, 255).astype(np.intp)
    rgba = heat_lut()[index].copy()
    # low values are more transparent, so the tissue shows where there is little tracer
    alpha = 0.3 + 0.7 * np.clip(index / 255.0, 0.0, 1.0) ** 0.5
    rgba[..., 3] = np.where(finite, np.round(255 * alpha), 0).astype(np.uint8)
    return rgba


def _contours_um(mask: NDArray[np.bool_], origin_um: Sequence[float], pixel_um: float) -> list[Contour]:
    from skimage.measure import find_contours

    if not mask.any():
        return []
    # pad so regions touching the border close; pixel (r, c) is centred at origin + (c + 0.5, r + 0.5) · P
    padded = np.pad(mask.astype(np.uint8), 1)
    out = []
    for c in find_contours(padded, 0.5):
        xy = np.empty_like(c)
        xy[:, 0] = origin_um[0] + (c[:, 1] - 1 + 0.5) * pixel_um
        xy[:, 1] = origin_um[1] + (c[:, 0] - 1 + 0.5) * pixel_um
        out.append(xy)
    return out


@dataclasses.dataclass(frozen=True)
class SectionPicture:
    """A section rendered for the screen (built off the Qt thread by :func:`render_section`).

    Attributes
    ----------
    section_id : str
    caption : str
        One line under the picture (tiles analysed, labels).
    mosaic_rgb : (H, W, 3) uint8
    mosaic_origin_um : (x, y) of the mosaic's top-left corner
    mosaic_pixel_um : float
    heat_rgba : (ny, nx, 4) uint8 or None
    heat_origin_um : (x, y)
    heat_bin_um : float
    heat_max_pct : float
        Top of the colour scale (%).
    outlines : list of (region name, colour, contours in stage µm)
    masks : dict of region name → bool mask on the mask grid
    mask_origin_um, mask_pixel_um : the mask grid
    table : list of RegionRow
    n_tiles_analysed, n_tiles : int
        Tiles the picture is made of, and the section's tiles (0: not known).
    """

    section_id: str
    caption: str
    mosaic_rgb: NDArray[np.uint8]
    mosaic_origin_um: tuple[float, float]
    mosaic_pixel_um: float
    heat_rgba: NDArray[np.uint8] | None
    heat_origin_um: tuple[float, float]
    heat_bin_um: float
    heat_max_pct: float
    outlines: list[tuple[str, str, list[Contour]]]
    masks: dict[str, NDArray[np.bool_]]
    mask_origin_um: tuple[float, float]
    mask_pixel_um: float
    table: list[RegionRow]
    n_tiles_analysed: int = 0
    n_tiles: int = 0


def render_section(
    *,
    section_id: str,
    anatomy: NDArray[Any] | None,
    tracer: NDArray[Any] | None,
    mosaic_origin_um: Sequence[float],
    mosaic_pixel_um: float,
    pct_axonal_area: NDArray[Any] | None,
    map_origin_um: Sequence[float],
    map_bin_um: float,
    masks: Mapping[str, NDArray[Any]] | None,
    mask_origin_um: Sequence[float] | None = None,
    mask_pixel_um: float | None = None,
    table: Sequence[RegionRow] = (),
    caption: str = "",
    anatomy_name: str = "DAPI",
    tracer_name: str = "tdTomato",
    heat_max_pct: float | None = None,
    n_tiles_analysed: int = 0,
    n_tiles: int = 0,
    all_outlines: bool = False,
) -> SectionPicture:
    """Turn a section's arrays into screen pixels and outlines (pure numpy: run it off the Qt thread).

    Parameters
    ----------
    anatomy, tracer : (H, W) float, NaN where not imaged
        Reduced mosaics of the anatomy and tracer channels.
    mosaic_origin_um, mosaic_pixel_um :
        Stage (x, y) of the mosaic's top-left corner (µm) and its pixel size (µm).
    pct_axonal_area : (ny, nx) float or None
        % axonal area per bin, NaN outside imaged tissue.
    map_origin_um, map_bin_um :
        The heatmap's top-left corner and bin size (µm).
    masks : mapping of region name → bool (rows, cols), or None
        Region masks; by default on the mosaic grid.
    mask_origin_um, mask_pixel_um :
        The masks' grid if it differs from the mosaic's.
    table : region rows shown beside the picture
    caption : str
    heat_max_pct : float, optional
        Top of the colour scale; default :func:`heatmap_scale_max` of the map.
    n_tiles_analysed, n_tiles : int
        Kept with the picture (how complete it is).
    all_outlines : bool
        Outline every region (each in its colour), not only those of :func:`outlined_by_default`.
    """
    mosaic = composite(anatomy, tracer, anatomy_name=anatomy_name, tracer_name=tracer_name)
    heat = None
    top = 1.0
    if pct_axonal_area is not None and np.isfinite(pct_axonal_area).any():
        top = heat_max_pct if heat_max_pct is not None else heatmap_scale_max(pct_axonal_area)
        heat = heatmap_rgba(pct_axonal_area, top)
    m_origin = tuple(mask_origin_um) if mask_origin_um is not None else tuple(mosaic_origin_um)
    m_pixel = float(mask_pixel_um) if mask_pixel_um is not None else float(mosaic_pixel_um)
    bool_masks = {str(k): np.asarray(v, dtype=bool) for k, v in (masks or {}).items()}
    outlines: list[tuple[str, str, list[Contour]]] = []
    for name, mask in bool_masks.items():
        if outlined_by_default(name) or all_outlines:
            outlines.append((name, outline_color(name), _contours_um(mask, m_origin, m_pixel)))
    return SectionPicture(
        section_id=section_id,
        caption=caption,
        mosaic_rgb=mosaic,
        mosaic_origin_um=(float(mosaic_origin_um[0]), float(mosaic_origin_um[1])),
        mosaic_pixel_um=float(mosaic_pixel_um),
        heat_rgba=heat,
        heat_origin_um=(float(map_origin_um[0]), float(map_origin_um[1])),
        heat_bin_um=float(map_bin_um),
        heat_max_pct=float(top),
        outlines=outlines,
        masks=bool_masks,
        mask_origin_um=(float(m_origin[0]), float(m_origin[1])),
        mask_pixel_um=m_pixel,
        table=list(table),
        n_tiles_analysed=int(n_tiles_analysed),
        n_tiles=int(n_tiles),
    )
