"""Export a scan file to the formats of other tools: BigDataViewer/BigStitcher, OME-Zarr, CSV.

Each export reads the scan file section by section, and tile by tile within
a section, so its memory does not grow with the size of the scan: no
section or slide is ever held at full resolution (see
``benchmarks/bench_export_memory.py``).

- :func:`export_bdv`: one BigDataViewer dataset (``<scan>.xml`` +
  ``<scan>.h5``, written with npy2bdv) in which every tile × channel is a
  view setup named ``<section> tile <n> <channel>``, registered at the
  tile's stage position (pixel size as voxel size). Fiji's BigStitcher
  opens it to stitch and register the tiles.
- :func:`export_ome_zarr`: per section, the full-resolution mosaic (tiles
  placed at their registered positions where known, else at the planned
  ones; channels on the ``c`` axis) as an OME-Zarr v0.5 image with a
  multiscale pyramid, physical pixel sizes and channel names
  (``<section>.ome.zarr``, metadata by yaozarrs, arrays by zarr-python),
  plus the % axonal area heatmap as its own image
  (``<section>_pct_axonal_area.ome.zarr``) in the same stage coordinates.
- :func:`export_csv`: every section's region table, the numbers of the
  file's ``analysis`` groups.

Coordinates: pixel ``(r, c)`` of a tile centred at stage ``(x, y)`` µm is
at ``x + (c + 0.5 - W/2)·p``, ``y + (r + 0.5 - H/2)·p`` (``p`` the pixel
size); images keep that orientation (column along stage x, row along
stage y).
"""

from __future__ import annotations

import math
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml
from numpy.typing import NDArray

from acquisition.errors import CordScopeError
from acquisition.storage import ScanFile, SectionReader
from analysis.maps import REGION_COLUMNS, RegionRow, write_region_csv
from analysis.scan_analysis import region_csv_path

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "ExportProgress",
    "export_bdv",
    "export_csv",
    "export_ome_zarr",
    "mosaic_geometry",
    "tile_positions_um",
]

EXPORT_FORMATS = ("bdv", "ome-zarr", "csv")
"""Formats :func:`export_bdv`, :func:`export_ome_zarr` and :func:`export_csv` write."""

#: Name of the registered tile positions in a section's analysis group.
REGISTERED_XY = "registered_tile_xy_um"
#: Side (pixels) of the OME-Zarr chunks; pyramid levels stop once an image fits in one.
ZARR_CHUNK_PX = 512
_BDV_SUBSAMPLING = ((1, 1, 1), (1, 2, 2), (1, 4, 4))
_BDV_BLOCKS = ((1, 256, 256), (1, 256, 256), (1, 256, 256))
_CHANNEL_COLORS = {"dapi": "0000FF", "tdtomato": "FF0000"}


class ExportError(CordScopeError):
    """A scan cannot be exported as asked; the message says why."""


@dataclass(frozen=True)
class ExportProgress:
    """Progress of an export, passed to the ``progress`` callback after each step.

    Attributes
    ----------
    done, total : int
        Steps done and steps in all (tiles, pyramid blocks or sections).
    section_id : str
        Section being exported.
    what : str
        What the step was, e.g. ``"tiles"``, ``"pyramid"``, ``"regions"``.
    """

    done: int
    total: int
    section_id: str
    what: str


ProgressCallback = Callable[[ExportProgress], None]


def _no_progress(_: ExportProgress) -> None:
    return None


# ---------------------------------------------------------------- positions


def tile_positions_um(section: SectionReader) -> NDArray[np.float64]:
    """Tile centres to place tiles at: registered where known and finite, else planned.

    Parameters
    ----------
    section : SectionReader

    Returns
    -------
    (n_tiles, 2) float64
        Stage x, y (µm) of each tile's centre. ``analysis/registered_tile_xy_um``
        (written by the live registration; NaN where a tile was not
        registered) wins over the planned ``tile_xy_um``, tile by tile.
    """
    planned = section.tile_xy_um
    group = section.analysis_group
    if group is None or REGISTERED_XY not in group:
        return planned
    registered = np.asarray(group[REGISTERED_XY][()], dtype=np.float64)
    if registered.shape != planned.shape:
        raise ExportError(
            f"section {section.section_id}: analysis/{REGISTERED_XY} has shape {registered.shape}, "
            f"expected {planned.shape}"
        )
    use = np.isfinite(registered).all(axis=1)
    out = planned.copy()
    out[use] = registered[use]
    return out


@dataclass(frozen=True)
class MosaicGeometry:
    """Where a section's tiles land in its full-resolution mosaic.

    Attributes
    ----------
    shape_px : (rows, cols)
        Mosaic size.
    origin_um : (x, y)
        Stage position of the centre of mosaic pixel ``(0, 0)``.
    pixel_size_um : float
    corners_px : (n_tiles, 2) int64
        ``(row, col)`` of each tile's top-left pixel in the mosaic.
    """

    shape_px: tuple[int, int]
    origin_um: tuple[float, float]
    pixel_size_um: float
    corners_px: NDArray[np.int64]


def mosaic_geometry(
    centres_um: NDArray[np.float64], tile_shape_px: tuple[int, int], pixel_size_um: float
) -> MosaicGeometry:
    """Mosaic grid of a section: tiles snapped to the nearest whole pixel, all tiles inside.

    Parameters
    ----------
    centres_um : (n_tiles, 2) float64
        Tile centres in stage µm (:func:`tile_positions_um`).
    tile_shape_px : (H, W)
    pixel_size_um : float
    """
    h, w = tile_shape_px
    p = float(pixel_size_um)
    # stage position of each tile's top-left pixel centre, in pixels
    left = centres_um[:, 0] / p + 0.5 - w / 2
    top = centres_um[:, 1] / p + 0.5 - h / 2
    # the grid is that of the top- and left-most tiles; the others snap to it
    col0, row0 = float(left.min()), float(top.min())
    cols = np.floor(left - col0 + 0.5).astype(np.int64)
    rows = np.floor(top - row0 + 0.5).astype(np.int64)
    shape = (int(rows.max()) + h, int(cols.max()) + w)
    return MosaicGeometry(
        shape_px=shape,
        origin_um=(col0 * p, row0 * p),
        pixel_size_um=p,
        corners_px=np.stack([rows, cols], axis=1),
    )


# -------------------------------------------------------------------- helpers


def _prepare_out_dir(out_dir: str | os.PathLike[str], names: list[str], overwrite: bool) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"export folder {out} is a file; give a folder")
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise ExportError(
            f"{out} already holds {', '.join(existing[:3])}{'…' if len(existing) > 3 else ''}; "
            "pass --overwrite to replace"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in existing:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    return out


def _z_step_um(scan: ScanFile, n_z: int, pixel_size_um: float) -> float:
    if n_z < 2:
        return pixel_size_um
    plan = yaml.safe_load(scan.plan_yaml) or {}
    z_stack = plan.get("z_stack") or {}
    step = z_stack.get("step_um")
    return float(step) if step else pixel_size_um


def _done_tiles(section: SectionReader) -> NDArray[np.intp]:
    return section.done_indices()


# ----------------------------------------------------------------------- BDV


def export_bdv(
    scan_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write a BigDataViewer / BigStitcher dataset (XML + HDF5) of every done tile.

    Every tile × channel is a view setup (tile attribute ``<section>/<tile>``,
    channel attribute the channel name, setup name ``<section> tile <t>
    <channel>``) holding the tile's ``(n_z, H, W)`` planes at three
    resolutions (1, 1/2, 1/4). Its registration places it at its stage
    position: voxel size = pixel size (µm), calibration ``(1, 1, dz/p)``,
    then a translation in pixels (BigStitcher's convention), so the view's
    pixel ``(r, c)`` lands at ``(x/p, y/p)`` with ``x, y`` the pixel's stage
    position in µm. Pending and failed tiles are missing views.

    Parameters
    ----------
    scan_path : path of a cordscope-scan file
    out_dir : folder for ``<scan>.xml`` and ``<scan>.h5`` (created if needed)
    overwrite : replace an existing dataset of that name
    progress : called with an :class:`ExportProgress` after each tile

    Returns
    -------
    Path
        The XML file (what Fiji opens).
    """
    import npy2bdv

    report = progress or _no_progress
    stem = Path(scan_path).stem
    out = _prepare_out_dir(out_dir, [f"{stem}.xml", f"{stem}.h5"], overwrite)
    xml_path, h5_path = out / f"{stem}.xml", out / f"{stem}.h5"
    with ScanFile.open(scan_path) as scan:
        sections = [scan.section(sid) for sid in scan.section_ids]
        channels = sections[0].channel_names
        for sec in sections[1:]:
            if sec.channel_names != channels:
                raise ExportError(
                    f"{scan.path}: section {sec.section_id} has channels {list(sec.channel_names)}, "
                    f"{sections[0].section_id} has {list(channels)}; a BDV dataset needs one channel list"
                )
        first_tile = np.cumsum([0] + [s.n_tiles for s in sections])
        n_tiles = int(first_tile[-1])
        total = sum(len(_done_tiles(s)) for s in sections)
        if total == 0:
            raise ExportError(f"{scan.path} has no done tile to export")
        writer = npy2bdv.BdvWriter(
            str(h5_path),
            nchannels=len(channels),
            ntiles=n_tiles,
            subsamp=_BDV_SUBSAMPLING,
            blockdim=_BDV_BLOCKS,
            overwrite=True,
        )
        names: dict[int, str] = {}
        done = 0
        try:
            tile_labels = [f"{s.section_id}/{t}" for s in sections for t in range(s.n_tiles)]
            writer.set_attribute_labels("tile", tuple(tile_labels))
            writer.set_attribute_labels("channel", tuple(channels))
            for s_index, sec in enumerate(sections):
                h, w = sec.tile_shape_px
                p = sec.pixel_size_um
                dz = _z_step_um(scan, sec.n_z, p)
                centres = tile_positions_um(sec)
                z_um = sec.tile_z_um
                for t in _done_tiles(sec):
                    t = int(t)
                    pixels = sec.read_tile(t)  # (C, Z, H, W)
                    tile = int(first_tile[s_index]) + t
                    x_px = centres[t, 0] / p + 0.5 - w / 2
                    y_px = centres[t, 1] / p + 0.5 - h / 2
                    z_px = float(z_um[t]) / p if np.isfinite(z_um[t]) and sec.n_z > 1 else 0.0
                    affine = np.array(
                        [[1.0, 0.0, 0.0, x_px], [0.0, 1.0, 0.0, y_px], [0.0, 0.0, 1.0, z_px]],
                        dtype=np.float64,
                    )
                    for c, channel in enumerate(channels):
                        writer.append_view(
                            pixels[c],
                            channel=c,
                            tile=tile,
                            m_affine=affine,
                            name_affine="stage position",
                            voxel_size_xyz=(p, p, dz),
                            voxel_units="µm",
                            calibration=(1.0, 1.0, dz / p),
                        )
                        names[c * n_tiles + tile] = f"{sec.section_id} tile {t} {channel}"
                    done += 1
                    report(ExportProgress(done, total, sec.section_id, "tiles"))
            writer.write_xml(microscope_name="CordScope")
        finally:
            writer.close()  # npy2bdv's close only flushes: close the HDF5 file too
            writer._file_object_h5.close()
    _finish_bdv(h5_path, xml_path, names)
    return xml_path


def _finish_bdv(h5_path: Path, xml_path: Path, setup_names: dict[int, str]) -> None:
    """Set what npy2bdv leaves out: the setups' ``dataType`` and their names."""
    # npy2bdv stores uint16 as int16 (BDV's legacy convention) without the
    # attribute; BDV and other readers take "uint16" from it to read values above 32767.
    with h5py.File(h5_path, "r+") as f:
        for name, group in f.items():
            if name.startswith("s") and isinstance(group, h5py.Group) and "resolutions" in group:
                group.attrs["dataType"] = np.bytes_("uint16")
    tree = ET.parse(xml_path)
    for setup in tree.getroot().iterfind("./SequenceDescription/ViewSetups/ViewSetup"):
        setup_id = int(setup.findtext("id", "-1"))
        name = setup.find("name")
        if name is not None and setup_id in setup_names:
            name.text = setup_names[setup_id]
    tree.write(xml_path, xml_declaration=True, encoding="utf-8", method="xml")


# ------------------------------------------------------------------- OME-Zarr


def _pyramid_shapes(shape_px: tuple[int, int]) -> list[tuple[int, int]]:
    shapes = [shape_px]
    while max(shapes[-1]) > ZARR_CHUNK_PX and len(shapes) < 8:
        rows, cols = shapes[-1]
        shapes.append(((rows + 1) // 2, (cols + 1) // 2))
    return shapes


def _image_model(
    *, axes: list[Any], level_scales: list[list[float]], level_translations: list[list[float]], omero: Any
) -> Any:
    from yaozarrs import v05

    datasets = [
        v05.Dataset(
            path=str(k),
            coordinateTransformations=[
                v05.ScaleTransformation(scale=scale),
                v05.TranslationTransformation(translation=shift),
            ],
        )
        for k, (scale, shift) in enumerate(zip(level_scales, level_translations, strict=True))
    ]
    return v05.Image(multiscales=[v05.Multiscale(axes=axes, datasets=datasets)], omero=omero)


def _blocks(shape: tuple[int, int], step: int) -> Iterator[tuple[slice, slice]]:
    for r in range(0, shape[0], step):
        for c in range(0, shape[1], step):
            yield slice(r, min(r + step, shape[0])), slice(c, min(c + step, shape[1]))


def _downsample_level(src: Any, dst: Any, lead: tuple[int, ...]) -> Iterator[None]:
    """Fill ``dst`` with 2 × 2 means of ``src`` block by block (one chunk of ``dst`` at a time)."""
    rows, cols = dst.shape[-2:]
    for rs, cs in _blocks((rows, cols), ZARR_CHUNK_PX):
        block = np.asarray(
            src[
                (
                    *[slice(None)] * len(lead),
                    slice(2 * rs.start, 2 * rs.stop),
                    slice(2 * cs.start, 2 * cs.stop),
                )
            ],
            dtype=np.float32,
        )
        h, w = block.shape[-2:]
        if h % 2 or w % 2:  # the last row / column of an odd-sized level: repeat the edge
            block = np.pad(block, [(0, 0)] * len(lead) + [(0, h % 2), (0, w % 2)], mode="edge")
        small = block.reshape(*block.shape[:-2], block.shape[-2] // 2, 2, block.shape[-1] // 2, 2).mean(
            axis=(-3, -1)
        )
        dst[(*[slice(None)] * len(lead), rs, cs)] = np.rint(small).astype(dst.dtype)
        yield None


def export_ome_zarr(
    scan_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> list[Path]:
    """Write each section's full-resolution mosaic (and heatmap) as OME-Zarr images.

    Per section ``<out_dir>/<section>.ome.zarr``: uint16 ``(c, y, x)`` (or
    ``(c, z, y, x)`` for z-stacks), done tiles placed at their registered
    positions where known, else planned (:func:`tile_positions_um`), snapped
    to whole pixels, later tiles over earlier ones where they overlap; not
    imaged pixels are 0. Levels ``0, 1, …`` halve the resolution until an
    image fits in one 512 × 512 chunk, each the 2 × 2 mean of the one
    above. Scales are in µm; the translation places every level in stage
    coordinates (centre of pixel ``(0, 0)``); ``omero`` names the channels.

    Where the section has an analysis, ``<out_dir>/<section>_pct_axonal_area.ome.zarr``
    holds its % axonal area heatmap (float32 ``(y, x)``, NaN outside the
    tissue, scale = bin size) in the same coordinates.

    The mosaic is written tile by tile and the pyramid chunk by chunk, so
    memory stays at a few tiles whatever the section's size.

    Returns
    -------
    list of Path
        The written images, in section order.
    """
    from yaozarrs import v05
    from yaozarrs.write.v05 import prepare_image

    report = progress or _no_progress
    written: list[Path] = []
    with ScanFile.open(scan_path) as scan:
        names = [f"{sid}.ome.zarr" for sid in scan.section_ids]
        names += [f"{sid}_pct_axonal_area.ome.zarr" for sid in scan.section_ids]
        out = _prepare_out_dir(out_dir, names, overwrite)
        for sid in scan.section_ids:
            sec = scan.section(sid)
            done = _done_tiles(sec)
            if done.size == 0:
                continue
            n_c, n_z = len(sec.channel_names), sec.n_z
            h, w = sec.tile_shape_px
            p = sec.pixel_size_um
            geometry = mosaic_geometry(tile_positions_um(sec)[done], (h, w), p)
            corners = dict(zip((int(t) for t in done), geometry.corners_px, strict=True))
            shapes = _pyramid_shapes(geometry.shape_px)
            lead: tuple[int, ...] = (n_c,) if n_z == 1 else (n_c, n_z)
            axes: list[Any] = [v05.ChannelAxis(name="c")]
            if n_z > 1:
                axes.append(v05.SpaceAxis(name="z", unit="micrometer"))
            axes += [v05.SpaceAxis(name="y", unit="micrometer"), v05.SpaceAxis(name="x", unit="micrometer")]
            dz = _z_step_um(scan, n_z, p)
            scales, shifts = [], []
            for k in range(len(shapes)):
                f = 2**k
                offset = (f - 1) / 2 * p  # a level-k pixel is the mean of f × f full-res pixels
                z_part = [dz] if n_z > 1 else []
                scales.append([1.0, *z_part, p * f, p * f])
                shifts.append(
                    [
                        0.0,
                        *([0.0] if n_z > 1 else []),
                        geometry.origin_um[1] + offset,
                        geometry.origin_um[0] + offset,
                    ]
                )
            omero = v05.Omero(
                channels=[
                    v05.OmeroChannel(
                        label=name,
                        color=_CHANNEL_COLORS.get(name.lower(), "FFFFFF"),
                        window=v05.OmeroWindow(start=0, end=65535, min=0, max=65535),
                        active=True,
                    )
                    for name in sec.channel_names
                ]
            )
            image = _image_model(axes=axes, level_scales=scales, level_translations=shifts, omero=omero)
            chunks = (1,) * len(lead) + (ZARR_CHUNK_PX, ZARR_CHUNK_PX)
            dest, arrays = prepare_image(
                out / f"{sid}.ome.zarr",
                image,
                [((*lead, *shape), "uint16") for shape in shapes],
                chunks=chunks,
                writer="zarr",
                extra_attributes={"cordscope": {"scan": str(scan.path), "section_id": sid}},
            )
            steps = done.size + sum(
                math.ceil(s[0] / ZARR_CHUNK_PX) * math.ceil(s[1] / ZARR_CHUNK_PX) for s in shapes[1:]
            )
            step = 0
            level0 = arrays["0"]
            for t in done:
                t = int(t)
                r0, c0 = (int(v) for v in corners[t])
                pixels = sec.read_tile(t)  # (C, Z, H, W)
                block = pixels[:, 0] if n_z == 1 else pixels
                level0[(*[slice(None)] * len(lead), slice(r0, r0 + h), slice(c0, c0 + w))] = block
                step += 1
                report(ExportProgress(step, steps, sid, "tiles"))
            for k in range(1, len(shapes)):
                for _ in _downsample_level(arrays[str(k - 1)], arrays[str(k)], lead):
                    step += 1
                    report(ExportProgress(step, steps, sid, "pyramid"))
            written.append(dest)
            heatmap = _write_heatmap(sec, out / f"{sid}_pct_axonal_area.ome.zarr")
            if heatmap is not None:
                written.append(heatmap)
    return written


def _write_heatmap(sec: SectionReader, dest: Path) -> Path | None:
    from yaozarrs import v05
    from yaozarrs.write.v05 import prepare_image

    group = sec.analysis_group
    if group is None or "pct_axonal_area_map" not in group:
        return None
    ds = group["pct_axonal_area_map"]
    values = np.asarray(ds[()], dtype=np.float32)
    origin = np.asarray(ds.attrs["origin_um"], dtype=np.float64)
    bin_um = float(ds.attrs["bin_um"])
    image = _image_model(
        axes=[v05.SpaceAxis(name="y", unit="micrometer"), v05.SpaceAxis(name="x", unit="micrometer")],
        level_scales=[[bin_um, bin_um]],
        level_translations=[[float(origin[1]) + bin_um / 2, float(origin[0]) + bin_um / 2]],
        omero=None,
    )
    path, arrays = prepare_image(
        dest,
        image,
        (values.shape, "float32"),
        chunks=None,
        writer="zarr",
        extra_attributes={
            "cordscope": {"section_id": sec.section_id, "quantity": "pct_axonal_area", "units": "%"}
        },
    )
    arrays["0"][...] = values
    return path


# ------------------------------------------------------------------------ CSV


def export_csv(
    scan_path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write every analysed section's region table to one CSV (a ``section_id`` column first).

    The numbers are those of ``/sections/<id>/analysis/regions_table``, in
    the format of :func:`analysis.maps.write_region_csv` (the CSV that
    ``cordscope analyze`` writes).

    Parameters
    ----------
    scan_path : path of a cordscope-scan file
    out : CSV file, or a folder for ``<scan>.regions.csv``; default beside the scan
    progress : called after each section

    Raises
    ------
    ExportError
        If no section has an analysis (run ``cordscope analyze`` first).
    """
    report = progress or _no_progress
    default = region_csv_path(Path(scan_path))
    if out is None:
        target = default
    else:
        target = Path(out)
        if target.is_dir() or target.suffix.lower() != ".csv":
            target.mkdir(parents=True, exist_ok=True)
            target = target / default.name
        target.parent.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[RegionRow]] = {}
    with ScanFile.open(scan_path) as scan:
        ids = scan.section_ids
        for i, sid in enumerate(ids):
            group = scan.section(sid).analysis_group
            if group is not None and "regions_table" in group:
                rows[sid] = [_region_row(r) for r in group["regions_table"][()]]
            report(ExportProgress(i + 1, len(ids), sid, "regions"))
    if not rows:
        raise ExportError(f"{scan_path} has no analysed section; run: cordscope analyze {scan_path}")
    return write_region_csv(target, rows)


def _region_row(record: np.void) -> RegionRow:
    region = record["region"]
    name = region.decode() if isinstance(region, bytes) else str(region)
    return RegionRow(name, *(float(record[k]) for k in REGION_COLUMNS[1:]))
