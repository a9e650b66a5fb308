"""Regions corrected after the scan: edits with provenance, and re-analysis from the stored sums.

A section's regions are masks on its analysis grid (one bool per cell; a cell
belongs to a region when its centre lies inside it). Each mask in force has a
:class:`~analysis.results_format.RegionRecord`: automatic, edited (an automatic
outline moved by hand), drawn, or imported (e.g. from QuPath), with who, when and
the polygon (stage µm) when there is one.

:class:`SectionRegionSet` is the state a GUI or a script edits: apply
:class:`RegionEdit` / :class:`RegionReset` to get a new set, then
:func:`reanalyse` computes the region table and heatmaps from the section's
stored per-cell sums (:class:`~analysis.results_format.CellSums`): no tile is
read or segmented, so it takes milliseconds. :func:`apply_region_edits` does it
for a scan file and writes the results back.

Rules that keep the regions consistent after an edit
----------------------------------------------------
* Every region but ``section`` is clipped to the ``section`` mask in force (as
  plan polygons are), so a territory drawn past the pia counts no glass.
* An automatic ``white_matter`` follows an edited ``section`` or ``gray_matter``
  (``section & ~gray_matter``).
* The automatic halves (``left``/``right``, ``dorsal``/``ventral``) and
  rostro-caudal bins are recomputed on an edited ``section`` from the section's
  stored axes (``regions_json``), so they grow with it; other automatic regions
  (the rubrospinal territory) are the automatic mask clipped to the section and,
  when ``gray_matter`` is edited, kept out of it.
* Resetting a region brings back its automatic mask (kept in the file).
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from acquisition.errors import CordScopeError
from analysis.maps import Heatmaps, RegionRow, heatmaps, region_table
from analysis.results_format import (
    CellSums,
    RegionRecord,
    SavedAnalysis,
    has_analysis,
    read_analysis,
    write_region_results,
    write_scan_region_csv,
)

__all__ = [
    "GridGeometry",
    "Reanalysis",
    "RegionEdit",
    "RegionEditError",
    "RegionReset",
    "SectionRegionSet",
    "analysis_records",
    "analyze_keeping_regions",
    "apply_region_edits",
    "current_user",
    "hand_made_edits",
    "mask_geometry_um",
    "now_iso",
    "polygonal",
    "rasterize_geometry_um",
    "reanalyse",
    "reanalyse_section",
]

logger = logging.getLogger(__name__)

BoolArray = NDArray[np.bool_]
EditKind = Literal["edited", "drawn", "imported"]

#: Regions recomputed from the section's axes when the section is edited.
_HALVES = ("left", "right", "dorsal", "ventral")


class RegionEditError(CordScopeError):
    """A region edit cannot be applied; the message says which region and why."""


def current_user() -> str:
    """The operating system's user name (``"unknown"`` where the system has none)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # a container without a passwd entry or login variables: provenance still needs a value
        logger.info("no user name from the operating system; recording region edits as 'unknown'")
        return "unknown"


def now_iso() -> str:
    """The local time now, ISO 8601 with its UTC offset, to the second."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------- geometry


@dataclasses.dataclass(frozen=True)
class GridGeometry:
    """The analysis grid of a section.

    Attributes
    ----------
    origin_um : (2,) float64
        Stage (x, y) of the grid's top-left corner.
    cell_um : float
        Cell size (µm); cell ``(r, c)`` is centred at ``origin + ((c + 0.5)·cell, (r + 0.5)·cell)``.
    shape : (rows, cols)
    """

    origin_um: NDArray[np.float64]
    cell_um: float
    shape: tuple[int, int]

    def cell_centres_um(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Stage x of each column's centres ``(1, cols)`` and y of each row's ``(rows, 1)``."""
        rows, cols = self.shape
        x = self.origin_um[0] + (np.arange(cols) + 0.5) * self.cell_um
        y = self.origin_um[1] + (np.arange(rows) + 0.5) * self.cell_um
        return x[None, :], y[:, None]


def polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """The polygonal part of a geometry, made valid (self-intersections of hand drawing resolved).

    Returns an empty Polygon when nothing polygonal is left (points, lines).
    """
    geom = shapely.make_valid(geometry) if not geometry.is_valid else geometry
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _as_geometry(geometry: Mapping[str, Any] | BaseGeometry) -> BaseGeometry:
    return geometry if isinstance(geometry, BaseGeometry) else shape(geometry)


def rasterize_geometry_um(geometry: Mapping[str, Any] | BaseGeometry, *, grid: GridGeometry) -> BoolArray:
    """Cells of the grid whose centre lies inside a stage polygon (holes and multipolygons too).

    Parameters
    ----------
    geometry : GeoJSON geometry mapping or shapely geometry, in stage µm
        Its polygonal parts count; a centre exactly on an edge is outside.
    grid : GridGeometry

    Returns
    -------
    (rows, cols) bool
    """
    geom = polygonal(_as_geometry(geometry))
    out = np.zeros(grid.shape, dtype=bool)
    if geom.is_empty:
        return out
    x0, y0, x1, y1 = geom.bounds
    p, o = grid.cell_um, grid.origin_um
    # only the cells whose centre can be inside the bounding box are tested
    c0 = max(0, int(np.floor((x0 - o[0]) / p - 0.5)))
    c1 = min(grid.shape[1], int(np.ceil((x1 - o[0]) / p - 0.5)) + 1)
    r0 = max(0, int(np.floor((y0 - o[1]) / p - 0.5)))
    r1 = min(grid.shape[0], int(np.ceil((y1 - o[1]) / p - 0.5)) + 1)
    if c0 >= c1 or r0 >= r1:
        return out
    x = o[0] + (np.arange(c0, c1) + 0.5) * p
    y = o[1] + (np.arange(r0, r1) + 0.5) * p
    shapely.prepare(geom)
    out[r0:r1, c0:c1] = shapely.contains_xy(geom, x[None, :], y[:, None])
    return out


def mask_geometry_um(
    mask: ArrayLike, *, grid: GridGeometry, simplify_um: float = 0.0
) -> dict[str, Any] | None:
    """Outline of a cell mask in stage µm: the union of its cells, holes included (GeoJSON geometry).

    Parameters
    ----------
    mask : (rows, cols) bool on the grid
    grid : GridGeometry
    simplify_um : float
        Douglas-Peucker tolerance (µm); 0 keeps the exact cell outline, whose
        rasterisation (:func:`rasterize_geometry_um`) gives the mask back exactly.
        Half a cell smooths the staircase and moves no cell centre across by more than a cell.

    Returns
    -------
    dict or None
        A ``Polygon`` or ``MultiPolygon`` mapping (exterior rings counter-clockwise in x-y, lists of
        [x, y]); None for an empty mask.
    """
    m = np.asarray(mask, dtype=bool)
    if m.shape != grid.shape:
        raise ValueError(f"mask shape {m.shape} differs from the grid {grid.shape}")
    if not m.any():
        return None
    padded = np.zeros((m.shape[0], m.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = m
    steps = np.diff(padded, axis=1)
    r_start, c_start = np.nonzero(steps == 1)
    r_end, c_end = np.nonzero(steps == -1)  # same row-major order: one end per start
    p, o = grid.cell_um, grid.origin_um
    boxes = shapely.box(o[0] + c_start * p, o[1] + r_start * p, o[0] + c_end * p, o[1] + (r_end + 1) * p)
    # row runs of neighbouring rows share only parts of edges (not a "coverage"): a full union
    geom = shapely.union_all(boxes).simplify(float(simplify_um), preserve_topology=True)
    geom = shapely.orient_polygons(geom)
    return _plain(mapping(geom))


def _plain(value: Any) -> Any:
    """Tuples of a shapely mapping as lists (JSON-ready, comparable with json.loads output)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.floating):
        return float(value)
    return value


def analysis_records(
    region_names: Sequence[str],
    *,
    plan_polygons_um: Mapping[str, ArrayLike] | None = None,
    when_iso: str | None = None,
) -> dict[str, RegionRecord]:
    """Records of a fresh analysis: automatic regions, and those given as plan polygons ``drawn``.

    Parameters
    ----------
    region_names : the regions of the analysis
    plan_polygons_um : mapping of region name → (N, 2) stage polygon (the plan's ``region_polygons_um``)
    when_iso : time of the analysis (default now)
    """
    when = when_iso or now_iso()
    polygons = plan_polygons_um or {}
    out = {}
    for name in region_names:
        if name in polygons:
            ring = [[float(x), float(y)] for x, y in np.asarray(polygons[name], dtype=np.float64)]
            geometry = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
            out[name] = RegionRecord(kind="drawn", when_iso=when, source="plan", geometry_um=geometry)
        else:
            out[name] = RegionRecord(kind="automatic", when_iso=when)
    return out


# ---------------------------------------------------------------- edits


@dataclasses.dataclass(frozen=True)
class RegionEdit:
    """A new mask for one region, from a polygon (stage µm) or a brush mask on the grid.

    Attributes
    ----------
    region : str
        Region name (``section``, ``white_matter``, ``rubrospinal_territory``, ``rc_-500_0``, ...;
        a new name adds a region).
    kind : {"edited", "drawn", "imported"}
    geometry_um : dict, optional
        GeoJSON ``Polygon`` / ``MultiPolygon`` in stage µm (holes allowed).
    mask : (rows, cols) bool, optional
        A mask on the analysis grid (brush edits), when there is no polygon.
    who : str
        User name; default :func:`current_user`.
    when_iso : str
        ISO time; default now.
    source : str
        Where the edit came from (``"gui"``, a GeoJSON file name, ...).
    """

    region: str
    kind: EditKind
    geometry_um: dict[str, Any] | None = None
    mask: BoolArray | None = None
    who: str = ""
    when_iso: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("edited", "drawn", "imported"):
            raise RegionEditError(f"region {self.region!r}: an edit's kind must be edited, drawn or imported")
        if (self.geometry_um is None) == (self.mask is None):
            raise RegionEditError(f"region {self.region!r}: give an edit either a polygon or a mask")
        if not self.region or "/" in self.region:
            raise RegionEditError(f"region name {self.region!r} is empty or holds '/'")


@dataclasses.dataclass(frozen=True)
class RegionReset:
    """Bring a region back to its automatic mask."""

    region: str
    who: str = ""
    when_iso: str = ""
    source: str = ""


Edit = RegionEdit | RegionReset


@dataclasses.dataclass(frozen=True)
class SectionRegionSet:
    """A section's regions: the masks in force, their provenance, the automatic masks.

    Attributes
    ----------
    grid : GridGeometry
    masks : dict of region name → (rows, cols) bool
        The masks in force, in table order.
    records : dict of region name → RegionRecord
    automatic_masks : dict of region name → (rows, cols) bool
        What each region is without edits (for resets and for the derived regions).
    regions_json : str or None
        The automatic regions' axes, epicenter and bins (to recompute halves and bins).
    """

    grid: GridGeometry
    masks: dict[str, BoolArray]
    records: dict[str, RegionRecord]
    automatic_masks: dict[str, BoolArray]
    regions_json: str | None = None

    @classmethod
    def from_saved(cls, saved: SavedAnalysis) -> SectionRegionSet:
        """The regions stored with a section's analysis.

        Raises
        ------
        RegionEditError
            If the analysis has no grid geometry (an analysis written without its sums).
        """
        if saved.mask_origin_um is None or saved.mask_cell_um is None or not saved.masks:
            raise RegionEditError("the saved analysis has no region grid; run cordscope analyze again")
        shape = next(iter(saved.masks.values())).shape
        grid = GridGeometry(saved.mask_origin_um, saved.mask_cell_um, (int(shape[0]), int(shape[1])))
        return cls(
            grid=grid,
            masks=dict(saved.masks),
            records=dict(saved.regions) or {name: RegionRecord() for name in saved.masks},
            automatic_masks=dict(saved.automatic_masks),
            regions_json=saved.regions_json,
        )

    def outline_um(self, region: str, *, simplify_um: float = 0.0) -> dict[str, Any] | None:
        """A region's outline in stage µm: its polygon as drawn/imported, else its mask's outline."""
        record = self.records.get(region, RegionRecord())
        if record.geometry_um is not None:
            return record.geometry_um
        return mask_geometry_um(self.masks[region], grid=self.grid, simplify_um=simplify_um)

    def stored_edits(self) -> list[RegionEdit]:
        """The non-automatic regions as edits (to apply them again after a full re-analysis)."""
        out = []
        for name, rec in self.records.items():
            if rec.kind == "automatic":
                continue
            out.append(
                RegionEdit(
                    region=name,
                    kind=rec.kind,
                    geometry_um=rec.geometry_um,
                    mask=None if rec.geometry_um is not None else self.masks[name],
                    who=rec.who,
                    when_iso=rec.when_iso,
                    source=rec.source,
                )
            )
        return out

    def apply(self, edits: Sequence[Edit]) -> tuple[SectionRegionSet, list[dict[str, Any]]]:
        """Apply edits in order; return the new set and the history entries they make.

        Raises
        ------
        RegionEditError
            A mask of the wrong shape, a polygon covering no cell centre, a reset of a
            region that has no automatic mask.
        """
        records = dict(self.records)
        raw: dict[str, BoolArray] = {n: m for n, m in self.masks.items() if records[n].kind != "automatic"}
        if any(e.region == "section" for e in edits):
            # a region clipped by the section grows back with it: its polygon is rasterised again
            # (only then, so that other edits never move a cell of a region they do not touch)
            for name in raw:
                geometry = records[name].geometry_um
                if name != "section" and geometry is not None:
                    raw[name] = rasterize_geometry_um(geometry, grid=self.grid)
        order = list(self.masks)
        history: list[dict[str, Any]] = []
        for edit in edits:
            who = edit.who or current_user()
            when = edit.when_iso or now_iso()
            if isinstance(edit, RegionReset):
                if edit.region not in self.automatic_masks:
                    raise RegionEditError(
                        f"region {edit.region!r} has no automatic mask to reset to "
                        "(it was drawn in the plan or added by hand)"
                    )
                records[edit.region] = RegionRecord(kind="automatic", when_iso=when, source=edit.source)
                raw.pop(edit.region, None)
                history.append(
                    {"region": edit.region, "action": "reset", "kind": "automatic", "who": who,
                     "when_iso": when, "source": edit.source}
                )  # fmt: skip
                continue
            if edit.geometry_um is not None:
                mask = rasterize_geometry_um(edit.geometry_um, grid=self.grid)
            else:
                mask = np.asarray(edit.mask, dtype=bool)
                if mask.shape != self.grid.shape:
                    raise RegionEditError(
                        f"region {edit.region!r}: mask shape {mask.shape} differs from the grid "
                        f"{self.grid.shape}"
                    )
            if not mask.any():
                raise RegionEditError(
                    f"region {edit.region!r}: the new outline covers no cell of the section's grid "
                    "(wrong section, or pixel coordinates given as stage µm?)"
                )
            raw[edit.region] = mask
            records[edit.region] = RegionRecord(
                kind=edit.kind, who=who, when_iso=when, source=edit.source, geometry_um=edit.geometry_um
            )
            if edit.region not in order:
                order.append(edit.region)
            history.append(
                {"region": edit.region, "action": "set", "kind": edit.kind, "who": who,
                 "when_iso": when, "source": edit.source}
            )  # fmt: skip
        masks = self._derive(order, records, raw)
        automatic = dict(self.automatic_masks)
        for name, mask in self.masks.items():
            if name not in automatic and self.records[name].kind == "automatic":
                automatic[name] = mask
        return (
            dataclasses.replace(self, masks=masks, records=records, automatic_masks=automatic),
            history,
        )

    def automatic_to_keep(self) -> dict[str, BoolArray]:
        """Automatic masks the file must keep: those that differ from the mask in force."""
        return {
            n: m
            for n, m in self.automatic_masks.items()
            if n not in self.masks or not np.array_equal(m, self.masks[n])
        }

    # ------------------------------------------------------------ derived regions

    def _derive(
        self, order: Sequence[str], records: Mapping[str, RegionRecord], raw: Mapping[str, BoolArray]
    ) -> dict[str, BoolArray]:
        def edited(name: str) -> bool:
            return name in raw

        def automatic(name: str) -> BoolArray:
            return self.automatic_masks.get(name, self.masks.get(name, np.zeros(self.grid.shape, bool)))

        section = raw["section"] if edited("section") else automatic("section")
        gray = raw["gray_matter"] & section if edited("gray_matter") else automatic("gray_matter") & section
        halves = self._halves_and_bins(section) if edited("section") else {}
        out: dict[str, BoolArray] = {}
        for name in order:
            if name == "section":
                out[name] = section
            elif edited(name):
                out[name] = raw[name] & section
            elif name == "white_matter" and (edited("section") or edited("gray_matter")):
                out[name] = section & ~gray
            elif name in halves:
                out[name] = halves[name]
            else:
                mask = automatic(name) & section
                if edited("gray_matter") and name == "rubrospinal_territory":
                    mask &= ~gray
                out[name] = mask
        return out

    def _halves_and_bins(self, tissue: BoolArray) -> dict[str, BoolArray]:
        """Halves and rostro-caudal bins of ``tissue`` from the stored axes (as analysis.regions)."""
        if self.regions_json is None:
            return {}
        d = json.loads(self.regions_json)
        axes = d["axes"]
        x, y = self.grid.cell_centres_um()
        mx, my = axes["midline_point_um"]
        rx, ry = axes["right_direction"]
        side = (x - mx) * rx + (y - my) * ry
        out = {"left": tissue & (side < 0), "right": tissue & (side >= 0)}
        if axes.get("ventral_direction") is not None:
            vx, vy = axes["ventral_direction"]
            dv = (x - mx) * vx + (y - my) * vy
            out["dorsal"] = tissue & (dv < 0)
            out["ventral"] = tissue & (dv >= 0)
        epi, rostral = d.get("epicenter_um"), axes.get("rostral_direction")
        if epi is not None and rostral is not None:
            s = -((x - epi[0]) * rostral[0] + (y - epi[1]) * rostral[1])
            for a, b in d.get("bin_edges_um", []):
                out[f"rc_{round(a)}_{round(b)}"] = tissue & (s >= a) & (s < b)
        return {k: np.broadcast_to(v, self.grid.shape).copy() for k, v in out.items()}


# ---------------------------------------------------------------- re-analysis


@dataclasses.dataclass(frozen=True)
class Reanalysis:
    """A section's results recomputed for new regions.

    Attributes
    ----------
    regions : SectionRegionSet
    table : list of RegionRow
        With each region's kind.
    maps : Heatmaps
    history : list of dict
        The region changes that led here.
    elapsed_s : float
        Time the recomputation (edits, table, maps) took.
    """

    regions: SectionRegionSet
    table: list[RegionRow]
    maps: Heatmaps
    history: list[dict[str, Any]]
    elapsed_s: float


def reanalyse(
    sums: CellSums, regions: SectionRegionSet, *, bin_um: float
) -> tuple[list[RegionRow], Heatmaps]:
    """Region table and heatmaps from per-cell sums and region masks (no tile read or segmented).

    Parameters
    ----------
    sums : CellSums
        The section's per-cell sums (``SavedAnalysis.sums``).
    regions : SectionRegionSet
        Masks on the same grid; ``section`` restricts the heatmaps to the tissue.
    bin_um : float
        Requested heatmap bin size (µm).

    Returns
    -------
    table : list of RegionRow
        One row per mask, with its kind.
    maps : Heatmaps
    """
    if sums.shape != regions.grid.shape:
        raise RegionEditError(f"region grid {regions.grid.shape} differs from the sums' grid {sums.shape}")
    acc = sums.accumulator()
    rows = region_table(acc, regions.masks)
    table = [dataclasses.replace(r, kind=regions.records.get(r.region, RegionRecord()).kind) for r in rows]
    maps = heatmaps(acc, bin_um=bin_um, tissue_mask=regions.masks.get("section"))
    return table, maps


def reanalyse_section(saved: SavedAnalysis, edits: Sequence[Edit]) -> Reanalysis:
    """Apply edits to a section's saved regions and recompute its table and maps from its sums.

    Raises
    ------
    RegionEditError
        If the saved analysis has no per-cell sums, or an edit cannot be applied.
    """
    if saved.sums is None:
        raise RegionEditError("the saved analysis has no per-cell sums to re-analyse; run cordscope analyze")
    t0 = time.perf_counter()
    regions, history = SectionRegionSet.from_saved(saved).apply(edits)
    table, maps = reanalyse(saved.sums, regions, bin_um=saved.bin_um)
    return Reanalysis(regions, table, maps, history, time.perf_counter() - t0)


def apply_region_edits(
    scan_path: str | os.PathLike[str], edits: Mapping[str, Sequence[Edit]]
) -> dict[str, Reanalysis]:
    """Apply region edits to sections of a scan file, re-analyse them, write the results and the CSV.

    Each edited section's ``analysis/`` group gets its new masks (with who/when/kind),
    table and maps; mosaic and sums stay. The region CSV beside the scan is rewritten.

    Parameters
    ----------
    scan_path : path of an analysed scan file (not being written)
    edits : mapping of section id → edits, applied in order

    Returns
    -------
    dict of section id → Reanalysis

    Raises
    ------
    RegionEditError
        An unknown or unanalysed section, or an edit that cannot be applied (nothing is written then).
    """
    import h5py

    from acquisition.storage import ScanFile

    path = Path(scan_path)
    results: dict[str, Reanalysis] = {}
    with ScanFile.open(path) as scan:  # checks the scan format first
        known = set(scan.section_ids)
    unknown = sorted(set(edits) - known)
    if unknown:
        raise RegionEditError(
            f"{path.name} has no section {', '.join(unknown)} (it has {', '.join(sorted(known))})"
        )
    sums: dict[str, CellSums] = {}
    with h5py.File(path, "r+") as f:
        # every section is re-analysed before anything is written: one bad edit changes nothing
        for sid, section_edits in edits.items():
            group = f["sections"][sid].get("analysis")
            if not has_analysis(group):
                raise RegionEditError(
                    f"section {sid} of {path.name} has no analysis; run cordscope analyze first"
                )
            saved = read_analysis(group, with_mosaic=False)
            try:
                results[sid] = reanalyse_section(saved, section_edits)
            except RegionEditError as e:
                raise RegionEditError(f"section {sid}: {e}") from None
            assert saved.sums is not None
            sums[sid] = saved.sums
        for sid, result in results.items():
            write_region_results(
                f["sections"][sid]["analysis"],
                maps=result.maps,
                masks=result.regions.masks,
                regions=result.regions.records,
                automatic_masks=result.regions.automatic_to_keep(),
                table=result.table,
                sums=sums[sid],
                history=result.history,
            )
    write_scan_region_csv(path)
    return results


def hand_made_edits(saved: Any) -> list[Edit]:
    """A section's regions edited, drawn or imported by hand, as edits that a new analysis grid takes.

    Regions drawn in the plan are left out (the analysis draws them itself); a
    painted mask becomes the exact outline of its cells (polygons in stage µm).
    """
    if saved is None or all(r.kind == "automatic" for r in saved.regions.values()):
        return []
    regions = SectionRegionSet.from_saved(saved)
    edits: list[Edit] = []
    for e in regions.stored_edits():
        if e.source == "plan":
            continue
        if e.mask is not None:
            e = dataclasses.replace(e, geometry_um=mask_geometry_um(e.mask, grid=regions.grid), mask=None)
        edits.append(e)
    return edits


def analyze_keeping_regions(
    path: str | Path, **analyze_options: Any
) -> tuple[dict[str, Any], int, list[str]]:
    """Analyse a scan file from its tiles again, then apply its hand-made regions again.

    ``analyze_scan`` computes every region automatically; the regions
    edited, drawn or imported before are re-applied with their original
    who/when/source (:func:`hand_made_edits`).

    Returns
    -------
    tables : dict of section id → region rows
        The tables after the hand-made regions were applied again.
    n_applied : int
        Regions applied again.
    problems : list of str
        Sections whose regions could not be applied again, and why.
    """
    from analysis.results import load_scan_results
    from analysis.scan_analysis import analyze_scan

    path = Path(path)
    kept = {sid: e for sid, s in load_scan_results(path).items() if (e := hand_made_edits(s.analysis))}
    tables: dict[str, Any] = dict(analyze_scan(path, **analyze_options))
    applied, problems = 0, []
    for sid, edits in kept.items():
        try:
            apply_region_edits(path, {sid: edits})
            applied += len(edits)
        except RegionEditError as e:
            problems.append(f"{sid}: {e}")
    if applied:
        tables = {
            sid: s.analysis.table for sid, s in load_scan_results(path).items() if s.analysis is not None
        }
    return tables, applied, problems
