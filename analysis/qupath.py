"""Regions shared with QuPath and scripts: OME-TIFF mosaics, GeoJSON annotations, and back.

Two GeoJSON frames
------------------
* **QuPath's pixel frame** (:func:`export_qupath`, :func:`qupath_features`,
  :func:`read_qupath_geojson`): per section an OME-TIFF pyramid of the
  full-resolution mosaic (``<section>.ome.tif``) and its regions as QuPath
  annotations (``<section>.geojson``) in that image's pixels: origin at the
  top-left corner of pixel ``(0, 0)``, x along columns, y down rows, as QuPath
  draws and exports them. Each feature is what QuPath itself writes
  (``qupath-core``'s ``PathObjectTypeAdapters``): ``type: Feature``, a UUID
  ``id``, a ``Polygon``/``MultiPolygon`` geometry (coordinates with 2 decimals),
  ``properties`` with ``objectType: "annotation"``, ``name``,
  ``classification: {name, color: [r, g, b]}`` (QuPath needs both to read it back),
  ``measurements`` (a name → number map) and ``metadata`` (strings).
* **Stage µm** (:func:`export_regions_geojson`, :func:`read_regions_geojson`):
  every section's regions in one file, the ``cordscope regions --export`` /
  ``cordscope analyze --regions`` exchange format, marked by a top-level
  ``"cordscope": {"format": "cordscope-regions", "frame": "stage_um"}`` member.

Stage µm ↔ image pixels (:class:`ImageFrame`): the image's top-left corner is
at stage ``corner_um`` and a pixel step is the 2 × 2 matrix ``affine_um``
(µm per pixel): ``stage = corner_um + affine_um @ (u, v)``. The mosaics written
here are stage-aligned (``pixel_size_um · I``): a rotated or mirrored camera's
tiles are turned into the stage frame before placement
(:func:`analysis.exports.place_done_tiles`), so its annotations need no other frame.

Imported annotations become regions of kind ``"imported"`` (with who, when and
the file's name); classification names map to CordScope's region names
(:func:`region_from_class`), features of one region are united, holes and
multipolygons kept, self-intersections repaired. An annotation whose outline is
what CordScope exported (untouched in QuPath) or whose mask equals the region's
mask in force changes nothing and is reported as unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely import affinity
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from acquisition.errors import CordScopeError
from acquisition.storage import ScanFile, SectionReader
from analysis.exports import (
    ExportError,
    ExportProgress,
    MosaicGeometry,
    ProgressCallback,
    _downsample_level,
    _no_progress,
    _prepare_out_dir,
    _pyramid_shapes,
    place_done_tiles,
    region_color,
    section_mosaic_geometry,
)
from analysis.maps import RegionRow
from analysis.region_edits import (
    Reanalysis,
    RegionEdit,
    SectionRegionSet,
    apply_region_edits,
    polygonal,
    rasterize_geometry_um,
)
from analysis.results_format import SavedAnalysis, has_analysis, read_analysis

__all__ = [
    "GEOJSON_DECIMALS",
    "REGIONS_FORMAT",
    "ImageFrame",
    "QuPathError",
    "RegionsImport",
    "apply_regions_file",
    "export_qupath",
    "export_regions_geojson",
    "qupath_features",
    "read_qupath_geojson",
    "read_regions_geojson",
    "region_from_class",
    "section_image_frame",
    "write_section_ome_tiff",
]

GEOJSON_DECIMALS = 2
"""Decimals of pixel coordinates in QuPath GeoJSON (QuPath writes 2)."""
REGIONS_FORMAT = "cordscope-regions"
"""``cordscope.format`` of the stage-µm regions file."""
OME_TIFF_TILE_PX = 512
#: An imported outline this close (image px, Hausdorff) to the exported one is unchanged.
_UNCHANGED_PX = 0.05
_KNOWN = {
    "section",
    "white_matter",
    "gray_matter",
    "left",
    "right",
    "dorsal",
    "ventral",
    "rubrospinal_territory",
}
_ALIASES = {
    "tissue": "section",
    "grey_matter": "gray_matter",
    "gm": "gray_matter",
    "wm": "white_matter",
    "rubrospinal": "rubrospinal_territory",
    "rubrospinal_tract": "rubrospinal_territory",
    "rst": "rubrospinal_territory",
}
_BIN = re.compile(r"rc_-?\d+_-?\d+")  # rostro-caudal bins keep their minus signs
_NAMESPACE = uuid.UUID("9f1d3c52-6b0e-4d8a-9a53-2f7c1e0b5d44")  # CordScope's UUID5 namespace


class QuPathError(CordScopeError):
    """A GeoJSON file or image cannot be exchanged as asked; the message says why."""


# ---------------------------------------------------------------- frames


@dataclasses.dataclass(frozen=True)
class ImageFrame:
    """Stage µm ↔ pixel coordinates of an exported image (QuPath's: origin at the top-left corner).

    Attributes
    ----------
    corner_um : (2,) float64
        Stage (x, y) of the top-left corner of pixel ``(0, 0)``.
    affine_um : (2, 2) float64
        Stage displacement (µm) of one pixel step along columns (first column of the
        matrix) and along rows (second column).
    shape_px : (rows, cols)
    """

    corner_um: NDArray[np.float64]
    affine_um: NDArray[np.float64]
    shape_px: tuple[int, int]

    @classmethod
    def from_mosaic(cls, geometry: MosaicGeometry) -> ImageFrame:
        """The frame of a full-resolution mosaic (:func:`analysis.exports.mosaic_geometry`)."""
        p = geometry.pixel_size_um
        centre = np.asarray(geometry.origin_um, dtype=np.float64)  # centre of pixel (0, 0)
        return cls(centre - 0.5 * p, np.array([[p, 0.0], [0.0, p]]), geometry.shape_px)

    @property
    def pixel_size_um(self) -> float:
        """Pixel size (µm): ``sqrt(|det affine_um|)``."""
        return float(math.sqrt(abs(np.linalg.det(self.affine_um))))

    def to_pixels(self, geometry: BaseGeometry) -> BaseGeometry:
        """A stage-µm geometry in image pixel coordinates."""
        inv = np.linalg.inv(self.affine_um)
        shift = -inv @ self.corner_um
        return affinity.affine_transform(geometry, [inv[0, 0], inv[0, 1], inv[1, 0], inv[1, 1], *shift])

    def to_stage(self, geometry: BaseGeometry) -> BaseGeometry:
        """An image-pixel geometry in stage µm."""
        a, c = self.affine_um, self.corner_um
        return affinity.affine_transform(geometry, [a[0, 0], a[0, 1], a[1, 0], a[1, 1], c[0], c[1]])


def _section_geometry(sec: SectionReader) -> tuple[NDArray[np.intp], MosaicGeometry]:
    done = sec.done_indices()
    if done.size == 0:
        raise ExportError(f"section {sec.section_id} has no done tile to export")
    return done, section_mosaic_geometry(sec, done)


def section_image_frame(sec: SectionReader) -> ImageFrame:
    """The frame of the section image :func:`write_section_ome_tiff` writes (and QuPath annotates)."""
    return ImageFrame.from_mosaic(_section_geometry(sec)[1])


# ---------------------------------------------------------------- region names


def region_from_class(name: str) -> str:
    """CordScope region name of a QuPath classification or annotation name.

    Case, spaces and hyphens do not matter (``"White matter"`` → ``white_matter``),
    ``grey`` is ``gray``, a few aliases are known (``Tissue``, ``GM``, ``WM``,
    ``Rubrospinal``, ``RST``); a derived class (``"Region*: Rubrospinal territory"``)
    counts by its last part when the whole is not a region name.
    """

    def norm(text: str) -> str:
        out = re.sub(r"[\s\-]+", "_", text.strip().lower()).replace("grey", "gray").strip("_*")
        return _ALIASES.get(out, out)

    if _BIN.fullmatch(name.strip().lower()):
        return name.strip().lower()
    whole = norm(name)
    if whole in _KNOWN or whole.startswith("rc_"):
        return whole
    last = norm(name.split(":")[-1])
    return last if (last in _KNOWN or last.startswith("rc_")) else whole


def _classification_name(properties: Mapping[str, Any]) -> str | None:
    cls = properties.get("classification")
    if isinstance(cls, str):
        return cls
    if isinstance(cls, Mapping):
        if isinstance(cls.get("name"), str):
            return str(cls["name"])
        names = cls.get("names")
        if isinstance(names, list) and names:
            return ": ".join(str(n) for n in names)
    name = properties.get("name")
    return str(name) if isinstance(name, str) else None


# ---------------------------------------------------------------- features


def _rounded_geometry(geom: BaseGeometry, decimals: int) -> dict[str, Any]:
    rounded = shapely.set_precision(geom, 10.0**-decimals) if decimals >= 0 else geom
    rounded = shapely.orient_polygons(rounded)
    return json.loads(json.dumps(mapping(rounded)))


def _measurements(row: RegionRow | None) -> dict[str, float]:
    if row is None:
        return {}
    values = {
        "area_um2": row.area_um2,
        "axon_area_um2": row.axon_area_um2,
        "pct_axonal_area": row.pct_axonal_area,
        "mean_tracer_intensity_adu": row.mean_tracer_intensity,
        "imaged_pct": 100.0 * row.imaged_fraction,
    }
    # JSON has no NaN: a measurement that does not exist is left out (as QuPath does)
    return {k: float(v) for k, v in values.items() if math.isfinite(v)}


def _feature(
    *,
    feature_id: str,
    geometry: dict[str, Any],
    region: str,
    name: str,
    row: RegionRow | None,
    metadata: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    r, g, b = region_color(region)
    properties: dict[str, Any] = {
        "objectType": "annotation",
        "name": name,
        "classification": {"name": region, "color": [r, g, b]},
        "measurements": _measurements(row),
        "metadata": dict(metadata),
    }
    properties.update(extra or {})
    return {"type": "Feature", "id": feature_id, "geometry": geometry, "properties": properties}


def _outline_px(regions: SectionRegionSet, region: str, frame: ImageFrame) -> BaseGeometry | None:
    """A region's outline as exported to QuPath: drawn polygon, or the mask smoothed by half a cell."""
    outline = regions.outline_um(region, simplify_um=0.5 * regions.grid.cell_um)
    if outline is None:
        return None
    px = frame.to_pixels(shape(outline))
    return shape(_rounded_geometry(px, GEOJSON_DECIMALS))


def qupath_features(
    saved: SavedAnalysis, frame: ImageFrame, *, section_id: str, scan_name: str = ""
) -> dict[str, Any]:
    """A section's regions as a QuPath GeoJSON FeatureCollection in the image's pixel frame.

    Parameters
    ----------
    saved : SavedAnalysis
        The section's analysis (masks, records, table).
    frame : ImageFrame
        The exported image's frame (:func:`section_image_frame`).
    section_id : str
    scan_name : str
        Scan file name, for stable feature ids.

    Returns
    -------
    dict
        ``{"type": "FeatureCollection", "features": [...]}``, one annotation per region;
        outlines of automatic regions are their masks smoothed by half a cell.
    """
    regions = SectionRegionSet.from_saved(saved)
    rows = {r.region: r for r in saved.table}
    features = []
    for region in saved.masks:
        geom = _outline_px(regions, region, frame)
        if geom is None or geom.is_empty:
            continue
        record = regions.records[region]
        features.append(
            _feature(
                feature_id=str(uuid.uuid5(_NAMESPACE, f"{scan_name}/{section_id}/{region}")),
                geometry=json.loads(json.dumps(mapping(geom))),
                region=region,
                name=region,
                row=rows.get(region),
                metadata={
                    "section_id": section_id,
                    "region_kind": record.kind,
                    "who": record.who,
                    "when_iso": record.when_iso,
                },
            )
        )
    return {"type": "FeatureCollection", "features": features}


# ---------------------------------------------------------------- reading GeoJSON


@dataclasses.dataclass(frozen=True)
class RegionsImport:
    """Regions read from a GeoJSON file.

    Attributes
    ----------
    edits : dict of section id → list of RegionEdit
        One ``imported`` edit per changed region (stage µm polygons).
    unchanged : list of str
        ``<section>/<region>`` whose outline or mask is what the file already holds.
    skipped : list of str
        What was left out and why (not an annotation, no polygon, unknown region name).
    """

    edits: dict[str, list[RegionEdit]]
    unchanged: list[str]
    skipped: list[str]


def _load(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(source, Mapping):
        return dict(source), ""
    path = Path(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QuPathError(f"GeoJSON file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QuPathError(f"{path} is not JSON ({e})") from None
    return data, path.name


def _features(data: Any, where: str) -> list[dict[str, Any]]:
    # QuPath writes a FeatureCollection, or (without "FEATURE_COLLECTION") a plain list of features
    if isinstance(data, list):
        return [f for f in data if isinstance(f, dict)]
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return [f for f in data.get("features", []) if isinstance(f, dict)]
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    raise QuPathError(f"{where or 'the GeoJSON'} is neither a FeatureCollection nor a list of features")


def _region_geometries(
    features: Sequence[Mapping[str, Any]], *, known: set[str], allow_new: bool, label: str
) -> tuple[dict[str, BaseGeometry], list[str]]:
    """Polygonal geometry per region name (features of a region united), and what was skipped."""
    parts: dict[str, list[BaseGeometry]] = {}
    skipped: list[str] = []
    for i, feature in enumerate(features):
        props = feature.get("properties") or {}
        what = f"{label}feature {i}"
        object_type = props.get("objectType", props.get("object_type", props.get("type", "annotation")))
        if object_type not in ("annotation", "PathAnnotationObject", "unknown"):
            skipped.append(f"{what}: a {object_type}, not an annotation")
            continue
        cls_name = _classification_name(props)
        if cls_name is None:
            skipped.append(f"{what}: no classification or name")
            continue
        region = region_from_class(cls_name)
        if region not in known and not allow_new:
            skipped.append(f"{what}: {cls_name!r} is no region of the section")
            continue
        try:
            geom = polygonal(shape(feature.get("geometry") or {}))
        except (ValueError, TypeError, AttributeError, shapely.errors.GEOSException) as e:
            skipped.append(f"{what} ({region}): unreadable geometry ({e})")
            continue
        if geom.is_empty:
            skipped.append(f"{what} ({region}): no polygon")
            continue
        parts.setdefault(region, []).append(geom)
    return {name: shapely.union_all(geoms) for name, geoms in parts.items()}, skipped


def _edits_for_section(
    saved: SavedAnalysis,
    geometries_um: Mapping[str, BaseGeometry],
    *,
    section_id: str,
    source: str,
    exported_px: Mapping[str, BaseGeometry] | None = None,
    frame: ImageFrame | None = None,
) -> tuple[list[RegionEdit], list[str]]:
    regions = SectionRegionSet.from_saved(saved)
    edits, unchanged = [], []
    for region, geom in geometries_um.items():
        if exported_px is not None and frame is not None and region in exported_px:
            as_px = frame.to_pixels(geom)
            if as_px.hausdorff_distance(exported_px[region]) <= _UNCHANGED_PX:
                unchanged.append(f"{section_id}/{region}")
                continue
        mask = rasterize_geometry_um(geom, grid=regions.grid)
        if region in regions.masks and np.array_equal(mask, regions.masks[region]):
            unchanged.append(f"{section_id}/{region}")
            continue
        edits.append(
            RegionEdit(
                region=region,
                kind="imported",
                geometry_um=json.loads(json.dumps(mapping(shapely.orient_polygons(geom)))),
                source=source,
            )
        )
    return edits, unchanged


def read_qupath_geojson(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    saved: SavedAnalysis,
    frame: ImageFrame,
    section_id: str,
    allow_new_regions: bool = False,
) -> RegionsImport:
    """Annotations of a QuPath GeoJSON file (image pixel frame) as region edits in stage µm.

    Parameters
    ----------
    source : path of the GeoJSON file (or its parsed content)
    saved : SavedAnalysis
        The section's analysis (its regions say what is unchanged).
    frame : ImageFrame
        The frame of the image QuPath annotated (:func:`section_image_frame`).
    section_id : str
    allow_new_regions : bool
        Import annotations whose class names no region of the section as new regions.

    Raises
    ------
    QuPathError
        If the file is not GeoJSON features.
    """
    data, name = _load(source)
    label = f"{name}: " if name else ""
    features = _features(data, name)
    geoms_px, skipped = _region_geometries(
        features, known=set(saved.masks) | _KNOWN, allow_new=allow_new_regions, label=label
    )
    regions = SectionRegionSet.from_saved(saved)
    exported = {r: g for r in saved.masks if (g := _outline_px(regions, r, frame)) is not None}
    geoms_um = {region: frame.to_stage(g) for region, g in geoms_px.items()}
    edits, unchanged = _edits_for_section(
        saved, geoms_um, section_id=section_id, source=name or "qupath", exported_px=exported, frame=frame
    )
    return RegionsImport({section_id: edits} if edits else {}, unchanged, skipped)


def read_regions_geojson(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    saved: Mapping[str, SavedAnalysis],
    allow_new_regions: bool = False,
) -> RegionsImport:
    """A stage-µm regions file (:func:`export_regions_geojson`'s format) as region edits.

    Each feature names its section (``properties.section_id``) and region
    (``properties.region``, else its classification or name).

    Parameters
    ----------
    source : path of the GeoJSON file (or its parsed content)
    saved : mapping of section id → SavedAnalysis
        The scan's analysed sections.
    allow_new_regions : bool

    Raises
    ------
    QuPathError
        Not a stage-µm regions file, or a feature of a section the scan does not have.
    """
    data, name = _load(source)
    if not is_stage_regions_file(data):
        raise QuPathError(
            f"{name or 'the GeoJSON'} is not a CordScope regions file in stage µm; for QuPath's "
            "pixel frame give the section (cordscope analyze FILE --regions X.geojson --section ID)"
        )
    label = f"{name}: " if name else ""
    by_section: dict[str, list[dict[str, Any]]] = {}
    for i, feature in enumerate(_features(data, name)):
        props = dict(feature.get("properties") or {})
        sid = props.get("section_id")
        if not isinstance(sid, str):
            raise QuPathError(f"{label}feature {i} names no section_id")
        if sid not in saved:
            raise QuPathError(f"{label}feature {i}: section {sid!r} is not an analysed section of the scan")
        if isinstance(props.get("region"), str):
            props["classification"] = {"name": props["region"]}
        by_section.setdefault(sid, []).append({**feature, "properties": props})
    edits: dict[str, list[RegionEdit]] = {}
    unchanged: list[str] = []
    skipped: list[str] = []
    for sid, features in by_section.items():
        geoms, skip = _region_geometries(
            features, known=set(saved[sid].masks) | _KNOWN, allow_new=allow_new_regions, label=label
        )
        skipped += skip
        section_edits, same = _edits_for_section(saved[sid], geoms, section_id=sid, source=name or "geojson")
        unchanged += same
        if section_edits:
            edits[sid] = section_edits
    return RegionsImport(edits, unchanged, skipped)


def is_stage_regions_file(data: Any) -> bool:
    """Whether parsed GeoJSON is CordScope's stage-µm regions file."""
    meta = data.get("cordscope") if isinstance(data, dict) else None
    return isinstance(meta, dict) and meta.get("frame") == "stage_um"


# ---------------------------------------------------------------- scan-level functions


def _saved_sections(scan: ScanFile) -> dict[str, SavedAnalysis]:
    out = {}
    for sid in scan.section_ids:
        group = scan.section(sid).analysis_group
        if has_analysis(group):
            assert group is not None
            out[sid] = read_analysis(group)
    return out


def export_regions_geojson(scan_path: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write every analysed section's regions, in stage µm with provenance, to one GeoJSON file.

    Each region is one feature: its polygon as drawn or imported, else the exact
    outline of its mask's cells (so reading the file back gives the same masks);
    ``properties`` carry ``section_id``, ``region``, ``kind``, ``who``,
    ``when_iso``, ``source``, the section's ``animal``/``group``/``level``, the
    region's measurements and a QuPath-style ``classification``.

    Raises
    ------
    QuPathError
        If no section of the scan is analysed.
    """
    path = Path(scan_path)
    features = []
    with ScanFile.open(path) as scan:
        saved = _saved_sections(scan)
        attrs = {sid: scan.section(sid).attrs for sid in saved}
    if not saved:
        raise QuPathError(f"{path.name} has no analysed section; run: cordscope analyze {path}")
    for sid, analysis in saved.items():
        regions = SectionRegionSet.from_saved(analysis)
        rows = {r.region: r for r in analysis.table}
        for region in analysis.masks:
            outline = regions.outline_um(region)
            if outline is None:
                continue
            record = regions.records[region]
            labels = {k: attrs[sid].get(k) for k in ("animal", "group", "level")}
            features.append(
                _feature(
                    feature_id=str(uuid.uuid5(_NAMESPACE, f"{path.name}/{sid}/{region}")),
                    geometry=outline,
                    region=region,
                    name=f"{sid} {region}",
                    row=rows.get(region),
                    metadata={"section_id": sid, "region_kind": record.kind},
                    extra={
                        "section_id": sid,
                        "region": region,
                        "kind": record.kind,
                        "who": record.who,
                        "when_iso": record.when_iso,
                        "source": record.source,
                        **{k: (None if v is None else str(v)) for k, v in labels.items()},
                    },
                )
            )
    collection = {
        "type": "FeatureCollection",
        "cordscope": {"format": REGIONS_FORMAT, "format_version": 1, "frame": "stage_um", "scan": path.name},
        "features": features,
    }
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(collection, indent=1), encoding="utf-8")
    return target


def _section_from_name(file_name: str, section_ids: Sequence[str]) -> str | None:
    # QuPath names exports after the image: "<section>.ome.tif.geojson", "<section>.geojson", ...
    matches = [sid for sid in section_ids if file_name == sid or file_name.startswith(sid + ".")]
    return max(matches, key=len) if matches else None


def apply_regions_file(
    scan_path: str | os.PathLike[str],
    geojson_path: str | os.PathLike[str],
    *,
    section_id: str | None = None,
    allow_new_regions: bool = False,
) -> tuple[dict[str, Reanalysis], RegionsImport]:
    """Apply a regions GeoJSON file to a scan: changed regions become ``imported``, tables are recomputed.

    A stage-µm file (:func:`export_regions_geojson`) may hold every section; any
    other GeoJSON is taken as QuPath annotations in the pixel frame of one
    section's exported image: ``section_id``, else the section whose id starts the
    file name (``rat01-Th7.geojson``, ``rat01-Th7.ome.tif.geojson``).

    Returns
    -------
    results : dict of section id → Reanalysis
        The re-analysed sections (written into the scan file, CSV rewritten).
    found : RegionsImport
        What was imported, unchanged and skipped.

    Raises
    ------
    QuPathError
        An unreadable file, or no section to apply QuPath annotations to.
    """
    path = Path(scan_path)
    data, name = _load(geojson_path)
    with ScanFile.open(path) as scan:
        saved = _saved_sections(scan)
        if not saved:
            raise QuPathError(f"{path.name} has no analysed section; run: cordscope analyze {path}")
        if is_stage_regions_file(data):
            found = read_regions_geojson(data, saved=saved, allow_new_regions=allow_new_regions)
        else:
            sid = section_id or _section_from_name(name, list(saved))
            if sid is None:
                raise QuPathError(
                    f"{name} is QuPath GeoJSON in one section's pixels; name the section with --section "
                    f"(analysed: {', '.join(saved)})"
                )
            if sid not in saved:
                raise QuPathError(
                    f"section {sid!r} of {path.name} is not analysed (analysed: {', '.join(saved)})"
                )
            frame = section_image_frame(scan.section(sid))
            found = read_qupath_geojson(
                data, saved=saved[sid], frame=frame, section_id=sid, allow_new_regions=allow_new_regions
            )
    found = dataclasses.replace(
        found,
        edits={s: [dataclasses.replace(e, source=name) for e in es] for s, es in found.edits.items()},
    )
    results = apply_region_edits(path, found.edits) if found.edits else {}
    return results, found


# ---------------------------------------------------------------- OME-TIFF


def _ome_color(rgb: tuple[int, int, int]) -> int:
    """OME's Color: RGBA packed in a signed 32-bit integer."""
    value = (rgb[0] << 24) | (rgb[1] << 16) | (rgb[2] << 8) | 255
    return value - (1 << 32) if value >= 1 << 31 else value


_CHANNEL_RGB = {"dapi": (0, 0, 255), "tdtomato": (255, 0, 0)}


def write_section_ome_tiff(
    sec: SectionReader,
    path: str | os.PathLike[str],
    *,
    progress: ProgressCallback | None = None,
) -> ImageFrame:
    """Write a section's full-resolution mosaic as a pyramidal OME-TIFF (what QuPath opens).

    The mosaic is the one of :func:`analysis.exports.export_ome_zarr` (done tiles at
    registered, else planned, positions; 0 where not imaged), z-stacks max-projected
    (as the analysis does), uint16 ``(C, Y, X)``, 512 × 512 tiles, zlib. Sub-resolutions
    (2 × 2 means, until the image fits in one tile) are SubIFDs of each plane, as
    Bio-Formats and QuPath read them. OME-XML: ``PhysicalSizeX/Y`` in µm, channel names
    and colours, each plane's ``PositionX/Y`` = the stage position (µm) of the image's
    top-left corner.

    The mosaic is assembled in a temporary file beside ``path``, tile by tile, so
    memory stays at a few tiles.

    Returns
    -------
    ImageFrame
        The image's frame (for its annotations).
    """
    import tifffile

    report = progress or _no_progress
    target = Path(path)
    done, geometry = _section_geometry(sec)
    frame = ImageFrame.from_mosaic(geometry)
    n_c = len(sec.channel_names)
    shapes = _pyramid_shapes(geometry.shape_px)
    steps = done.size + sum(
        math.ceil(r / OME_TIFF_TILE_PX) * math.ceil(c / OME_TIFF_TILE_PX) for r, c in shapes[1:]
    )
    step = 0
    p = geometry.pixel_size_um
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".cordscope-") as tmp:
        levels = [
            np.lib.format.open_memmap(
                os.path.join(tmp, f"level{k}.npy"), mode="w+", dtype=np.uint16, shape=(n_c, *shape)
            )
            for k, shape in enumerate(shapes)
        ]
        for _ in place_done_tiles(sec, done, geometry, levels[0], z_projection=True):
            step += 1
            report(ExportProgress(step, steps, sec.section_id, "tiles"))
        for k in range(1, len(shapes)):
            for _ in _downsample_level(levels[k - 1], levels[k], (n_c,)):
                step += 1
                report(ExportProgress(step, steps, sec.section_id, "pyramid"))
        corner = frame.corner_um
        metadata = {
            "axes": "CYX",
            "Name": sec.section_id,
            "SignificantBits": 16,
            "PhysicalSizeX": p,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": p,
            "PhysicalSizeYUnit": "µm",
            "Channel": {
                "Name": list(sec.channel_names),
                "Color": [
                    _ome_color(_CHANNEL_RGB.get(c.lower(), (255, 255, 255))) for c in sec.channel_names
                ],
            },
            "Plane": {
                "PositionX": [float(corner[0])] * n_c,
                "PositionXUnit": ["µm"] * n_c,
                "PositionY": [float(corner[1])] * n_c,
                "PositionYUnit": ["µm"] * n_c,
            },
            "Description": (
                f"CordScope section {sec.section_id}; Plane PositionX/Y: stage position of the "
                "top-left corner of pixel (0, 0)"
            ),
        }
        options: dict[str, Any] = {
            "photometric": "minisblack",
            "tile": (OME_TIFF_TILE_PX, OME_TIFF_TILE_PX),
            "compression": "zlib",
            "resolutionunit": "CENTIMETER",
        }
        with tifffile.TiffWriter(target, bigtiff=True, ome=True) as tif:
            tif.write(
                levels[0],
                subifds=len(levels) - 1,
                resolution=(1e4 / p, 1e4 / p),
                metadata=metadata,
                **options,
            )
            for k in range(1, len(levels)):
                f = 2**k
                tif.write(levels[k], subfiletype=1, resolution=(1e4 / (p * f), 1e4 / (p * f)), **options)
        del levels  # close the memory maps before the folder goes
    return frame


def export_qupath(
    scan_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> list[Path]:
    """Per section: ``<section>.ome.tif`` (the mosaic) and ``<section>.geojson`` (its regions for QuPath).

    Sections without a done tile are skipped; a section without analysis gets its
    image only. In QuPath: open the ``.ome.tif`` (or add it to a project), then
    *File › Import objects from file* with the ``.geojson``; edit, then *File ›
    Export objects as GeoJSON* (annotations, "Export as FeatureCollection"), and
    ``cordscope analyze SCAN --regions FILE.geojson --section ID`` brings the edits back.

    Returns
    -------
    list of Path
        The written files, in section order.
    """
    path = Path(scan_path)
    written: list[Path] = []
    with ScanFile.open(path) as scan:
        names = [f"{sid}{ext}" for sid in scan.section_ids for ext in (".ome.tif", ".geojson")]
        out = _prepare_out_dir(out_dir, names, overwrite, protect=path)
        for sid in scan.section_ids:
            sec = scan.section(sid)
            if sec.done_indices().size == 0:
                continue
            frame = write_section_ome_tiff(sec, out / f"{sid}.ome.tif", progress=progress)
            written.append(out / f"{sid}.ome.tif")
            group = sec.analysis_group
            if has_analysis(group):
                assert group is not None
                collection = qupath_features(read_analysis(group), frame, section_id=sid, scan_name=path.name)
                target = out / f"{sid}.geojson"
                target.write_text(json.dumps(collection, indent=1), encoding="utf-8")
                written.append(target)
    return written
