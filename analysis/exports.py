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
at ``(x, y) + A·(c + 0.5 − W/2, r + 0.5 − H/2)``, ``A`` the section's
pixel-size affine (``pixel_affine_um``, µm per pixel step along columns and
rows; ``p·I`` for a camera aligned with the stage,
:mod:`acquisition.pixel_geometry`). What each format carries of it:

- BDV: the raw tiles, each view's registration the full affine (its 3 × 3
  part ``A/p``, so a rotated or mirrored camera's views land turned in
  BigStitcher's world).
- OME-Zarr (and the QuPath OME-TIFF): stage-aligned mosaics (columns along
  +x, rows along +y, scale and translation only): tiles are turned into the
  stage frame before placement, exactly (transposes and flips) for 90°
  turns and mirrors, by bilinear resampling for any other affine
  (:func:`mosaic_geometry`, :func:`place_done_tiles`).
"""

from __future__ import annotations

import json
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

from acquisition.storage import ScanFile, SectionReader, touches_file
from analysis.export_geometry import (
    ExportError,
    MosaicGeometry,
    bdv_view_affine,
    mosaic_geometry,
    oriented_tile,
    place_done_tiles,
    section_affine,
    section_mosaic_geometry,
    tile_positions_um,
)
from analysis.results_format import (
    SavedAnalysis,
    has_analysis,
    read_analysis,
    region_csv_path,
    write_scan_region_csv,
)

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "ExportProgress",
    "MosaicGeometry",
    "bdv_view_affine",
    "export_bdv",
    "export_csv",
    "export_ome_zarr",
    "mosaic_geometry",
    "oriented_tile",
    "place_done_tiles",
    "section_mosaic_geometry",
    "tile_positions_um",
]

EXPORT_FORMATS = ("bdv", "ome-zarr", "csv", "qupath")
"""Formats :func:`export_bdv`, :func:`export_ome_zarr`, :func:`export_csv` and
:func:`analysis.qupath.export_qupath` write."""

#: Side (pixels) of the OME-Zarr chunks; pyramid levels stop once an image fits in one.
ZARR_CHUNK_PX = 512
_BDV_SUBSAMPLING = ((1, 1, 1), (1, 2, 2), (1, 4, 4))
_BDV_BLOCKS = ((1, 256, 256), (1, 256, 256), (1, 256, 256))
_CHANNEL_COLORS = {"dapi": "0000FF", "tdtomato": "FF0000"}
#: Percentiles of the imaged pixels that set each channel's display window (OME-Zarr ``omero``).
DISPLAY_PERCENTILES = (1.0, 99.8)
#: Display windows come from the finest pyramid level with at most this many pixels.
_WINDOW_SAMPLE_PX = 2048 * 2048

#: Display colour (R, G, B) of each region (OME-Zarr labels, QuPath classifications).
REGION_COLORS: dict[str, tuple[int, int, int]] = {
    "section": (160, 160, 160),
    "white_matter": (230, 230, 120),
    "gray_matter": (120, 120, 230),
    "left": (80, 200, 200),
    "right": (200, 80, 200),
    "dorsal": (80, 200, 80),
    "ventral": (200, 120, 40),
    "rubrospinal_territory": (255, 60, 60),
}
_BIN_COLORS = ((40, 160, 220), (220, 160, 40))  # rostro-caudal bins alternate


def region_color(region: str) -> tuple[int, int, int]:
    """Display colour ``(R, G, B)`` of a region (bins alternate; other names get a steady hash colour)."""
    if region in REGION_COLORS:
        return REGION_COLORS[region]
    if region.startswith("rc_"):
        try:
            start = int(region.split("_")[1])
        except (IndexError, ValueError):
            start = 0
        return _BIN_COLORS[(start // 500) % 2]
    h = sum((i + 1) * ord(ch) for i, ch in enumerate(region))
    return (60 + h % 180, 60 + (h // 7) % 180, 60 + (h // 49) % 180)


def tile_name(section_id: str, tile_index: int) -> str:
    """A tile's name in every output: ``<section>/<4-digit index>`` (e.g. ``rat01-Th7/0005``).

    The same name as the stage positions of the scan's MDA sequence (``acquisition.plan``).
    """
    return f"{section_id}/{int(tile_index):04d}"


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


# -------------------------------------------------------------------- helpers


def _prepare_out_dir(
    out_dir: str | os.PathLike[str],
    names: list[str],
    overwrite: bool,
    *,
    protect: str | os.PathLike[str] | None = None,
) -> Path:
    """Make the export folder; with ``overwrite`` remove earlier exports named ``names`` in it.

    Nothing that would write over or delete ``protect`` (the scan being
    exported) is ever done: such an export is refused before anything changes.
    """
    out = Path(out_dir)
    if protect is not None:
        if touches_file(out, protect):
            raise ExportError(f"--out {out} is the scan file being exported (the input); choose a folder")
        clash = next((n for n in names if touches_file(out / n, protect)), None)
        if clash is not None:
            raise ExportError(
                f"the export would write {out / clash} over the scan file being exported (the input itself); "
                "choose another --out folder"
            )
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

    Every tile × channel is a view setup (tile attribute the tile's name
    ``<section>/<0005>`` (:func:`tile_name`), channel attribute the channel
    name, setup name ``<section>/<0005> <channel>``) holding the tile's ``(n_z, H, W)`` planes at three
    resolutions (1, 1/2, 1/4), as the camera took them. Its registration places
    it at its stage position: voxel size = pixel size (µm), calibration
    ``(1, 1, dz/p)``, then the section's pixel-size affine over the pixel size
    and a translation in pixels (:func:`bdv_view_affine`, BigStitcher's
    convention), so the view's pixel ``(r, c)`` lands at ``(x/p, y/p)`` with
    ``x, y`` the pixel's stage position in µm, for a rotated or mirrored camera
    too. Pending and failed tiles are missing views.

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
    out = _prepare_out_dir(out_dir, [f"{stem}.xml", f"{stem}.h5"], overwrite, protect=scan_path)
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
            tile_labels = [tile_name(s.section_id, t) for s in sections for t in range(s.n_tiles)]
            writer.set_attribute_labels("tile", tuple(tile_labels))
            writer.set_attribute_labels("channel", tuple(channels))
            for s_index, sec in enumerate(sections):
                camera = section_affine(sec)
                p = sec.pixel_size_um
                dz = _z_step_um(scan, sec.n_z, p)
                centres = tile_positions_um(sec)
                z_um = sec.tile_z_um
                for t in _done_tiles(sec):
                    t = int(t)
                    pixels = sec.read_tile(t)  # (C, Z, H, W)
                    tile = int(first_tile[s_index]) + t
                    z_px = float(z_um[t]) / p if np.isfinite(z_um[t]) and sec.n_z > 1 else 0.0
                    affine = bdv_view_affine(
                        centres[t], camera, sec.tile_shape_px, pixel_size_um=p, z_px=z_px
                    )
                    for c, channel in enumerate(channels):
                        writer.append_view(
                            pixels[c],
                            channel=c,
                            tile=tile,
                            m_affine=affine,
                            name_affine="stage position (pixel-size affine)",
                            voxel_size_xyz=(p, p, dz),
                            voxel_units="µm",
                            calibration=(1.0, 1.0, dz / p),
                        )
                        names[c * n_tiles + tile] = f"{tile_name(sec.section_id, t)} {channel}"
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
    *,
    axes: list[Any],
    level_scales: list[list[float]],
    level_translations: list[list[float]],
    omero: Any,
    name: str,
    method: str | None,
    metadata: dict[str, Any],
    image_label: Any = None,
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
    # NGFF recommends name, type (how the levels were made) and metadata on every multiscale
    multiscale = v05.Multiscale(name=name, axes=axes, datasets=datasets, type=method, metadata=metadata)
    if image_label is not None:
        return v05.LabelImage(multiscales=[multiscale], **{"image-label": image_label})
    return v05.Image(multiscales=[multiscale], omero=omero)


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


def display_windows(level: Any, n_channels: int) -> list[tuple[float, float]]:
    """Display window ``(start, end)`` per channel: :data:`DISPLAY_PERCENTILES` of the imaged pixels.

    Parameters
    ----------
    level : (C, rows, cols) or (C, Z, rows, cols) array-like
        A pyramid level (pixels equal to 0 were not imaged and are left out).
    n_channels : int
    """
    out = []
    for c in range(n_channels):
        values = np.asarray(level[c]).ravel()
        values = values[values > 0]
        if values.size == 0:
            out.append((0.0, 1.0))
            continue
        low, high = (float(v) for v in np.percentile(values, DISPLAY_PERCENTILES))
        out.append((low, max(high, low + 1.0)))
    return out


def _window_level(shapes: list[tuple[int, int]]) -> int:
    for k, (rows, cols) in enumerate(shapes):
        if rows * cols <= _WINDOW_SAMPLE_PX:
            return k
    return len(shapes) - 1


def _set_omero_windows(dest: Path, windows: list[tuple[float, float]]) -> None:
    import zarr

    group = zarr.open_group(str(dest), mode="r+")
    ome: dict[str, Any] = json.loads(json.dumps(group.attrs["ome"]))
    for channel, (start, end) in zip(ome["omero"]["channels"], windows, strict=True):
        channel["window"].update(start=start, end=end)
    group.attrs["ome"] = ome


def export_ome_zarr(
    scan_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> list[Path]:
    """Write each section's full-resolution mosaic (with region labels, and heatmap) as OME-Zarr images.

    Per section ``<out_dir>/<section>.ome.zarr``: uint16 ``(c, y, x)`` (or
    ``(c, z, y, x)`` for z-stacks), stage-aligned (rows along +y, columns
    along +x), done tiles placed at their registered positions where known,
    else planned (:func:`tile_positions_um`), later tiles over earlier ones
    where they overlap; not imaged pixels are 0. Tiles of a camera turned by
    90° or mirrored are transposed/flipped and snapped to whole pixels; any
    other pixel-size affine (a camera rotated by 1–2°) is resampled
    bilinearly at the mosaic's pixel centres inside each tile's footprint
    (:func:`mosaic_geometry`, :func:`oriented_tile`); the multiscale's
    ``metadata.orientation`` and ``cordscope.camera_pixel_affine_um`` say
    which. Levels ``0, 1, …`` halve the resolution until an
    image fits in one 512 × 512 chunk, each the 2 × 2 mean of the one
    above (multiscale ``type`` ``"mean"``). Scales are in µm; the translation
    places every level in stage coordinates (centre of pixel ``(0, 0)``);
    ``omero`` names the channels, with display windows from the data
    (:data:`DISPLAY_PERCENTILES` of the imaged pixels, :func:`display_windows`).

    Where the section was analysed, ``labels/<region>`` holds each region's
    mask as an NGFF label image (uint8, 1 inside, with the region's name, kind
    and colour in ``image-label``) on the same pixels and levels as the image,
    and ``<out_dir>/<section>_pct_axonal_area.ome.zarr`` its % axonal area
    heatmap (float32 ``(y, x)``, NaN outside the tissue, scale = bin size) in the
    same coordinates.

    The mosaic is written tile by tile and the pyramid and labels chunk by
    chunk, so memory stays at a few tiles whatever the section's size.

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
        out = _prepare_out_dir(out_dir, names, overwrite, protect=scan_path)
        for sid in scan.section_ids:
            sec = scan.section(sid)
            done = _done_tiles(sec)
            if done.size == 0:
                continue
            n_c, n_z = len(sec.channel_names), sec.n_z
            p = sec.pixel_size_um
            geometry = section_mosaic_geometry(sec, done)
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
                        # replaced by windows from the data once the pyramid is written
                        window=v05.OmeroWindow(start=0, end=65535, min=0, max=65535),
                        active=True,
                    )
                    for name in sec.channel_names
                ]
            )
            image = _image_model(
                axes=axes,
                level_scales=scales,
                level_translations=shifts,
                omero=omero,
                name=sid,
                method="mean",
                metadata={
                    "description": "level k is the 2 x 2 block mean of level k - 1 (rounded to uint16)",
                    "tiles": "done tiles at registered (else planned) positions; 0 where not imaged",
                    "orientation": _orientation_note(geometry),
                },
            )
            chunks = (1,) * len(lead) + (ZARR_CHUNK_PX, ZARR_CHUNK_PX)
            dest, arrays = prepare_image(
                out / f"{sid}.ome.zarr",
                image,
                [((*lead, *shape), "uint16") for shape in shapes],
                chunks=chunks,
                writer="zarr",
                extra_attributes={
                    "cordscope": {
                        "scan": str(scan.path),
                        "section_id": sid,
                        "camera_pixel_affine_um": geometry.affine_um.tolist(),
                        "tiles_resampled": geometry.resampled,
                    }
                },
            )
            group = sec.analysis_group
            saved = read_analysis(group) if group is not None and has_analysis(group) else None
            n_labels = len(saved.masks) if saved is not None and saved.mask_origin_um is not None else 0
            steps = done.size + n_labels
            steps += sum(math.ceil(r / ZARR_CHUNK_PX) * math.ceil(c / ZARR_CHUNK_PX) for r, c in shapes[1:])
            step = 0
            for _ in place_done_tiles(sec, done, geometry, arrays["0"], z_projection=False):
                step += 1
                report(ExportProgress(step, steps, sid, "tiles"))
            for k in range(1, len(shapes)):
                for _ in _downsample_level(arrays[str(k - 1)], arrays[str(k)], lead):
                    step += 1
                    report(ExportProgress(step, steps, sid, "pyramid"))
            _set_omero_windows(dest, display_windows(arrays[str(_window_level(shapes))], n_c))
            if saved is not None and n_labels:
                for region in _write_region_labels(dest, saved, geometry, shapes, scales, shifts, n_z):
                    step += 1
                    report(ExportProgress(step, steps, sid, f"label {region}"))
            written.append(dest)
            heatmap = _write_heatmap(sec, saved, out / f"{sid}_pct_axonal_area.ome.zarr")
            if heatmap is not None:
                written.append(heatmap)
    return written


def _orientation_note(geometry: MosaicGeometry) -> str:
    """How the tiles were turned into the stage frame (for the multiscale's metadata)."""
    o = geometry.orientation
    if o is None:
        return "tiles resampled bilinearly through the camera's pixel-size affine (rows +y, columns +x)"
    steps = [
        name
        for name, on in (
            ("transposed", o.transpose),
            ("rows flipped", o.flip_rows),
            ("columns flipped", o.flip_cols),
        )
        if on
    ]
    return "tiles as the camera took them" if not steps else f"tiles {', '.join(steps)} (exact)"


def _label_block(
    mask: NDArray[np.bool_],
    saved: SavedAnalysis,
    x_um: NDArray[np.float64],
    y_um: NDArray[np.float64],
) -> NDArray[np.uint8]:
    """The mask at stage pixel centres (columns at ``x_um``, rows at ``y_um``): the cell each falls in."""
    assert saved.mask_origin_um is not None and saved.mask_cell_um is not None
    o, cell = saved.mask_origin_um, saved.mask_cell_um
    cols = np.floor((x_um - o[0]) / cell).astype(np.int64)
    rows = np.floor((y_um - o[1]) / cell).astype(np.int64)
    ok_c = (cols >= 0) & (cols < mask.shape[1])
    ok_r = (rows >= 0) & (rows < mask.shape[0])
    block = mask[np.clip(rows, 0, mask.shape[0] - 1)[:, None], np.clip(cols, 0, mask.shape[1] - 1)[None, :]]
    return (block & ok_r[:, None] & ok_c[None, :]).astype(np.uint8)


def _write_region_labels(
    dest: Path,
    saved: SavedAnalysis,
    geometry: MosaicGeometry,
    shapes: list[tuple[int, int]],
    scales: list[list[float]],
    shifts: list[list[float]],
    n_z: int,
) -> Iterator[str]:
    """One NGFF label image per region under ``dest/labels``, on the image's pixels and levels."""
    from yaozarrs import v05
    from yaozarrs.write.v05 import LabelsBuilder

    yx_axes: list[Any] = [
        v05.SpaceAxis(name="y", unit="micrometer"),
        v05.SpaceAxis(name="x", unit="micrometer"),
    ]
    builder = LabelsBuilder(dest / "labels", writer="zarr", chunks=(ZARR_CHUNK_PX, ZARR_CHUNK_PX))
    for region in saved.masks:
        record = saved.regions.get(region)
        kind = record.kind if record is not None else "automatic"
        r, g, b = region_color(region)
        label = v05.ImageLabel.model_validate(
            {
                "colors": [{"label-value": 1, "rgba": [r, g, b, 255]}],
                "properties": [{"label-value": 1}],  # name and kind: _label_properties
                "source": {"image": "../../"},
                "version": "0.5",
            }
        )
        builder.add_label(
            region,
            _image_model(
                axes=yx_axes,
                level_scales=[sc[-2:] for sc in scales],
                level_translations=[sh[-2:] for sh in shifts],
                omero=None,
                name=region,
                method="nearest",
                metadata={
                    "description": "1 where the pixel centre lies in a cell of the region's mask "
                    "(the analysis grid), sampled at each level's pixel centres",
                    "kind": kind,
                },
                image_label=label,
            ),
            [(shape, "uint8") for shape in shapes],
        )
    _, arrays = builder.prepare()
    _label_properties(dest / "labels", saved)
    p = geometry.pixel_size_um
    for region, mask in saved.masks.items():
        for k, shape in enumerate(shapes):
            f = 2**k
            # centre of level-k pixel (i, j): the level's translation plus i·(f·p)
            x0 = geometry.origin_um[0] + (f - 1) / 2 * p
            y0 = geometry.origin_um[1] + (f - 1) / 2 * p
            target = arrays[f"{region}/{k}"]
            for rs, cs in _blocks(shape, ZARR_CHUNK_PX):
                x = x0 + np.arange(cs.start, cs.stop) * f * p
                y = y0 + np.arange(rs.start, rs.stop) * f * p
                target[rs, cs] = _label_block(mask, saved, x, y)
        yield region


def _label_properties(labels: Path, saved: SavedAnalysis) -> None:
    """Name and kind of each region in its label's ``image-label.properties`` (yaozarrs drops extras)."""
    import zarr

    for region in saved.masks:
        record = saved.regions.get(region)
        group = zarr.open_group(str(labels / region), mode="r+")
        ome: dict[str, Any] = json.loads(json.dumps(group.attrs["ome"]))
        ome["image-label"]["properties"] = [
            {"label-value": 1, "name": region, "kind": record.kind if record is not None else "automatic"}
        ]
        group.attrs["ome"] = ome


def _write_heatmap(sec: SectionReader, saved: SavedAnalysis | None, dest: Path) -> Path | None:
    from yaozarrs import v05
    from yaozarrs.write.v05 import prepare_image

    if saved is None:
        return None
    maps = saved.maps
    values = np.asarray(maps.pct_axonal_area, dtype=np.float32)
    origin, bin_um = maps.origin_um, maps.bin_um
    image = _image_model(
        axes=[v05.SpaceAxis(name="y", unit="micrometer"), v05.SpaceAxis(name="x", unit="micrometer")],
        level_scales=[[bin_um, bin_um]],
        level_translations=[[float(origin[1]) + bin_um / 2, float(origin[0]) + bin_um / 2]],
        omero=None,
        name=f"{sec.section_id} % axonal area",
        method=None,
        metadata={"description": "% axonal area of the imaged tissue per bin; NaN outside the tissue"},
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
    """Write every analysed section's region table to one CSV, with its labels and region kinds.

    The numbers are those of ``/sections/<id>/analysis/regions_table``, in
    the format of :func:`analysis.results_format.write_region_csv` (the CSV that
    ``cordscope analyze`` writes beside the scan): columns
    :data:`~analysis.results_format.CSV_COLUMNS`, units in the names, rounded values.

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
        if touches_file(target, scan_path):
            raise ExportError(f"--out {target} is the scan file being exported (the input); name a .csv")
        if target.exists() and not target.is_dir() and target.suffix.lower() != ".csv":
            raise ExportError(f"--out {target} is a file that is not a .csv; name a .csv file or a folder")
        if target.is_dir() or target.suffix.lower() != ".csv":
            target = target / default.name
    if touches_file(target, scan_path):
        raise ExportError(f"the CSV would be written over the scan file itself ({target}); choose --out")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create the folder for {target}: {e.strerror or e}") from None
    analysed = 0
    with ScanFile.open(scan_path) as scan:
        ids = scan.section_ids
        for i, sid in enumerate(ids):
            analysed += has_analysis(scan.section(sid).analysis_group)
            report(ExportProgress(i + 1, len(ids), sid, "regions"))
    if not analysed:
        raise ExportError(f"{scan_path} has no analysed section; run: cordscope analyze {scan_path}")
    return write_scan_region_csv(scan_path, target)
