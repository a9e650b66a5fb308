"""What the region editor edits, without widgets: a saved section's regions, outlines, brush strokes, writes.

:func:`editable_section` prepares a section for editing off the Qt thread (its
:class:`~analysis.region_edits.SectionRegionSet` and every region's outline in
stage µm); :class:`PendingEdits` keeps the changes not saved yet, one per
region; :func:`geometry_rings` / :func:`rings_geometry` turn an outline into
the rings the editor drags and back; :func:`brush_cells` is the analysis-grid
cells a round brush covers along a stroke; :func:`write_section_edits` applies
the changes to the file and reads the section back (off the Qt thread).

The analysis functions themselves are :mod:`analysis.region_edits` (edits with
provenance, re-analysis from the stored per-cell sums); nothing here computes
a region table.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry import mapping, shape

from analysis.region_edits import (
    GridGeometry,
    Reanalysis,
    RegionEdit,
    RegionEditError,
    RegionReset,
    SectionRegionSet,
    analyze_keeping_regions,
    apply_region_edits,
    mask_geometry_um,
    polygonal,
    rasterize_geometry_um,
)

from .results_io import LoadedScan, file_lock, reload_section, section_picture
from .section_render import SectionPicture

__all__ = [
    "EDIT_SIMPLIFY_CELLS",
    "EditableSection",
    "PendingEdits",
    "SectionWrite",
    "brush_cells",
    "dragged_mask",
    "editable_section",
    "geometry_rings",
    "rings_geometry",
    "write_section_edits",
]

#: Outlines of masks are shown for editing simplified by this many analysis cells: a cell-exact
#: outline has a vertex at every corner of its staircase (the demo Th7 section's has 1,372, its
#: rubrospinal territory's 293; simplified by 2 cells: 130 and 22). Dragging such an outline changes
#: only the cells between its old and its new position (:func:`dragged_mask`), so the
#: simplification never moves the part of the boundary the user did not touch.
EDIT_SIMPLIFY_CELLS = 2.0

Ring = list[tuple[float, float]]
Edit = RegionEdit | RegionReset
BoolArray = NDArray[np.bool_]


@dataclasses.dataclass(frozen=True)
class EditableSection:
    """A saved section ready to edit.

    Attributes
    ----------
    path : Path
        The scan file.
    section_id : str
    regions : SectionRegionSet
        The regions in force, their provenance and automatic masks.
    outlines_um : dict of region name → GeoJSON geometry (stage µm) or None
        Each region's outline as the editor shows it: its polygon if drawn or imported, else its
        mask's cells simplified by :data:`EDIT_SIMPLIFY_CELLS` (None: an empty mask).
    """

    path: Path
    section_id: str
    regions: SectionRegionSet
    outlines_um: dict[str, dict[str, Any] | None]

    @property
    def grid(self) -> GridGeometry:
        """The section's analysis grid."""
        return self.regions.grid

    def outline_of_mask(self, mask: BoolArray) -> dict[str, Any] | None:
        """The editing outline of a mask on this section's grid."""
        return mask_geometry_um(mask, grid=self.grid, simplify_um=EDIT_SIMPLIFY_CELLS * self.grid.cell_um)

    def is_polygon(self, edits: Mapping[str, Edit], region: str) -> bool:
        """Whether a region is a polygon (drawn, imported, or given as one) rather than a cell mask."""
        edit = edits.get(region)
        if isinstance(edit, RegionEdit):
            return edit.geometry_um is not None
        if isinstance(edit, RegionReset):
            return False
        return self.regions.records[region].geometry_um is not None


def editable_section(scan: LoadedScan, section_id: str) -> tuple[EditableSection | None, str]:
    """A section of a loaded scan prepared for editing (pure: run it off the Qt thread).

    Returns
    -------
    editable : EditableSection or None
        None when the section cannot be edited.
    reason : str
        Why not ("" when it can): no analysis, or an analysis without grid or per-cell sums.
    """
    section = scan.sections.get(section_id)
    saved = None if section is None else section.analysis
    if saved is None:
        return None, f"{section_id} has no saved analysis: 'Analyse file' computes it"
    if saved.sums is None:
        return None, (
            f"{section_id}: the file holds no per-cell sums to re-analyse from; 'Analyse file' adds them"
        )
    try:
        regions = SectionRegionSet.from_saved(saved)
    except RegionEditError as e:
        return None, f"{section_id}: {e}"
    simplify = EDIT_SIMPLIFY_CELLS * regions.grid.cell_um
    outlines = {name: regions.outline_um(name, simplify_um=simplify) for name in regions.masks}
    return EditableSection(scan.path, section_id, regions, outlines), ""


# ---------------------------------------------------------------- outlines ↔ rings


def geometry_rings(geometry: Mapping[str, Any] | None) -> list[list[Ring]]:
    """The rings of a polygonal GeoJSON geometry: per polygon, its exterior then its holes.

    Each ring is a list of (x, y) without the repeated closing point.
    """
    if geometry is None:
        return []
    geom = polygonal(shape(geometry))
    polygons = list(getattr(geom, "geoms", [geom])) if not geom.is_empty else []
    out: list[list[Ring]] = []
    for poly in polygons:
        rings = [poly.exterior, *poly.interiors]
        out.append([[(float(x), float(y)) for x, y in list(r.coords)[:-1]] for r in rings])
    return out


def rings_geometry(polygons: Sequence[Sequence[Ring]]) -> dict[str, Any] | None:
    """A GeoJSON geometry from polygons given as rings (exterior first, then holes), made valid.

    Rings with fewer than three vertices are left out; None when nothing polygonal is left.
    """
    parts = []
    for rings in polygons:
        usable = [list(r) for r in rings if len(r) >= 3]
        if not usable or len(rings[0]) < 3:
            continue
        parts.append(shapely.Polygon(usable[0], usable[1:]))
    if not parts:
        return None
    geom = polygonal(shapely.MultiPolygon(parts) if len(parts) > 1 else parts[0])
    if geom.is_empty:
        return None
    return _plain(mapping(shapely.orient_polygons(geom)))


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return float(value) if isinstance(value, np.floating) else value


def dragged_mask(
    mask: BoolArray, before_um: Mapping[str, Any], after_um: Mapping[str, Any] | None, *, grid: GridGeometry
) -> BoolArray:
    """A cell mask after its (simplified) outline was dragged from ``before_um`` to ``after_um``.

    Cells the outline newly encloses join the mask, cells it no longer encloses leave it; every
    other cell keeps its membership, so the simplification of the outline never changes the
    mask where the user did not drag.

    Parameters
    ----------
    mask : (rows, cols) bool
        The mask whose outline was shown.
    before_um, after_um : GeoJSON geometries (stage µm)
        The outline shown, and the outline after dragging (None: nothing left).
    grid : GridGeometry
    """
    before = rasterize_geometry_um(before_um, grid=grid)
    after = rasterize_geometry_um(after_um, grid=grid) if after_um is not None else np.zeros_like(before)
    return (np.asarray(mask, dtype=bool) & ~(before & ~after)) | (after & ~before)


# ---------------------------------------------------------------- brush


def brush_cells(
    grid: GridGeometry, start_um: Sequence[float], end_um: Sequence[float], radius_um: float
) -> BoolArray:
    """Cells whose centre lies within ``radius_um`` of the segment from ``start_um`` to ``end_um``.

    A stroke painted segment by segment (each mouse move) is solid: consecutive segments share
    their end points, so no cell along the path is skipped however fast the mouse moves.

    Parameters
    ----------
    grid : GridGeometry
    start_um, end_um : (x, y) stage µm
    radius_um : float
        Brush radius (µm, > 0).

    Returns
    -------
    (rows, cols) bool
    """
    out = np.zeros(grid.shape, dtype=bool)
    r = float(radius_um)
    if r <= 0:
        return out
    ax, ay = float(start_um[0]), float(start_um[1])
    bx, by = float(end_um[0]), float(end_um[1])
    p, o = grid.cell_um, grid.origin_um
    c0 = max(0, int(np.floor((min(ax, bx) - r - o[0]) / p - 0.5)))
    c1 = min(grid.shape[1], int(np.ceil((max(ax, bx) + r - o[0]) / p - 0.5)) + 1)
    r0 = max(0, int(np.floor((min(ay, by) - r - o[1]) / p - 0.5)))
    r1 = min(grid.shape[0], int(np.ceil((max(ay, by) + r - o[1]) / p - 0.5)) + 1)
    if c0 >= c1 or r0 >= r1:
        return out
    x = o[0] + (np.arange(c0, c1) + 0.5) * p
    y = o[1] + (np.arange(r0, r1) + 0.5) * p
    px, py = x[None, :] - ax, y[:, None] - ay
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = np.clip((px * dx + py * dy) / length2, 0.0, 1.0) if length2 > 0 else np.zeros_like(px * py)
    out[r0:r1, c0:c1] = (px - t * dx) ** 2 + (py - t * dy) ** 2 <= r * r
    return out


# ---------------------------------------------------------------- pending edits


class PendingEdits:
    """Region changes not saved yet, per scan file and section: the latest change of each region wins."""

    def __init__(self) -> None:
        self._edits: dict[tuple[Path, str], dict[str, Edit]] = {}

    @staticmethod
    def _key(path: Path, section_id: str) -> tuple[Path, str]:
        return (Path(path).resolve(), section_id)

    def get(self, path: Path, section_id: str) -> dict[str, Edit]:
        """The changes of one section, region → edit, in the order they were first made."""
        return dict(self._edits.get(self._key(path, section_id), {}))

    def set(self, path: Path, section_id: str, edit: Edit) -> None:
        """Record a region's latest change."""
        self._edits.setdefault(self._key(path, section_id), {})[edit.region] = edit

    def drop(self, path: Path, section_id: str, region: str | None = None) -> None:
        """Forget one region's change, or (``region`` None) every change of the section."""
        key = self._key(path, section_id)
        if region is None:
            self._edits.pop(key, None)
        elif key in self._edits:
            self._edits[key].pop(region, None)
            if not self._edits[key]:
                del self._edits[key]

    def sections(self, path: Path) -> list[str]:
        """Sections of a file with unsaved changes."""
        resolved = Path(path).resolve()
        return [sid for (p, sid), edits in self._edits.items() if p == resolved and edits]

    @staticmethod
    def kinds(edits: Mapping[str, Edit]) -> dict[str, str]:
        """The kind each changed region will have: the edit's, ``automatic`` for a reset."""
        return {r: ("automatic" if isinstance(e, RegionReset) else e.kind) for r, e in edits.items()}


def current_mask(editable: EditableSection, edits: Mapping[str, Edit], region: str) -> BoolArray:
    """A region's mask with its unsaved change, before clipping to the section (what a brush starts from)."""
    edit = edits.get(region)
    regions = editable.regions
    if isinstance(edit, RegionReset):
        return regions.automatic_masks.get(region, regions.masks[region]).copy()
    if isinstance(edit, RegionEdit):
        if edit.mask is not None:
            return np.asarray(edit.mask, dtype=bool).copy()
        assert edit.geometry_um is not None
        return rasterize_geometry_um(edit.geometry_um, grid=regions.grid)
    return regions.masks[region].copy()


def current_outline(
    editable: EditableSection, edits: Mapping[str, Edit], region: str
) -> dict[str, Any] | None:
    """A region's outline with its unsaved change (stage µm)."""
    edit = edits.get(region)
    if isinstance(edit, RegionEdit) and edit.geometry_um is not None:
        return edit.geometry_um
    if edit is not None:
        return editable.outline_of_mask(current_mask(editable, edits, region))
    return editable.outlines_um.get(region)


# ---------------------------------------------------------------- writing


@dataclasses.dataclass(frozen=True)
class SectionWrite:
    """A section's edits written into its file, and the section read back.

    Attributes
    ----------
    scan : LoadedScan
        The scan with the section read again.
    reanalysis : Reanalysis
        The recomputed table and maps (``elapsed_s``: the computation alone).
    picture : SectionPicture or None
    editable : EditableSection or None
    reason : str
        Why the section cannot be edited further ("" when it can).
    elapsed_s : float
        Wall time of the whole write: edits, re-analysis, writing, reading back.
    """

    scan: LoadedScan
    reanalysis: Reanalysis
    picture: SectionPicture | None
    editable: EditableSection | None
    reason: str
    elapsed_s: float


def write_section_edits(scan: LoadedScan, section_id: str, edits: Sequence[Edit]) -> SectionWrite:
    """Apply edits to one section of the file, re-analyse it from its stored sums, read it back.

    Pure file work for a thread off the Qt thread (holds :func:`gui.results_io.file_lock`).

    Raises
    ------
    analysis.region_edits.RegionEditError
        An edit that cannot be applied (nothing is written then).
    """
    t0 = time.perf_counter()
    with file_lock(scan.path):
        result = apply_region_edits(scan.path, {section_id: list(edits)})[section_id]
    fresh = reload_section(scan, section_id)
    picture = section_picture(fresh, section_id)
    editable, reason = editable_section(fresh, section_id)
    return SectionWrite(fresh, result, picture, editable, reason, time.perf_counter() - t0)


# ---------------------------------------------------------------- QuPath and whole files


def qupath_export_names(section_ids: Sequence[str]) -> list[str]:
    """The files :func:`analysis.qupath.export_qupath` writes for these sections."""
    return [f"{sid}{ext}" for sid in section_ids for ext in (".ome.tif", ".geojson")]


def existing_exports(folder: Path, section_ids: Sequence[str]) -> list[str]:
    """Files of a QuPath export already in ``folder`` (they would be replaced)."""
    return [n for n in qupath_export_names(section_ids) if (Path(folder) / n).exists()]


@dataclasses.dataclass(frozen=True)
class RegionsImported:
    """A GeoJSON file applied to a scan from the GUI.

    Attributes
    ----------
    scan : LoadedScan
        The scan with the changed sections read again.
    found : analysis.qupath.RegionsImport
        What was imported, unchanged and skipped.
    reanalysed : dict of section id → Reanalysis
    elapsed_s : float
    """

    scan: LoadedScan
    found: Any
    reanalysed: dict[str, Reanalysis]
    elapsed_s: float


def import_regions_file(scan: LoadedScan, geojson: Path, *, shown_section: str | None) -> RegionsImported:
    """Apply a regions GeoJSON (QuPath's, or ``cordscope regions --export``'s) to the scan file.

    QuPath annotations are in one section's image pixels: the section whose id starts the
    file's name (``rat01-Th7.ome.tif.geojson``), else ``shown_section``.

    Raises
    ------
    analysis.qupath.QuPathError
        An unreadable file, or annotations no section can take.
    """
    from analysis.qupath import apply_regions_file

    t0 = time.perf_counter()
    name = Path(geojson).name
    named = [sid for sid in scan.sections if name == sid or name.startswith(sid + ".")]
    section = max(named, key=len) if named else shown_section
    with file_lock(scan.path):
        results, found = apply_regions_file(scan.path, geojson, section_id=section)
    fresh = scan
    for sid in results:
        fresh = reload_section(fresh, sid)
    return RegionsImported(fresh, found, results, time.perf_counter() - t0)


def export_for_qupath(scan: LoadedScan, folder: Path, *, overwrite: bool, progress: Any = None) -> list[Path]:
    """Per section an OME-TIFF and its regions as QuPath GeoJSON, into ``folder`` (holds the file lock)."""
    from analysis.qupath import export_qupath

    with file_lock(scan.path):
        return export_qupath(scan.path, folder, overwrite=overwrite, progress=progress)


def analyse_keeping_regions(path: Path) -> tuple[int, list[str]]:
    """Analyse a scan file from its tiles again, keeping its hand-made regions (under the GUI's file lock).

    See :func:`analysis.region_edits.analyze_keeping_regions`.

    Returns
    -------
    n_applied : int
        Regions applied again.
    problems : list of str
        Sections whose regions could not be applied again, and why.
    """
    with file_lock(path):
        _, applied, problems = analyze_keeping_regions(path)
    return applied, problems
