"""``cordscope view``: a scan's section mosaics, heatmaps and tiles as napari layers.

napari is an optional extra (:data:`NAPARI_MISSING` says how to install it). The
layers are described first (:func:`scan_layers`, no napari needed), then
added to a viewer (:func:`add_scan_layers`). Every layer is placed in stage
coordinates (µm, world rows along stage y, columns along stage x), so
mosaics, heatmaps and tiles overlay. Mosaics and heatmaps are stage-aligned
(``scale`` = pixel size, ``translate`` = centre of pixel ``(0, 0)``); a
tile of a rotated or mirrored camera keeps its pixels as the camera took
them and is placed by napari's layer ``affine``: the section's pixel-size
affine over the pixel size and the tile's stage position (µm).
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from acquisition.errors import CordScopeError
from acquisition.pixel_geometry import (
    footprint_bbox_um,
    pixel_to_stage_matrix,
    to_stage_orientation,
    validate_affine,
)
from acquisition.storage import ScanFile, SectionReader
from analysis.exports import MosaicGeometry, section_mosaic_geometry, tile_name, tile_positions_um
from analysis.geometry import BlockLattice, StageGrid, TileOnGrid
from analysis.results_format import SavedAnalysis, has_analysis, read_analysis

__all__ = [
    "NAPARI_MISSING",
    "LayerSpec",
    "NapariMissingError",
    "add_scan_layers",
    "scan_layers",
    "tile_layer_affine",
    "view_scan",
]

NAPARI_MISSING = (
    f"napari is not installed: {shlex.quote(sys.executable)} -m pip install 'napari>=0.6' "
    "(or, in a CordScope clone: .venv/bin/pip install -e '.[napari]')"
)
"""What ``cordscope view`` says without napari: pip of the Python running CordScope, so it
installs into the right environment from any folder (a bare ``pip install 'cordscope[napari]'``
looks for CordScope on the package index, where it is not)."""

#: Pixel size of a mosaic built from the tiles when the scan has no analysis (µm; at least the tiles').
PREVIEW_PIXEL_UM = 4.0
_COLORMAPS = {"dapi": "blue", "tdtomato": "red"}


class NapariMissingError(CordScopeError):
    """napari is not installed."""

    def __init__(self) -> None:
        super().__init__(NAPARI_MISSING)


@dataclass(frozen=True)
class LayerSpec:
    """One napari image layer: data and placement in stage µm.

    Attributes
    ----------
    name : str
    data : (rows, cols) array
    scale_um : (dy, dx)
        Pixel size along rows and columns.
    translate_um : (y, x)
        Stage position of the centre of pixel ``(0, 0)`` (without ``affine``).
    options : dict
        Further ``viewer.add_image`` keywords (colormap, blending, opacity, ...).
    affine : (3, 3) array or None
        napari's layer ``affine`` (applied after ``scale`` and ``translate``), in
        ``(y, x)`` order: a rotated or mirrored camera's tile is placed by it
        (linear part the pixel-size affine over the pixel size, translation the
        stage position (µm) of the centre of pixel ``(0, 0)``, ``translate_um``
        then ``(0, 0)``). None: stage-aligned.
    """

    name: str
    data: NDArray[Any]
    scale_um: tuple[float, float]
    translate_um: tuple[float, float]
    options: dict[str, Any] = field(default_factory=dict)
    affine: NDArray[np.float64] | None = None

    def pixel_to_stage_um(self, rows: Any, cols: Any) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Stage (x, y) µm of pixel centres ``(rows, cols)`` of the layer, as napari places them."""
        y = np.asarray(rows, dtype=np.float64) * self.scale_um[0] + self.translate_um[0]
        x = np.asarray(cols, dtype=np.float64) * self.scale_um[1] + self.translate_um[1]
        if self.affine is None:
            return x, y
        m = self.affine
        return m[1, 0] * y + m[1, 1] * x + m[1, 2], m[0, 0] * y + m[0, 1] * x + m[0, 2]


def _channel_options(name: str, data: NDArray[Any]) -> dict[str, Any]:
    values = data[np.isfinite(data)] if data.dtype.kind == "f" else data.ravel()
    low, high = (float(v) for v in np.percentile(values, (1, 99.5))) if values.size else (0.0, 1.0)
    return {
        "colormap": _COLORMAPS.get(name.lower(), "gray"),
        "blending": "additive",
        "contrast_limits": (float(low), float(max(high, low + 1e-6))),
    }


def _saved(sec: SectionReader) -> SavedAnalysis | None:
    group = sec.analysis_group
    return read_analysis(group) if group is not None and has_analysis(group) else None


def _analysis_mosaic(sec: SectionReader, saved: SavedAnalysis | None) -> list[LayerSpec]:
    if (
        saved is None
        or saved.mosaic is None
        or saved.mosaic_origin_um is None
        or saved.mosaic_pixel_um is None
    ):
        return []
    origin = saved.mosaic_origin_um  # top-left corner
    pixel = saved.mosaic_pixel_um
    names = list(saved.channel_names) or list(sec.channel_names)
    mosaic = np.asarray(saved.mosaic, dtype=np.float32)
    return [
        LayerSpec(
            name=f"{sec.section_id} {name}",
            data=mosaic[c],
            scale_um=(pixel, pixel),
            translate_um=(origin[1] + pixel / 2, origin[0] + pixel / 2),
            options=_channel_options(name, mosaic[c]),
        )
        for c, name in enumerate(names)
    ]


def _tile_mosaic(sec: SectionReader) -> list[LayerSpec]:
    """A reduced, stage-aligned mosaic built from the done tiles (block means), one tile at a time."""
    done = sec.done_indices()
    if done.size == 0:
        return []
    p = sec.pixel_size_um
    f = max(1, round(PREVIEW_PIXEL_UM / p))
    geometry = section_mosaic_geometry(sec, done)
    if geometry.resampled:
        mosaic, origin_um = _resampled_preview(sec, done, geometry, f)
        pixel = p * f
        translate = (origin_um[1] + pixel / 2, origin_um[0] + pixel / 2)
    else:
        mosaic = _turned_preview(sec, done, geometry, f)
        pixel = p * f
        # a reduced pixel is the mean of f × f full-res pixels: its centre is (f - 1) / 2 of them in
        offset = (f - 1) / 2 * p
        translate = (geometry.origin_um[1] + offset, geometry.origin_um[0] + offset)
    return [
        LayerSpec(
            name=f"{sec.section_id} {name}",
            data=mosaic[c],
            scale_um=(pixel, pixel),
            translate_um=translate,
            options=_channel_options(name, mosaic[c]),
        )
        for c, name in enumerate(sec.channel_names)
    ]


def _turned_preview(
    sec: SectionReader, done: NDArray[np.intp], geometry: MosaicGeometry, f: int
) -> NDArray[np.float32]:
    """Tiles turned into the stage frame (90° turns, mirrors), block means on the mosaic's grid."""
    ph, pw = geometry.placed_shape_px
    hh, ww = (ph // f) * f, (pw // f) * f  # whole blocks of each tile
    corners = geometry.corners_px // f
    shape = (int(corners[:, 0].max()) + hh // f, int(corners[:, 1].max()) + ww // f)
    n_c = len(sec.channel_names)
    total = np.zeros((n_c, *shape), dtype=np.float64)
    count = np.zeros(shape, dtype=np.float64)
    for t, (r, c) in zip(done, corners, strict=True):
        turned = to_stage_orientation(sec.read_tile(int(t))[:, 0], geometry.affine_um)
        tile = turned[:, :hh, :ww].astype(np.float64)
        small = tile.reshape(n_c, hh // f, f, ww // f, f).mean(axis=(2, 4))
        total[:, r : r + hh // f, c : c + ww // f] += small
        count[r : r + hh // f, c : c + ww // f] += 1
    with np.errstate(invalid="ignore"):
        return (total / count).astype(np.float32)  # NaN where no tile


def _resampled_preview(
    sec: SectionReader, done: NDArray[np.intp], geometry: MosaicGeometry, f: int
) -> tuple[NDArray[np.float32], tuple[float, float]]:
    """Block means of each tile pulled onto a stage grid of ``f`` pixels (a slightly rotated camera).

    Returns the mosaic ``(C, rows, cols)`` (NaN where no tile) and the stage position of its
    top-left corner.
    """
    affine, centres, shape_px = geometry.affine_um, geometry.centres_um, geometry.tile_shape_px
    cell = f * geometry.pixel_size_um
    x0, y0, x1, y1 = footprint_bbox_um(centres, affine, shape_px)
    grid = StageGrid(
        (x0, y0), cell, (max(1, math.ceil((y1 - y0) / cell)), max(1, math.ceil((x1 - x0) / cell)))
    )
    lattice = BlockLattice(shape_px, f)
    n_c = len(sec.channel_names)
    total = np.zeros((n_c, *grid.shape), dtype=np.float64)
    count = np.zeros(grid.shape, dtype=np.float64)
    for t, centre in zip(done, centres, strict=True):
        place = TileOnGrid(grid, lattice, center_um=centre, affine_um=affine)
        if place.empty:
            continue
        tile = sec.read_tile(int(t))[:, 0]
        values = place.resample(np.stack([lattice.block_means(tile[c]) for c in range(n_c)]))
        covered = place.covered
        total[:, place.rows, place.cols] += np.where(covered, values, 0.0)
        count[place.rows, place.cols] += covered
    with np.errstate(invalid="ignore"):
        return (total / count).astype(np.float32), (x0, y0)


def _heatmap(sec: SectionReader, saved: SavedAnalysis | None) -> list[LayerSpec]:
    if saved is None:
        return []
    values = np.asarray(saved.maps.pct_axonal_area, dtype=np.float32)
    origin = saved.maps.origin_um
    bin_um = saved.maps.bin_um
    finite = values[np.isfinite(values)]
    high = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    return [
        LayerSpec(
            name=f"{sec.section_id} % axonal area",
            data=values,
            scale_um=(bin_um, bin_um),
            translate_um=(origin[1] + bin_um / 2, origin[0] + bin_um / 2),
            options={
                "colormap": "magma",
                "opacity": 0.6,
                "contrast_limits": (0.0, high),
                "blending": "translucent",
            },
        )
    ]


def _tiles(sec: SectionReader) -> list[LayerSpec]:
    h, w = sec.tile_shape_px
    p = sec.pixel_size_um
    affine = validate_affine(sec.pixel_affine_um)
    aligned = bool(np.array_equal(affine, p * np.eye(2)))
    centres = tile_positions_um(sec)
    layers = []
    for t in sec.done_indices():
        t = int(t)
        pixels = sec.read_tile(t)
        placement: dict[str, Any]
        if aligned:
            placement = {
                "translate_um": (centres[t, 1] + (0.5 - h / 2) * p, centres[t, 0] + (0.5 - w / 2) * p)
            }
        else:
            placement = {
                "translate_um": (0.0, 0.0),
                "affine": tile_layer_affine(centres[t], affine, (h, w), p),
            }
        for c, name in enumerate(sec.channel_names):
            layers.append(
                LayerSpec(
                    name=f"{tile_name(sec.section_id, t)} {name}",
                    data=pixels[c, 0],
                    scale_um=(p, p),
                    options={**_channel_options(name, pixels[c, 0]), "visible": False},
                    **placement,
                )
            )
    return layers


def tile_layer_affine(
    center_um: Any, affine_um: Any, tile_shape_px: tuple[int, int], pixel_size_um: float
) -> NDArray[np.float64]:
    """Napari layer ``affine`` ((3, 3), ``(y, x)`` order) of a tile layer with ``scale`` = pixel size.

    Its pixel ``(r, c)`` at ``scale · (r, c)`` goes to its stage position
    ``(y, x)``: the linear part is the pixel-size affine ``A`` over the pixel
    size, rows and columns swapped into napari's order; the translation the
    stage position (µm) of the centre of pixel ``(0, 0)``
    (:func:`acquisition.pixel_geometry.pixel_to_stage_matrix`).
    """
    m = pixel_to_stage_matrix(
        (float(center_um[0]), float(center_um[1])), validate_affine(affine_um), tile_shape_px
    )
    # m takes (col, row, 1) to (x, y, 1); napari works in (row, col) and (y, x)
    swap = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    out = swap @ m @ swap
    out[:2, :2] /= float(pixel_size_um)
    return np.asarray(out, dtype=np.float64)


def scan_layers(path: str | os.PathLike[str], *, tiles: bool = False) -> list[LayerSpec]:
    """Describe the layers of a scan, section by section (no napari needed).

    Per section: each channel's mosaic (the analysis ``mosaic`` when the
    section was analysed, else block means of the done tiles at about
    :data:`PREVIEW_PIXEL_UM`, turned into the stage frame), then the % axonal
    area heatmap if analysed, then (``tiles=True``) every done tile × channel
    at full resolution as the camera took it, placed through the pixel-size
    affine (:func:`tile_layer_affine`; named ``<section>/<0005> <channel>``,
    :func:`analysis.exports.tile_name`), hidden until switched on.
    """
    layers: list[LayerSpec] = []
    with ScanFile.open(path) as scan:
        for sid in scan.section_ids:
            sec = scan.section(sid)
            saved = _saved(sec)
            layers += _analysis_mosaic(sec, saved) or _tile_mosaic(sec)
            layers += _heatmap(sec, saved)
            if tiles:
                layers += _tiles(sec)
    return layers


def add_scan_layers(viewer: Any, path: str | os.PathLike[str], *, tiles: bool = False) -> list[Any]:
    """Add the layers of :func:`scan_layers` to a napari viewer; return the layers."""
    return _add_layers(viewer, scan_layers(path, tiles=tiles))


def _add_layers(viewer: Any, specs: list[LayerSpec]) -> list[Any]:
    added = []
    for spec in specs:
        added.append(
            viewer.add_image(
                spec.data,
                name=spec.name,
                scale=spec.scale_um,
                translate=spec.translate_um,
                units=("micrometer", "micrometer"),
                **({} if spec.affine is None else {"affine": spec.affine}),
                **spec.options,
            )
        )
    viewer.scale_bar.visible = True  # in µm, from the layers' units
    return added


def view_scan(path: str | os.PathLike[str], *, tiles: bool = False) -> None:
    """Open a napari window with the scan's layers and run it until closed.

    Raises
    ------
    NapariMissingError
        If napari is not installed.
    """
    try:
        import napari
    except ImportError:
        raise NapariMissingError() from None
    specs = scan_layers(path, tiles=tiles)  # a bad file is reported before a window opens
    viewer = napari.Viewer(title=f"CordScope — {Path(path).name}")
    _add_layers(viewer, specs)
    napari.run()
