"""The one reader and writer of a section's ``analysis/`` group (format ``cordscope-analysis``).

Every result the analysis keeps in a scan file lives in
``/sections/<id>/analysis/`` and is written and read here, nowhere else:
:func:`write_analysis` (a whole analysis: the live worker's final results and
``cordscope analyze``), :func:`write_region_results` (new regions, their
table and maps after an edit, without touching the mosaic or the sums) and
:func:`read_analysis`. Readers outside CordScope need only h5py: plain
datasets, JSON text, units in the names.

Versions
--------
The group carries ``format = "cordscope-analysis"`` and ``format_version``.

1. The layout before versioning (no ``format`` attributes): maps, ``masks/``,
   ``regions_table`` (no ``kind`` column), ``parameters_json``,
   ``grid/imaged_area_um2``, ``grid/axon_area_um2``, ``grid/tracer_sum``, ``mosaic``,
   ``regions_json``, ``registration/``, ``registered_tile_xy_um``. Read as version 1:
   every region automatic (plan polygons ``drawn``), the per-cell pixel counts
   recovered from the areas and the section's pixel size.
2. Adds region provenance, the automatic masks of replaced regions, the per-cell
   sums as pixel counts with the tile geometry (so tables and maps can be
   recomputed from the file alone), a ``kind`` column in the table and a region
   history.

A group of a newer version is refused (:class:`ResultsFormatError`): its
meaning may have changed.

Layout (version 2)::

    analysis/                         attrs format, format_version
        pct_axonal_area_map           float32 (ny, nx)  attrs origin_um, bin_um, units
        mean_tracer_map               float32 (ny, nx)
        imaged_tissue_fraction_map    float32 (ny, nx)
        masks/<region>                uint8 (rows, cols) 0/1, the masks in force
                                      attrs kind, who, when_iso, source, geometry_um (JSON, stage µm)
        masks                         attrs origin_um, cell_um (the analysis grid)
        automatic_masks/<region>      uint8: the automatic mask of a region whose mask in
                                      force differs from it (kept for "reset to automatic")
        regions_table                 compound: region, kind, area_um2, axon_area_um2,
                                      pct_axonal_area, mean_tracer_intensity, imaged_fraction,
                                      imaged_at_hires_fraction (absent in older tables: 0)
        regions_table_csv             the same as CSV text
        region_history_json           JSON list of region changes (region, kind, who, when_iso, source)
        parameters_json               JSON text of the analysis parameters
        regions_json                  JSON text: axes, epicenter, bins (analysis.section_analysis)
        grid/imaged_px                float64 (rows, cols): imaged full-resolution pixels per cell
        grid/axon_px                  float64 (rows, cols): axon pixels per cell
        grid/tracer_sum_adu           float64 (rows, cols): sum of the corrected tracer values
        grid/tile_centres_um          float64 (n_tiles, 2): tile centres that decided ownership
        grid                          attrs origin_um, cell_um, tile_pixel_size_um, tile_shape_px
        mosaic                        float32 (C, rows, cols)  attrs origin_um, pixel_um, channel_names
        registration/                 pairs, pair_shift_px, pair_ncc, pair_used, residual_px, correction_um
        registered_tile_xy_um         float64 (n_tiles, 2), NaN where not registered
        tile_flags/                   per tile and channel (additive: groups without it read as before)
            background_adu            float32 (n_tiles, C): raw background (1st percentile of block
                                      means); NaN where the tile was not analysed
            darker_than_offset        uint8 (n_tiles, C): 1 where the background lies below the offset
            n_saturated               int64 (n_tiles, C): pixels at full scale; -1 not analysed
                                      attrs channel_names (JSON), bit_depth (JSON list, per channel)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import h5py
import numpy as np
from numpy.typing import ArrayLike, NDArray

from acquisition.errors import CordScopeError
from analysis.maps import REGION_COLUMNS, Heatmaps, RegionRow, SectionAccumulator
from analysis.tile_flags_format import TileFlagArrays, read_tile_flags, write_tile_flags

__all__ = [
    "ANALYSIS_FORMAT",
    "ANALYSIS_FORMAT_VERSION",
    "CSV_COLUMNS",
    "CSV_DIGITS",
    "REGION_KINDS",
    "CellSums",
    "RegionKind",
    "RegionRecord",
    "ResultsFormatError",
    "SavedAnalysis",
    "TileFlagArrays",
    "analysis_format_version",
    "has_analysis",
    "read_analysis",
    "read_region_table",
    "read_registered_tile_xy_um",
    "read_tile_flags",
    "region_csv_path",
    "replace_dataset",
    "write_analysis",
    "write_region_csv",
    "write_region_results",
    "write_scan_region_csv",
]

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]
BoolArray = NDArray[np.bool_]

ANALYSIS_FORMAT = "cordscope-analysis"
"""Value of the ``format`` attribute of an ``analysis/`` group."""
ANALYSIS_FORMAT_VERSION = 2
"""Version this module writes; it reads this one and every older one."""

RegionKind = Literal["automatic", "edited", "drawn", "imported"]
"""Where a region's mask came from: computed from the DAPI mosaic (``automatic``), an automatic
outline moved by hand (``edited``), drawn by hand or given in the plan (``drawn``), read from a
GeoJSON file (``imported``, e.g. annotations edited in QuPath)."""
REGION_KINDS: tuple[str, ...] = get_args(RegionKind)

#: Region-table columns as stored in the HDF5 compound dataset (RegionRow's fields).
TABLE_COLUMNS = ("region", "kind", *REGION_COLUMNS[1:], "imaged_at_hires_fraction")

#: Columns of the regions CSV (units in every numeric name) and what they come from.
CSV_COLUMNS = (
    "section_id",
    "animal",
    "group",
    "level",
    "region",
    "region_kind",
    "area_um2",
    "axon_area_um2",
    "pct_axonal_area",
    "mean_tracer_intensity_adu",
    "imaged_pct",
    "imaged_at_hires_pct",
)
CSV_DIGITS: dict[str, int] = {
    "area_um2": 1,
    "axon_area_um2": 1,
    "pct_axonal_area": 4,
    "mean_tracer_intensity_adu": 2,
    "imaged_pct": 2,
    "imaged_at_hires_pct": 2,
}
"""Decimal places of each numeric CSV column (values are rounded, not truncated)."""

_STR = h5py.string_dtype()


class ResultsFormatError(CordScopeError):
    """A section's ``analysis/`` group cannot be read or written as asked; the message says why."""


# ---------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class RegionRecord:
    """Where one region's mask in force came from.

    Attributes
    ----------
    kind : {"automatic", "edited", "drawn", "imported"}
    who : str
        User who made the change (empty for automatic regions).
    when_iso : str
        ISO 8601 time of the change (of the analysis, for automatic regions).
    source : str
        Where it came from: ``"plan"`` (a plan polygon), ``"gui"``, a GeoJSON file name, ...
    geometry_um : dict or None
        GeoJSON geometry (``Polygon`` / ``MultiPolygon``) in stage µm as drawn or imported;
        None when the region is a mask only (automatic, or a brush edit).
    """

    kind: RegionKind = "automatic"
    who: str = ""
    when_iso: str = ""
    source: str = ""
    geometry_um: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in REGION_KINDS:
            raise ResultsFormatError(f"region kind {self.kind!r} is not one of {', '.join(REGION_KINDS)}")

    def attrs(self) -> dict[str, str]:
        """The record as HDF5 attributes (plain strings)."""
        out = {"kind": self.kind, "who": self.who, "when_iso": self.when_iso, "source": self.source}
        if self.geometry_um is not None:
            out["geometry_um"] = json.dumps(self.geometry_um)
        return out

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], *, default: RegionRecord | None = None) -> RegionRecord:
        """The record stored in a mask's attributes (``default`` when it has none)."""
        if "kind" not in attrs:
            return default or cls()
        geometry = attrs.get("geometry_um")
        kind = _text(attrs["kind"])
        if kind not in REGION_KINDS:
            raise ResultsFormatError(
                f"region kind {kind!r} in the file is not one of {', '.join(REGION_KINDS)}"
            )
        return cls(
            kind=kind,  # type: ignore[arg-type]
            who=_text(attrs.get("who", "")),
            when_iso=_text(attrs.get("when_iso", "")),
            source=_text(attrs.get("source", "")),
            geometry_um=None if geometry is None else json.loads(_text(geometry)),
        )


@dataclasses.dataclass(frozen=True)
class CellSums:
    """A section's per-cell sums on the analysis grid: what tables and maps are computed from.

    The same numbers as a :class:`~analysis.maps.SectionAccumulator` holds, with the grid
    and tile geometry, so region tables and heatmaps can be recomputed for any region
    masks without reading or segmenting a tile.

    Attributes
    ----------
    imaged_px, axon_px : (rows, cols) float64
        Imaged and axon full-resolution pixels whose centres fall in each cell (owned shares).
    tracer_sum_adu : (rows, cols) float64
        Sum of the corrected tracer value (ADU above the dark offset) over those pixels.
    origin_um : (2,) float64
        Stage (x, y) of the grid's top-left corner.
    cell_um : float
        Cell size (µm).
    tile_pixel_size_um : float
        Full-resolution pixel size (µm).
    tile_centres_um : (n_tiles, 2) float64
        Tile centres that decided which tile owns each point.
    tile_shape_px : (H, W)
    """

    imaged_px: F64
    axon_px: F64
    tracer_sum_adu: F64
    origin_um: F64
    cell_um: float
    tile_pixel_size_um: float
    tile_centres_um: F64
    tile_shape_px: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """Grid shape ``(rows, cols)``."""
        return (int(self.imaged_px.shape[0]), int(self.imaged_px.shape[1]))

    @classmethod
    def from_accumulator(cls, acc: SectionAccumulator) -> CellSums:
        """A copy of an accumulator's sums and geometry."""
        return cls(
            imaged_px=acc.imaged_px.copy(),
            axon_px=acc.axon_px.copy(),
            tracer_sum_adu=acc.tracer_sum.copy(),
            origin_um=acc.origin_um.copy(),
            cell_um=acc.cell_um,
            tile_pixel_size_um=acc.tile_pixel_size_um,
            tile_centres_um=acc.tile_centres_um.copy(),
            tile_shape_px=acc.tile_shape,
        )

    def accumulator(self) -> SectionAccumulator:
        """A SectionAccumulator holding these sums (for region_table / heatmaps)."""
        acc = SectionAccumulator(
            origin_um=self.origin_um,
            cell_um=self.cell_um,
            shape=self.shape,
            tile_centres_um=self.tile_centres_um,
            tile_shape=self.tile_shape_px,
            tile_pixel_size_um=self.tile_pixel_size_um,
        )
        acc.imaged_px[...] = self.imaged_px
        acc.axon_px[...] = self.axon_px
        acc.tracer_sum[...] = self.tracer_sum_adu
        return acc


@dataclasses.dataclass(frozen=True)
class SavedAnalysis:
    """A section's analysis as stored in its ``analysis/`` group, read back.

    Attributes
    ----------
    maps : Heatmaps
    masks : dict of region name → (rows, cols) bool on the analysis grid
        The masks in force (the table's regions), in table order.
    mask_origin_um : (2,) float64 or None
        Stage (x, y) of the mask grid's top-left corner.
    mask_cell_um : float or None
    table : list of RegionRow
        With each row's ``kind``.
    parameters : dict
    mosaic : (C, rows, cols) float32 or None
    mosaic_origin_um : (2,) float64 or None
    mosaic_pixel_um : float or None
    channel_names : tuple of str
    format_version : int
        Version of the group as stored (1 for groups written before versioning).
    regions : dict of region name → RegionRecord
        Provenance of every mask in force.
    automatic_masks : dict of region name → (rows, cols) bool
        The automatic mask of each region (for regions whose mask in force is automatic,
        that mask); regions drawn in the plan have none.
    sums : CellSums or None
        Per-cell sums (None when the group has none, or a version-1 group outside its scan).
    regions_json : str or None
        Axes, epicenter and bins of the automatic regions (``analysis.section_analysis``).
    registered_tile_xy_um : (n_tiles, 2) float64 or None
    region_history : list of dict
        Region changes, oldest first.
    """

    maps: Heatmaps
    masks: dict[str, BoolArray]
    mask_origin_um: F64 | None
    mask_cell_um: float | None
    table: list[RegionRow]
    parameters: dict[str, Any]
    mosaic: F32 | None = None
    mosaic_origin_um: F64 | None = None
    mosaic_pixel_um: float | None = None
    channel_names: tuple[str, ...] = ()
    format_version: int = ANALYSIS_FORMAT_VERSION
    regions: dict[str, RegionRecord] = dataclasses.field(default_factory=dict)
    automatic_masks: dict[str, BoolArray] = dataclasses.field(default_factory=dict)
    sums: CellSums | None = None
    regions_json: str | None = None
    registered_tile_xy_um: F64 | None = None
    region_history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def bin_um(self) -> float:
        """Requested heatmap bin size (µm): the parameters' ``bin_um``, else the maps' actual one."""
        return float(self.parameters.get("bin_um", self.maps.bin_um))


# ---------------------------------------------------------------- helpers


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _where(group: h5py.Group) -> str:
    return f"{group.file.filename}: {group.name}"


def replace_dataset(group: h5py.Group, name: str, data: Any, **kwargs: Any) -> h5py.Dataset:
    """Create dataset ``name`` in ``group``, replacing one already there."""
    if name in group:
        del group[name]
    return group.create_dataset(name, data=data, **kwargs)


def _fresh_group(parent: h5py.Group, name: str) -> h5py.Group:
    if name in parent:
        del parent[name]
    return parent.create_group(name)


def analysis_format_version(group: h5py.Group) -> int | None:
    """Version of an ``analysis/`` group; None if it holds no analysis.

    Raises
    ------
    ResultsFormatError
        If the group says it is another format, or a newer version than this CordScope reads.
    """
    fmt = group.attrs.get("format")
    if fmt is None:
        return 1 if "regions_table" in group else None
    if _text(fmt) != ANALYSIS_FORMAT:
        raise ResultsFormatError(f"{_where(group)} is {_text(fmt)!r}, not a {ANALYSIS_FORMAT} group")
    version = int(group.attrs.get("format_version", 0))
    if version > ANALYSIS_FORMAT_VERSION:
        raise ResultsFormatError(
            f"{_where(group)} is analysis format version {version}, newer than this CordScope reads "
            f"(up to {ANALYSIS_FORMAT_VERSION}); update CordScope to read it"
        )
    if version < 1:
        raise ResultsFormatError(f"{_where(group)} has an invalid format_version {version}")
    return version


def has_analysis(group: h5py.Group | None) -> bool:
    """Whether ``group`` (a section's ``analysis/`` group, or None) holds a readable analysis."""
    return group is not None and analysis_format_version(group) is not None


def _stamp(group: h5py.Group) -> None:
    group.attrs["format"] = ANALYSIS_FORMAT
    group.attrs["format_version"] = ANALYSIS_FORMAT_VERSION


def _check_writable(group: h5py.Group) -> None:
    # refuses a newer version (or another format) before anything is overwritten
    analysis_format_version(group)


# ---------------------------------------------------------------- writing


def _write_maps(group: h5py.Group, maps: Heatmaps) -> None:
    common = {"origin_um": maps.origin_um, "bin_um": maps.bin_um}
    for name, data, units in (
        ("pct_axonal_area_map", maps.pct_axonal_area, "percent of imaged tissue area"),
        ("mean_tracer_map", maps.mean_tracer, "mean corrected tracer value per pixel (ADU)"),
        ("imaged_tissue_fraction_map", maps.imaged_tissue_fraction, "fraction of bin area"),
    ):
        ds = replace_dataset(group, name, np.asarray(data, dtype=np.float32))
        ds.attrs.update(common)
        ds.attrs["units"] = units


def _write_masks(
    group: h5py.Group,
    name: str,
    masks: Mapping[str, ArrayLike],
    *,
    origin_um: ArrayLike | None,
    cell_um: float | None,
    records: Mapping[str, RegionRecord] | None = None,
) -> None:
    mg = _fresh_group(group, name)
    if origin_um is not None:
        mg.attrs["origin_um"] = np.asarray(origin_um, dtype=np.float64)
    if cell_um is not None:
        mg.attrs["cell_um"] = float(cell_um)
    mg.attrs["region_order_json"] = json.dumps(list(masks))
    for region, m in masks.items():
        if not region or "/" in region:
            raise ResultsFormatError(f"region name {region!r} cannot be stored (empty or with '/')")
        ds = mg.create_dataset(region, data=np.asarray(m, dtype=bool).astype(np.uint8), compression="gzip")
        if records is not None:
            ds.attrs.update(records.get(region, RegionRecord()).attrs())


def _table_with_kinds(table: Sequence[RegionRow], records: Mapping[str, RegionRecord]) -> list[RegionRow]:
    return [dataclasses.replace(r, kind=records[r.region].kind) if r.region in records else r for r in table]


def _write_table(group: h5py.Group, table: Sequence[RegionRow]) -> None:
    dt = np.dtype([("region", _STR), ("kind", _STR)] + [(k, np.float64) for k in TABLE_COLUMNS[2:]])
    rec = np.array([tuple(getattr(r, k) for k in TABLE_COLUMNS) for r in table], dtype=dt)
    replace_dataset(group, "regions_table", rec)
    replace_dataset(group, "regions_table_csv", region_table_csv(table), dtype=_STR)


def _write_sums(group: h5py.Group, sums: CellSums) -> None:
    gg = _fresh_group(group, "grid")
    gg.attrs["origin_um"] = np.asarray(sums.origin_um, dtype=np.float64)
    gg.attrs["cell_um"] = float(sums.cell_um)
    gg.attrs["tile_pixel_size_um"] = float(sums.tile_pixel_size_um)
    gg.attrs["tile_shape_px"] = np.asarray(sums.tile_shape_px, dtype=np.int64)
    gg.attrs["description"] = (
        "per cell of the analysis grid: full-resolution pixels imaged and in the axon mask, and the "
        "sum of their corrected tracer values (owned shares of overlapping tiles)"
    )
    gg.create_dataset("imaged_px", data=sums.imaged_px, compression="gzip")
    gg.create_dataset("axon_px", data=sums.axon_px, compression="gzip")
    gg.create_dataset("tracer_sum_adu", data=sums.tracer_sum_adu, compression="gzip")
    gg.create_dataset("tile_centres_um", data=np.asarray(sums.tile_centres_um, dtype=np.float64))


def _write_registration(group: h5py.Group, registration: Any) -> None:
    g = _fresh_group(group, "registration")
    g.attrs["description"] = (
        "pairs (i, j) of overlapping tiles, measured offset of j from i minus the planned "
        "offset (x, y: columns, rows of the tiles' pixel frame, full-resolution px), normalised "
        "cross-correlation, used in the solve; correction_um = pixel_affine_um · px (stage µm)"
    )
    affine = getattr(registration, "affine_um", None)
    if affine is not None:
        g.attrs["pixel_affine_um"] = json.dumps(np.asarray(affine, dtype=float).tolist())
    for name in ("pairs", "pair_shift_px", "pair_ncc", "pair_used", "residual_px", "correction_um"):
        g.create_dataset(name, data=getattr(registration, name))


def write_analysis(
    h5_group: h5py.Group,
    *,
    maps: Heatmaps,
    masks: Mapping[str, ArrayLike],
    table: Sequence[RegionRow],
    parameters: Mapping[str, Any],
    accumulator: SectionAccumulator | None = None,
    grid_origin_um: ArrayLike | None = None,
    grid_cell_um: float | None = None,
    mosaic: ArrayLike | None = None,
    mosaic_origin_um: ArrayLike | None = None,
    mosaic_pixel_um: float | None = None,
    channel_names: Sequence[str] = (),
    regions: Mapping[str, RegionRecord] | None = None,
    automatic_masks: Mapping[str, ArrayLike] | None = None,
    regions_json: str | None = None,
    registration: Any | None = None,
    registered_tile_xy_um: ArrayLike | None = None,
    sums: CellSums | None = None,
    tile_flags: TileFlagArrays | None = None,
) -> None:
    """Write a section's whole analysis into its ``analysis/`` group (layout: module docstring).

    The group's earlier content is replaced as a whole, so an offline rerun
    overwrites the live results and parts not given (mosaic, registration, ...)
    are absent afterwards.

    Parameters
    ----------
    h5_group : h5py.Group
        The section's ``analysis`` group, open for writing.
    maps : Heatmaps
    masks : mapping of region name → (rows, cols) bool on the analysis grid
    table : sequence of RegionRow
        Its ``kind`` column is taken from ``regions`` where a region has a record.
    parameters : mapping
        JSON-serialisable parameters used (segmentation settings, bin size, ...).
    accumulator : SectionAccumulator, optional
        Also write its per-cell sums (and take the mask geometry from it).
    grid_origin_um, grid_cell_um : optional
        Geometry of the mask grid when no accumulator is given.
    mosaic : (C, rows, cols) array, optional
        The reduced section mosaic (corrected values), one plane per channel.
    mosaic_origin_um, mosaic_pixel_um, channel_names : optional
        Its top-left corner (stage µm), pixel size (µm) and channel names.
    regions : mapping of region name → RegionRecord, optional
        Provenance of each mask (default: all automatic).
    automatic_masks : mapping of region name → mask, optional
        Automatic masks of regions whose mask in force differs from them.
    regions_json : str, optional
        Axes, epicenter and bins of the automatic regions.
    registration : analysis.registration.Registration, optional
        Measured tile pairs and their solve.
    registered_tile_xy_um : (n_tiles, 2) array, optional
        Registered tile centres (NaN where not registered).
    sums : CellSums, optional
        Per-cell sums to write when no accumulator is given.
    tile_flags : TileFlagArrays, optional
        Per-tile flags (dark offset, saturation).

    Raises
    ------
    ResultsFormatError
        If the group holds an analysis of a newer format version (it is not overwritten).
    """
    _check_writable(h5_group)
    # a whole analysis: nothing of an earlier one survives (stale registration, masks, ...)
    for name in list(h5_group):
        del h5_group[name]
    for name in list(h5_group.attrs):
        del h5_group.attrs[name]
    if accumulator is not None:
        sums = CellSums.from_accumulator(accumulator)
    if sums is not None:
        grid_origin_um, grid_cell_um = sums.origin_um, sums.cell_um
    records = {name: (regions or {}).get(name, RegionRecord()) for name in masks}
    _write_maps(h5_group, maps)
    _write_masks(h5_group, "masks", masks, origin_um=grid_origin_um, cell_um=grid_cell_um, records=records)
    if automatic_masks:
        _write_masks(
            h5_group, "automatic_masks", automatic_masks, origin_um=grid_origin_um, cell_um=grid_cell_um
        )
    _write_table(h5_group, _table_with_kinds(table, records))
    replace_dataset(h5_group, "parameters_json", json.dumps(dict(parameters), sort_keys=True), dtype=_STR)
    history = [
        {"region": name, "action": "set", **dataclasses.asdict(rec)}
        for name, rec in records.items()
        if rec.kind != "automatic"
    ]
    for entry in history:
        entry.pop("geometry_um", None)
    replace_dataset(h5_group, "region_history_json", json.dumps(history), dtype=_STR)
    if sums is not None:
        _write_sums(h5_group, sums)
    if mosaic is not None:
        if mosaic_origin_um is None or mosaic_pixel_um is None:
            raise ValueError("a mosaic needs mosaic_origin_um and mosaic_pixel_um")
        ds = replace_dataset(h5_group, "mosaic", np.asarray(mosaic, dtype=np.float32), compression="gzip")
        ds.attrs["origin_um"] = np.asarray(mosaic_origin_um, dtype=np.float64)
        ds.attrs["pixel_um"] = float(mosaic_pixel_um)
        ds.attrs["channel_names"] = json.dumps(list(channel_names))
        ds.attrs["units"] = "corrected ADU (dark offset subtracted), mean over each mosaic pixel"
    if regions_json is not None:
        replace_dataset(h5_group, "regions_json", regions_json, dtype=_STR)
    if registration is not None:
        _write_registration(h5_group, registration)
    if registered_tile_xy_um is not None:
        ds = replace_dataset(
            h5_group, "registered_tile_xy_um", np.asarray(registered_tile_xy_um, dtype=np.float64)
        )
        ds.attrs["description"] = (
            "registered stage position (x, y, µm) of each tile centre; NaN where not analysed "
            "or registration is off"
        )
    if tile_flags is not None:
        write_tile_flags(h5_group, tile_flags)
    _stamp(h5_group)


def write_region_results(
    h5_group: h5py.Group,
    *,
    maps: Heatmaps,
    masks: Mapping[str, ArrayLike],
    regions: Mapping[str, RegionRecord],
    automatic_masks: Mapping[str, ArrayLike],
    table: Sequence[RegionRow],
    sums: CellSums,
    history: Iterable[Mapping[str, Any]] = (),
) -> None:
    """Replace a section's regions, region table and maps (after region edits); keep the rest.

    The mosaic, registration and parameters stay as they are. A version-1 group
    is brought to the current version (its per-cell sums are rewritten as pixel counts).

    Parameters
    ----------
    h5_group : h5py.Group
        The section's ``analysis`` group holding an analysis, open for writing.
    maps, masks, regions, automatic_masks, table : the new results (see :func:`write_analysis`)
    sums : CellSums
        The per-cell sums they were computed from.
    history : iterable of mapping
        Region changes to append to ``region_history_json``.

    Raises
    ------
    ResultsFormatError
        If the group holds no analysis, or one of a newer format version.
    """
    version = analysis_format_version(h5_group)
    if version is None:
        raise ResultsFormatError(
            f"{_where(h5_group)} holds no analysis to update; run cordscope analyze first"
        )
    origin, cell = sums.origin_um, sums.cell_um
    records = {name: regions.get(name, RegionRecord()) for name in masks}
    _write_maps(h5_group, maps)
    _write_masks(h5_group, "masks", masks, origin_um=origin, cell_um=cell, records=records)
    if automatic_masks:
        _write_masks(h5_group, "automatic_masks", automatic_masks, origin_um=origin, cell_um=cell)
    elif "automatic_masks" in h5_group:
        del h5_group["automatic_masks"]
    _write_table(h5_group, _table_with_kinds(table, records))
    old = _read_history(h5_group)
    new = [{k: v for k, v in dict(e).items() if k != "geometry_um"} for e in history]
    replace_dataset(h5_group, "region_history_json", json.dumps(old + new), dtype=_STR)
    if version < 2 or "grid" not in h5_group or "imaged_px" not in h5_group["grid"]:
        _write_sums(h5_group, sums)
    _stamp(h5_group)


# ---------------------------------------------------------------- reading


def _read_history(group: h5py.Group) -> list[dict[str, Any]]:
    if "region_history_json" not in group:
        return []
    return list(json.loads(_text(group["region_history_json"][()])))


def _read_masks(mg: h5py.Group) -> dict[str, BoolArray]:
    order = json.loads(_text(mg.attrs["region_order_json"])) if "region_order_json" in mg.attrs else list(mg)
    return {name: mg[name][()].astype(bool) for name in order if name in mg}


def _read_sums(group: h5py.Group, version: int) -> CellSums | None:
    if "grid" not in group:
        return None
    gg = group["grid"]
    origin = np.asarray(gg.attrs["origin_um"], dtype=np.float64)
    cell = float(gg.attrs["cell_um"])
    if version >= 2:
        shape = tuple(int(v) for v in gg.attrs["tile_shape_px"])
        return CellSums(
            imaged_px=np.asarray(gg["imaged_px"][()], dtype=np.float64),
            axon_px=np.asarray(gg["axon_px"][()], dtype=np.float64),
            tracer_sum_adu=np.asarray(gg["tracer_sum_adu"][()], dtype=np.float64),
            origin_um=origin,
            cell_um=cell,
            tile_pixel_size_um=float(gg.attrs["tile_pixel_size_um"]),
            tile_centres_um=np.asarray(gg["tile_centres_um"][()], dtype=np.float64),
            tile_shape_px=(shape[0], shape[1]),
        )
    # version 1 kept areas; the pixel size and tile layout are the section's (the group's parent)
    section = group.parent
    if "pixel_size_um" not in section.attrs or "tile_xy_um" not in section or "tiles" not in section:
        return None
    p = float(section.attrs["pixel_size_um"])
    tiles_shape = section["tiles"].shape
    return CellSums(
        imaged_px=np.asarray(gg["imaged_area_um2"][()], dtype=np.float64) / p**2,
        axon_px=np.asarray(gg["axon_area_um2"][()], dtype=np.float64) / p**2,
        tracer_sum_adu=np.asarray(gg["tracer_sum"][()], dtype=np.float64),
        origin_um=origin,
        cell_um=cell,
        tile_pixel_size_um=p,
        tile_centres_um=np.asarray(section["tile_xy_um"][()], dtype=np.float64),
        tile_shape_px=(int(tiles_shape[3]), int(tiles_shape[4])),
    )


def _plan_polygon_regions(regions_json: str | None) -> set[str]:
    if regions_json is None:
        return set()
    return set(json.loads(regions_json).get("user_regions", []))


def _table_row(record: np.void, names: Sequence[str], records: Mapping[str, RegionRecord]) -> RegionRow:
    region = _text(record["region"])
    # version 1 tables have no kind column: the masks' records say it
    kind = _text(record["kind"]) if "kind" in names else records.get(region, RegionRecord()).kind
    values = {k: float(record[k]) for k in REGION_COLUMNS[1:]}
    # tables written before adaptive passes have no hires column: nothing was imaged at a higher resolution
    hires = float(record["imaged_at_hires_fraction"]) if "imaged_at_hires_fraction" in names else 0.0
    return RegionRow(region=region, kind=kind, imaged_at_hires_fraction=hires, **values)


def read_region_table(h5_group: h5py.Group) -> list[RegionRow]:
    """Only a section's region table (with kinds), from its ``analysis/`` group.

    Raises
    ------
    ResultsFormatError
        If the group holds no analysis, is another format, or is of a newer version.
    """
    version = analysis_format_version(h5_group)
    if version is None:
        raise ResultsFormatError(f"{_where(h5_group)} holds no analysis; run cordscope analyze first")
    rec = h5_group["regions_table"][()]
    names = rec.dtype.names or ()
    records: dict[str, RegionRecord] = {}
    if "kind" not in names:  # version 1: the masks' records (plan polygons) give the kind
        regions_json = _text(h5_group["regions_json"][()]) if "regions_json" in h5_group else None
        records = {n: RegionRecord(kind="drawn", source="plan") for n in _plan_polygon_regions(regions_json)}
    return [_table_row(r, names, records) for r in rec]


def read_analysis(h5_group: h5py.Group, *, with_mosaic: bool = True) -> SavedAnalysis:
    """Read a section's ``analysis/`` group (any version up to :data:`ANALYSIS_FORMAT_VERSION`).

    Parameters
    ----------
    h5_group : h5py.Group
    with_mosaic : bool
        Also read the mosaic (the largest dataset; region edits do not need it).

    Raises
    ------
    ResultsFormatError
        If the group holds no analysis, is another format, or is of a newer version.
    """
    version = analysis_format_version(h5_group)
    if version is None:
        raise ResultsFormatError(f"{_where(h5_group)} holds no analysis; run cordscope analyze first")
    pct = h5_group["pct_axonal_area_map"]
    maps = Heatmaps(
        pct_axonal_area=pct[()],
        mean_tracer=h5_group["mean_tracer_map"][()],
        imaged_tissue_fraction=h5_group["imaged_tissue_fraction_map"][()],
        origin_um=np.asarray(pct.attrs["origin_um"], dtype=np.float64),
        bin_um=float(pct.attrs["bin_um"]),
        cells_per_bin=0,
    )
    mg = h5_group["masks"]
    masks = _read_masks(mg)
    origin = mg.attrs.get("origin_um")
    cell = mg.attrs.get("cell_um")
    if cell is not None:
        maps = dataclasses.replace(maps, cells_per_bin=max(1, round(maps.bin_um / float(cell))))
    regions_json = _text(h5_group["regions_json"][()]) if "regions_json" in h5_group else None
    drawn_in_plan = _plan_polygon_regions(regions_json)
    records = {
        name: RegionRecord.from_attrs(
            mg[name].attrs,
            default=RegionRecord(kind="drawn", source="plan") if name in drawn_in_plan else None,
        )
        for name in masks
    }
    automatic = {name: m for name, m in masks.items() if records[name].kind == "automatic"}
    if "automatic_masks" in h5_group:
        automatic.update(_read_masks(h5_group["automatic_masks"]))
    rec = h5_group["regions_table"][()]
    names = rec.dtype.names or ()
    table = [_table_row(r, names, records) for r in rec]
    # version 1 stored no mask order (HDF5 lists names alphabetically): the table's order is the one
    order = [r.region for r in table if r.region in masks] + [
        n for n in masks if n not in {r.region for r in table}
    ]
    masks = {name: masks[name] for name in order}
    records = {name: records[name] for name in order}
    params = json.loads(_text(h5_group["parameters_json"][()]))
    mosaic = mosaic_origin = mosaic_pixel = None
    channel_names: tuple[str, ...] = ()
    if "mosaic" in h5_group:
        ds = h5_group["mosaic"]
        mosaic = ds[()] if with_mosaic else None
        mosaic_origin = np.asarray(ds.attrs["origin_um"], dtype=np.float64)
        mosaic_pixel = float(ds.attrs["pixel_um"])
        channel_names = tuple(json.loads(_text(ds.attrs.get("channel_names", "[]"))))
    return SavedAnalysis(
        maps=maps,
        masks=masks,
        mask_origin_um=None if origin is None else np.asarray(origin, dtype=np.float64),
        mask_cell_um=None if cell is None else float(cell),
        table=table,
        parameters=params,
        mosaic=mosaic,
        mosaic_origin_um=mosaic_origin,
        mosaic_pixel_um=mosaic_pixel,
        channel_names=channel_names,
        format_version=version,
        regions=records,
        automatic_masks=automatic,
        sums=_read_sums(h5_group, version),
        regions_json=regions_json,
        registered_tile_xy_um=read_registered_tile_xy_um(h5_group),
        region_history=_read_history(h5_group),
    )


def read_registered_tile_xy_um(h5_group: h5py.Group | None) -> F64 | None:
    """Registered tile centres ``(n_tiles, 2)`` µm (NaN where not registered), None if not stored.

    Raises
    ------
    ResultsFormatError
        If the group is of another format or a newer version.
    """
    if h5_group is None or "registered_tile_xy_um" not in h5_group:
        return None
    if "format" in h5_group.attrs:
        analysis_format_version(h5_group)
    return np.asarray(h5_group["registered_tile_xy_um"][()], dtype=np.float64)


# ---------------------------------------------------------------- CSV


def region_table_csv(rows: Sequence[RegionRow]) -> str:
    """A section's region table as CSV text (full precision; the ``regions_table_csv`` dataset)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    for r in rows:
        writer.writerow([_full(getattr(r, k)) for k in TABLE_COLUMNS])
    return buf.getvalue()


def _full(v: object) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return str(v)


def _rounded(v: float, digits: int) -> str:
    if not math.isfinite(v):
        return ""
    text = f"{round(v, digits):.{digits}f}"
    return "0" + text[2:] if text.startswith("-0") and float(text) == 0.0 else text


def _csv_values(row: RegionRow) -> dict[str, float]:
    return {
        "area_um2": row.area_um2,
        "axon_area_um2": row.axon_area_um2,
        "pct_axonal_area": row.pct_axonal_area,
        "mean_tracer_intensity_adu": row.mean_tracer_intensity,
        "imaged_pct": 100.0 * row.imaged_fraction,
        "imaged_at_hires_pct": 100.0 * row.imaged_at_hires_fraction,
    }


def write_region_csv(
    path: str | os.PathLike[str],
    section_rows: Mapping[str, Sequence[RegionRow]],
    *,
    section_attrs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write the region tables of one or more sections to one CSV (columns :data:`CSV_COLUMNS`).

    Every numeric column name carries its unit; values are rounded to
    :data:`CSV_DIGITS` decimals (areas 0.1 µm², % axonal area 0.0001 percentage
    points, mean tracer intensity 0.01 ADU, imaged fraction 0.01 %). NaN is an
    empty field, and so is a label the section does not have.

    Parameters
    ----------
    path : path of the CSV (e.g. :func:`region_csv_path` of the scan)
    section_rows : mapping of section id → its region rows (each with its ``kind``)
    section_attrs : mapping of section id → section attributes (``animal``, ``group``, ``level``)

    Returns
    -------
    Path
        The written file.
    """
    out = Path(path)
    attrs_of = section_attrs or {}
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for section_id, rows in section_rows.items():
            attrs = attrs_of.get(section_id, {})
            labels = [("" if attrs.get(k) is None else str(attrs[k])) for k in ("animal", "group", "level")]
            for r in rows:
                values = _csv_values(r)
                writer.writerow(
                    [
                        section_id,
                        *labels,
                        r.region,
                        r.kind,
                        *(_rounded(values[k], CSV_DIGITS[k]) for k in CSV_COLUMNS[6:]),
                    ]
                )
    return out


def region_csv_path(scan_path: str | os.PathLike[str]) -> Path:
    """The region CSV written beside a scan file: ``<scan>.regions.csv``."""
    p = Path(scan_path)
    return p.with_name(p.stem + ".regions.csv")


def write_scan_region_csv(
    scan_path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> Path:
    """Write every analysed section's region table of a scan file to one CSV, with its labels.

    The numbers are those of the file's ``analysis/`` groups (nothing recomputed),
    with each section's animal, group and level.

    Parameters
    ----------
    scan_path : path of a cordscope-scan file
    out : CSV file to write; default :func:`region_csv_path` beside the scan

    Returns
    -------
    Path
        The written CSV (a header only when no section is analysed).
    """
    from acquisition.storage import ScanFile

    rows: dict[str, list[RegionRow]] = {}
    attrs: dict[str, dict[str, Any]] = {}
    with ScanFile.open(scan_path) as scan:
        for sid in scan.section_ids:
            section = scan.section(sid)
            group = section.analysis_group
            if has_analysis(group):
                assert group is not None
                rows[sid] = read_region_table(group)
                attrs[sid] = section.attrs
    return write_region_csv(out or region_csv_path(scan_path), rows, section_attrs=attrs)
