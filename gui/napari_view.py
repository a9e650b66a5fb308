"""``cordscope view``: a scan's section mosaics, heatmaps and tiles as napari layers.

napari is an optional extra (:data:`NAPARI_MISSING` says how to install it). The
layers are described first (:func:`scan_layers`, no napari needed), then
added to a viewer (:func:`add_scan_layers`). Every layer is placed in stage
coordinates (µm: ``scale`` = pixel size, ``translate`` = centre of pixel
``(0, 0)``, rows along stage y, columns along stage x), so mosaics,
heatmaps and tiles overlay.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from acquisition.errors import CordScopeError
from acquisition.storage import ScanFile, SectionReader
from analysis.exports import mosaic_geometry, tile_name, tile_positions_um
from analysis.results_format import SavedAnalysis, has_analysis, read_analysis

__all__ = [
    "NAPARI_MISSING",
    "LayerSpec",
    "NapariMissingError",
    "add_scan_layers",
    "scan_layers",
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
        Stage position of the centre of pixel ``(0, 0)``.
    options : dict
        Further ``viewer.add_image`` keywords (colormap, blending, opacity, ...).
    """

    name: str
    data: NDArray[Any]
    scale_um: tuple[float, float]
    translate_um: tuple[float, float]
    options: dict[str, Any] = field(default_factory=dict)


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
    """A reduced mosaic built from the done tiles (block means), one tile at a time."""
    done = sec.done_indices()
    if done.size == 0:
        return []
    h, w = sec.tile_shape_px
    p = sec.pixel_size_um
    f = max(1, round(PREVIEW_PIXEL_UM / p))
    geometry = mosaic_geometry(tile_positions_um(sec)[done], (h, w), p)
    hh, ww = (h // f) * f, (w // f) * f  # whole blocks of each tile
    corners = geometry.corners_px // f
    shape = (int(corners[:, 0].max()) + hh // f, int(corners[:, 1].max()) + ww // f)
    n_c = len(sec.channel_names)
    total = np.zeros((n_c, *shape), dtype=np.float64)
    count = np.zeros(shape, dtype=np.float64)
    for t, (r, c) in zip(done, corners, strict=True):
        tile = sec.read_tile(int(t))[:, 0, :hh, :ww].astype(np.float64)
        small = tile.reshape(n_c, hh // f, f, ww // f, f).mean(axis=(2, 4))
        total[:, r : r + hh // f, c : c + ww // f] += small
        count[r : r + hh // f, c : c + ww // f] += 1
    with np.errstate(invalid="ignore"):
        mosaic = (total / count).astype(np.float32)  # NaN where no tile
    pixel = p * f
    # a reduced pixel is the mean of f × f full-res pixels: its centre is (f - 1) / 2 of them in
    offset = (f - 1) / 2 * p
    return [
        LayerSpec(
            name=f"{sec.section_id} {name}",
            data=mosaic[c],
            scale_um=(pixel, pixel),
            translate_um=(geometry.origin_um[1] + offset, geometry.origin_um[0] + offset),
            options=_channel_options(name, mosaic[c]),
        )
        for c, name in enumerate(sec.channel_names)
    ]


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
    centres = tile_positions_um(sec)
    layers = []
    for t in sec.done_indices():
        t = int(t)
        pixels = sec.read_tile(t)
        for c, name in enumerate(sec.channel_names):
            layers.append(
                LayerSpec(
                    name=f"{tile_name(sec.section_id, t)} {name}",
                    data=pixels[c, 0],
                    scale_um=(p, p),
                    translate_um=(
                        centres[t, 1] + (0.5 - h / 2) * p,
                        centres[t, 0] + (0.5 - w / 2) * p,
                    ),
                    options={**_channel_options(name, pixels[c, 0]), "visible": False},
                )
            )
    return layers


def scan_layers(path: str | os.PathLike[str], *, tiles: bool = False) -> list[LayerSpec]:
    """Describe the layers of a scan, section by section (no napari needed).

    Per section: each channel's mosaic (the analysis ``mosaic`` when the
    section was analysed, else block means of the done tiles at about
    :data:`PREVIEW_PIXEL_UM`), then the % axonal area heatmap if analysed,
    then (``tiles=True``) every done tile × channel at full resolution
    (named ``<section>/<0005> <channel>``, :func:`analysis.exports.tile_name`),
    hidden until switched on.
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
