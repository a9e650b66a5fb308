"""A saved scan file read for the GUI: its sections, their pictures, and one lock per file.

Pure functions (no widgets), run off the Qt thread by the results panel, the
live view after a scan, and the region editor: :func:`load_scan` reads a file's
summary, plan and saved analysis; :func:`reload_section` reads one section
again after its regions were edited; :func:`section_picture` renders a
section; :func:`export_figures` writes PNGs. :func:`file_lock` serialises the
GUI's own reads and writes of one file (HDF5 refuses to open a file again in
the same process while it is open for writing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

from acquisition.storage import ScanFile, ScanSummary
from analysis.results import SavedSection, load_scan_results
from analysis.results_format import has_analysis, read_analysis
from analysis.section_analysis import channel_roles

from .section_render import SectionPicture, render_section

__all__ = [
    "LoadedScan",
    "export_figures",
    "file_lock",
    "load_scan",
    "pct_axonal_area_text",
    "reload_section",
    "section_picture",
    "section_title",
]

_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold the GUI's lock of one scan file (reads and writes of the GUI's threads take turns)."""
    key = Path(path).resolve()
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:
        yield


@dataclasses.dataclass(frozen=True)
class LoadedScan:
    """A scan file read for the results panel.

    Attributes
    ----------
    path : Path
    summary : ScanSummary
        Tile counts per section, size, creation time.
    plan_yaml : str
        The plan stored in the file.
    sections : dict of section id → SavedSection
        Labels and saved analysis (None if not analysed) of each section.
    """

    path: Path
    summary: ScanSummary
    plan_yaml: str
    sections: dict[str, SavedSection]

    @property
    def analysed(self) -> list[str]:
        """Sections with a saved analysis."""
        return [sid for sid, s in self.sections.items() if s.analysis is not None]


def load_scan(path: str | Path) -> LoadedScan:
    """Read a scan file's summary, plan and saved results (no recomputation).

    Raises
    ------
    acquisition.storage.StorageError
        If the file is missing or not a readable CordScope scan.
    """
    file = Path(path)
    with file_lock(file):
        with ScanFile.open(file) as scan:
            summary = scan.summary()
            plan_yaml = scan.plan_yaml
        return LoadedScan(file, summary, plan_yaml, load_scan_results(file))


def reload_section(scan: LoadedScan, section_id: str) -> LoadedScan:
    """The scan with one section's saved analysis read again (after its regions changed).

    Raises
    ------
    acquisition.storage.StorageError
        If the file can no longer be read.
    """
    with file_lock(scan.path), ScanFile.open(scan.path) as f:
        section = f.section(section_id)
        group = section.analysis_group
        saved = read_analysis(group) if has_analysis(group) else None
        fresh = SavedSection(section_id, section.attrs, saved)
    return dataclasses.replace(scan, sections={**scan.sections, section_id: fresh})


def pct_axonal_area_text(section: SavedSection, region: str) -> str:
    """A region's % axonal area as shown in the section list ("" without analysis or region)."""
    if section.analysis is None:
        return ""
    row = next((r for r in section.analysis.table if r.region == region), None)
    return "" if row is None or row.pct_axonal_area != row.pct_axonal_area else f"{row.pct_axonal_area:.3f}"


def section_title(section: SavedSection) -> str:
    """``"<section> · <animal> · <group> · <level>"`` (labels the plan gave)."""
    a = section.attrs
    return " · ".join(
        str(v) for v in (section.section_id, a.get("animal"), a.get("group"), a.get("level")) if v
    )


def _anatomy_tracer(scan: LoadedScan, section: SavedSection) -> tuple[int, int]:
    analysis = section.analysis
    assert analysis is not None
    tracer, anatomy = channel_roles(scan.plan_yaml, analysis.channel_names)
    return anatomy, tracer


def section_picture(scan: LoadedScan, section_id: str, *, all_outlines: bool = True) -> SectionPicture | None:
    """Render one section's saved mosaic, heatmap and regions (pure: run it off the Qt thread).

    None if the section has no saved analysis. ``all_outlines``: outline every region (the
    picture shows the usual ones until the user asks for all).
    """
    section = scan.sections[section_id]
    analysis = section.analysis
    if analysis is None:
        return None
    anatomy = tracer = None
    anatomy_name, tracer_name = "DAPI", "tdTomato"
    origin = analysis.mosaic_origin_um if analysis.mosaic_origin_um is not None else analysis.mask_origin_um
    pixel = analysis.mosaic_pixel_um or analysis.mask_cell_um or analysis.maps.bin_um
    if analysis.mosaic is not None and analysis.channel_names:
        a, t = _anatomy_tracer(scan, section)
        anatomy, tracer = analysis.mosaic[a], analysis.mosaic[t]
        anatomy_name, tracer_name = analysis.channel_names[a], analysis.channel_names[t]
    elif analysis.masks:
        # no stored mosaic (older files): show the tissue mask as the picture
        tissue = next(iter(analysis.masks.values()))
        anatomy = tissue.astype("float32")
    if origin is None or anatomy is None:
        return None
    n_done = scan.summary.sections[section_id].done
    n_total = scan.summary.sections[section_id].n_tiles
    orientation = section.attrs.get("orientation", "")
    caption = f"{section_title(section)} — {orientation} section, {n_done} of {n_total} tiles"
    return render_section(
        section_id=section_id,
        anatomy=anatomy,
        tracer=tracer,
        mosaic_origin_um=tuple(origin),
        mosaic_pixel_um=float(pixel),
        pct_axonal_area=analysis.maps.pct_axonal_area,
        map_origin_um=tuple(analysis.maps.origin_um),
        map_bin_um=analysis.maps.bin_um,
        masks=analysis.masks,
        mask_origin_um=None if analysis.mask_origin_um is None else tuple(analysis.mask_origin_um),
        mask_pixel_um=analysis.mask_cell_um,
        table=analysis.table,
        caption=caption,
        anatomy_name=anatomy_name,
        tracer_name=tracer_name,
        all_outlines=all_outlines,
    )


def export_figures(scan: LoadedScan, folder: Path) -> list[Path]:
    """Write a PNG per analysed section (mosaic + % axonal area heatmap) into ``folder``.

    Files are named ``<scan>-<section>.png``, as ``cordscope scan --figures`` names them.
    """
    from analysis.figures import save_section_figure

    written = []
    for sid in scan.analysed:
        section = scan.sections[sid]
        analysis = section.analysis
        assert analysis is not None
        if analysis.mosaic is None or analysis.mosaic_origin_um is None or analysis.mosaic_pixel_um is None:
            continue
        a, _ = _anatomy_tracer(scan, section)
        title = " · ".join(
            str(v)
            for v in (
                sid,
                section.attrs.get("group"),
                section.attrs.get("level"),
                section.attrs.get("orientation"),
            )
            if v
        )
        written.append(
            save_section_figure(
                folder / f"{scan.path.stem}-{sid}.png",
                anatomy_mosaic=analysis.mosaic[a],
                mosaic_origin_um=tuple(analysis.mosaic_origin_um),
                mosaic_pixel_um=analysis.mosaic_pixel_um,
                pct_axonal_area_map=analysis.maps.pct_axonal_area,
                map_origin_um=tuple(analysis.maps.origin_um),
                map_bin_um=analysis.maps.bin_um,
                title=title,
            )
        )
    return written
