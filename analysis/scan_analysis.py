"""The analysis of one scan file, tile by tile: the one analysis core, free of threads.

:class:`ScanAnalysis` is what every way of running the analysis drives:

- live beside a scan, in a thread or in a process of its own
  (:mod:`analysis.live`: both run :func:`analysis.live.run_analysis_loop`
  around a ``ScanAnalysis``, fed with the scan writer's "tile stored" events);
- offline on a finished file (:func:`analyze_scan`, ``cordscope analyze``);
- one section per Dask task (:func:`analyze_section_into`,
  :mod:`analysis.distributed`).

The caller feeds tiles with :meth:`ScanAnalysis.add_tile` (pixels given, or
read from the file when not), asks for the live region table of a changed
section (:meth:`ScanAnalysis.next_update`), for a copy of a section's state
(:meth:`ScanAnalysis.snapshot`, safe from any thread), and ends with
:meth:`ScanAnalysis.finalize`, once the scan has closed the file: section by
section it analyses any done tile still missing, computes the final results
and writes the section's ``analysis/`` group, then ``<scan>.regions.csv``.
:func:`feed_done_tiles` is the one loop that feeds a file's done tiles.

Memory: only the section being fed stays in memory. When the scan moves
on, a section's state (per-cell sums and mosaic, a few tens of bytes per
4 µm cell) and its current results are set aside in a temporary HDF5 file
and brought back if one of its tiles still arrives.

Each tile is analysed once (an exception while analysing it is logged with
the tile, recorded in :attr:`ScanAnalysis.faults`, and not retried). Live
and offline tables are identical: every tile's contributions are rounded to
dyadic grids before they are added, so the sums do not depend on the order
tiles arrive in (see :mod:`analysis.section_analysis`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import yaml

from acquisition.storage import (
    ScanFile,
    SectionReader,
    StorageError,
    TileStatus,
    in_use,
    split_pass_key,
    tile_name,
)
from analysis import adaptive
from analysis.calibration import (
    AppliedCalibration,
    CalibrationError,
    ScanCalibration,
    applied_calibration,
    dark_offsets_adu,
    scan_calibration,
)
from analysis.geometry import pixel_size_from_affine
from analysis.maps import RegionRow
from analysis.regions import SectionRegions
from analysis.results_format import region_csv_path, write_scan_region_csv
from analysis.scan_calibration import calibration_report, write_calibration_record
from analysis.section_analysis import LiveSnapshot, SectionAnalysis, SectionResults, saved_snapshot
from analysis.settings import AnalysisSettings, load_flat_fields, segmentation_settings, settings_of_scan
from analysis.tile import AxonSegmentationSettings

__all__ = [
    "REGIONS_REFRESH_S",
    "AnalysisFault",
    "ScanAnalysis",
    "TileKey",
    "analyze_scan",
    "analyze_section_into",
    "feed_done_tiles",
    "merge_section_results",
    "region_csv_path",
    "saved_section_snapshot",
    "scan_applied_calibration",
]

logger = logging.getLogger(__name__)

TileKey = tuple[str, int]

#: Live region masks (the slow part of a table) are recomputed at most this often (s),
#: and never more often than every 5× the time they take; tables in between use the last masks.
REGIONS_REFRESH_S = 1.0

#: Sections kept in memory at once (the others are set aside on disk).
SECTIONS_IN_MEMORY = 1


@dataclasses.dataclass(frozen=True)
class AnalysisFault:
    """An exception met while analysing one tile."""

    section_id: str
    tile_index: int
    message: str


def _done_tile_reader(scan: ScanFile, section_id: str) -> Callable[[int], np.ndarray | None]:
    def read(tile_index: int) -> np.ndarray | None:
        sec = scan.section(section_id)
        if sec.tile_status[tile_index] != TileStatus.DONE:
            return None
        return sec.read_tile(tile_index)

    return read


def _stoppable(
    read: Callable[[int], np.ndarray | None], should_continue: Callable[[], bool]
) -> Callable[[int], np.ndarray | None]:
    """``read``, asking ``should_continue`` before each tile (a rebuild reads every tile again)."""

    def checked(tile_index: int) -> np.ndarray | None:
        if not should_continue():
            raise InterruptedError("the final analysis was stopped")
        return read(tile_index)

    return checked


def _new_section(
    scan: ScanFile, section_id: str, settings: AnalysisSettings, *, calibration: AppliedCalibration
) -> SectionAnalysis:
    """A section's analysis from the scan file, with what the scan's calibration decided."""
    reader: SectionReader = scan.section(section_id)
    return SectionAnalysis.from_reader(
        reader,
        plan_yaml=scan.plan_yaml,
        settings=settings,
        read_tile=_done_tile_reader(scan, section_id),
        calibration=calibration,
    )


def scan_applied_calibration(
    scan: ScanFile,
    reader: SectionReader,
    settings: AnalysisSettings,
    *,
    calibration: ScanCalibration | None,
    plan_dir: Path,
) -> AppliedCalibration:
    """What the analysis of a section applies: the file's calibration and the plan's settings decided.

    The plan's own flat-field images (relative paths from ``plan_dir``) win
    over the calibration's; they are normalised with each channel's offset.
    """
    channels = reader.channel_names
    offsets = dark_offsets_adu(settings, calibration, channels)
    plan_flats = load_flat_fields(
        settings, channels, tile_shape=reader.tile_shape_px, base_dir=plan_dir, dark_offsets_adu=offsets
    )
    try:
        pixel_size_um = pixel_size_from_affine(reader.pixel_affine_um)
    except ValueError:
        pixel_size_um = reader.pixel_size_um  # the section analysis says what is wrong with the affine
    return applied_calibration(
        settings,
        calibration,
        channel_names=channels,
        tile_shape=reader.tile_shape_px,
        pixel_size_um=pixel_size_um,
        plan_flat_fields=tuple(plan_flats),
    )


def saved_section_snapshot(scan_path: str | Path, section_id: str) -> LiveSnapshot | None:
    """A section's results as written in its scan file, as a snapshot; None if it has none."""
    with ScanFile.open(scan_path) as scan:
        if section_id not in scan.section_ids:
            return None
        group = scan.section(section_id).analysis_group
        return None if group is None or not len(group) else saved_snapshot(group, section_id)


def _final_results(section: SectionAnalysis) -> SectionResults | None:
    """A section's final results; None (with a warning) if it shows no tissue."""
    try:
        return section.results()
    except ValueError as e:  # e.g. no tissue in the tiles imaged so far
        n = len(section.tiles_added)
        logger.warning("section %s: no analysis (%s) from %d analysed tiles", section.section_id, e, n)
        return None


class ScanAnalysis:
    """The analysis of one scan file, fed tile by tile (see the module docstring).

    Not thread-safe, except :meth:`snapshot`, :attr:`section_ids` and
    :meth:`section`, which any thread may call while one thread feeds it.

    Parameters
    ----------
    scan_path : path
        The scan file (being written, or finished).
    settings : AnalysisSettings, optional
        Default: the analysis settings of the plan stored in the file.
    beside_writer : bool
        The file is being written by another process: open it as a reader
        beside that writer (no lock; see ``ScanFile.open``).
    sections_in_memory : int
        Sections kept in memory; the least recently fed others are set aside on disk.

    Attributes
    ----------
    analysis_counts : Counter of (section_id, tile_index)
        How many times each tile was analysed (1 for every analysed tile).
    faults : list of AnalysisFault
    n_set_aside : int
        Times a section's state was moved to disk.
    """

    def __init__(
        self,
        scan_path: str | Path,
        *,
        settings: AnalysisSettings | None = None,
        beside_writer: bool = False,
        sections_in_memory: int = SECTIONS_IN_MEMORY,
    ) -> None:
        if sections_in_memory < 1:
            raise ValueError(f"sections_in_memory must be ≥ 1, got {sections_in_memory}")
        self.scan_path = Path(scan_path)
        self.settings = settings
        self.beside_writer = beside_writer
        self.sections_in_memory = int(sections_in_memory)
        self.analysis_counts: Counter[TileKey] = Counter()
        self.faults: list[AnalysisFault] = []
        self.n_set_aside = 0
        self._scan: ScanFile | None = None
        self._finalizing = False
        # sections in memory, most recently fed last; set-aside ones live in the spill file
        self._sections: dict[str, SectionAnalysis] = {}
        self._set_aside: set[str] = set()
        self._finalized: set[str] = set()
        self._lock = threading.RLock()
        self._spill: h5py.File | None = None
        self._spill_path: Path | None = None
        self._dirty: dict[str, None] = {}  # ordered set of sections with changes not yet published
        # live region masks per section: (regions, when computed, how long it took)
        self._live_regions: dict[str, tuple[SectionRegions, float, float]] = {}
        # the file's calibration, read once; what it decided, per section geometry
        self._calibration: ScanCalibration | None = None
        self._calibration_read = False
        self._applied: dict[tuple[object, ...], AppliedCalibration] = {}
        # further passes (e.g. an adaptive pass at 20x) by pass key, and each section's grid
        self._passes: dict[str, adaptive.HiresSection] = {}
        self._grids: dict[str, tuple[tuple[float, float], float, tuple[int, int]]] = {}

    # ------------------------------------------------------------- feeding

    def add_tile(self, section_id: str, tile_index: int, images: np.ndarray | None = None) -> bool:
        """Analyse one tile once: its pixels ``(C, Z, H, W)``, or read from the file if None.

        Returns
        -------
        bool
            Whether the tile was analysed now (False: analysed before, or not done in the file).
        """
        key = (section_id, int(tile_index))
        if key in self.analysis_counts:
            return False
        try:
            is_pass = split_pass_key(section_id)[1] is not None
            if is_pass:
                self._see_pass(section_id)
            if images is None:
                images = _done_tile_reader(self._open_scan(), section_id)(key[1])
                if images is None:
                    return False  # not done: nothing to analyse
            if is_pass:
                self._pass(section_id).add_tile(images, tile_index=key[1])
            else:
                self._section(section_id).add_tile(images, tile_index=key[1])
        except Exception as e:  # an analysis fault never stops the scan; the tile is not retried
            logger.exception("analysis of tile %s failed", tile_name(*key))
            self.faults.append(AnalysisFault(section_id, key[1], f"{type(e).__name__}: {e}"))
        self.analysis_counts[key] += 1
        self._dirty[section_id] = None
        return True

    @property
    def analysed_tiles(self) -> set[TileKey]:
        """Tiles analysed so far."""
        return set(self.analysis_counts)

    @property
    def section_ids(self) -> list[str]:
        """Sections with at least one tile analysed (in memory, set aside, or finalized)."""
        with self._lock:
            return [*self._finalized, *sorted(self._set_aside), *self._sections]

    def section(self, section_id: str) -> SectionAnalysis:
        """The running analysis of a section in memory (its mosaic, accumulator, settings).

        Raises
        ------
        KeyError
            If the section is not in memory (set aside on disk, finalized or never fed).
        """
        with self._lock:
            return self._sections[section_id]

    # -------------------------------------------------------- adaptive pass

    def adaptive_targets(
        self, section_id: str, *, region: str, min_pct_axonal_area: float
    ) -> list[list[tuple[float, float]]]:
        """What an adaptive pass should image in a section: polygons, stage µm (:mod:`analysis.adaptive`).

        First analyses any done tile of the section not analysed yet (read
        from the file), then computes the region masks afresh.

        Returns
        -------
        list of vertex lists; empty when the region is missing or shows nothing above the threshold
        """
        scan = self._open_scan()
        for t in scan.section(section_id).done_indices():
            self.add_tile(section_id, int(t))
        section = self._section(section_id)
        masks = section.regions().masks
        if region not in masks:
            logger.warning("section %s has no region %r: nothing for the adaptive pass", section_id, region)
            return []
        with section._lock:
            mask = adaptive.target_mask(
                section.accumulator,
                masks[region],
                min_pct_axonal_area=min_pct_axonal_area,
                bin_um=section.settings.heatmap_bin_um,
            )
        return adaptive.target_polygons(
            mask, origin_um=section.mosaic.origin_um, cell_um=section.mosaic.pixel_size_um
        )

    def _grid(self, section_id: str) -> tuple[tuple[float, float], float, tuple[int, int]]:
        """A section's analysis grid (origin, cell, shape), as its SectionAnalysis lays it out."""
        if section_id not in self._grids:
            with self._lock:
                section = self._sections.get(section_id)
            if section is None:
                assert self.settings is not None
                section = _new_section(
                    self._open_scan(),
                    section_id,
                    self.settings,
                    calibration=self.applied_calibration(section_id),
                )
            mosaic = section.mosaic
            origin = (float(mosaic.origin_um[0]), float(mosaic.origin_um[1]))
            self._grids[section_id] = (origin, float(mosaic.pixel_size_um), tuple(mosaic.shape))  # type: ignore[assignment]
        return self._grids[section_id]

    def _see_pass(self, key: str) -> None:
        """Reopen a file read beside its writer when a pass was added after it was opened."""
        scan = self._open_scan()
        if scan.live and key not in scan.pass_keys():
            scan.refresh(beside_writer=self.beside_writer)

    def _pass(self, key: str) -> adaptive.HiresSection:
        """The running analysis of a section's further pass (its tiles on the section's grid)."""
        if key not in self._passes:
            scan = self._open_scan()
            if self.settings is None:
                self.settings = settings_of_scan(scan.plan_yaml, source=f"{self.scan_path.name}:/plan")
            reader = scan.section(key)
            section_id, _ = split_pass_key(key)
            origin, cell, shape = self._grid(section_id)
            tracer = _tracer_index(scan.plan_yaml, reader.channel_names)
            self._passes[key] = adaptive.HiresSection(
                origin_um=origin,
                cell_um=cell,
                shape=shape,
                tile_xy_um=reader.tile_xy_um,
                tile_shape_px=reader.tile_shape_px,
                pixel_size_um=reader.pixel_size_um,
                pixel_affine_um=reader.pixel_affine_um,
                tracer_channel=tracer,
                # the camera's offset (dark frames, or the plan's); the flat fields and the PSF
                # are the section objective's, not the pass's
                dark_offset_adu=dark_offsets_adu(self.settings, self.calibration, reader.channel_names)[
                    tracer
                ],
                segmentation=_pass_segmentation(scan.plan_yaml, self.settings),
            )
        return self._passes[key]

    # ---------------------------------------------------------- live results

    def next_update(self) -> tuple[str, list[RegionRow]] | None:
        """The live region table of the section that changed longest ago; None if none changed.

        Region masks are recomputed at most every :data:`REGIONS_REFRESH_S`
        (and never more often than every 5× the time they take); tables in
        between use the last masks. A section set aside meanwhile, or without
        tissue yet, gives no table.
        """
        while self._dirty:
            sid = next(iter(self._dirty))
            del self._dirty[sid]
            with self._lock:
                section = self._sections.get(sid)
            if section is None:
                continue  # set aside meanwhile: its results were computed then
            now = time.monotonic()
            try:
                regions = self._live_regions.get(sid)
                if regions is None or now - regions[1] >= max(REGIONS_REFRESH_S, 5 * regions[2]):
                    masks = section.regions()
                    regions = (masks, now, time.monotonic() - now)
                    with self._lock:
                        self._live_regions[sid] = regions
                return sid, section.table(regions[0])
            except ValueError as e:  # e.g. no tissue in the first tiles yet
                logger.debug("no live region table for section %s yet: %s", sid, e)
            except Exception:
                logger.exception("live region table of section %s failed", sid)
        return None

    def snapshot(self, section_id: str) -> LiveSnapshot | None:
        """A copy of one section's mosaic, heatmap, region masks and table; safe from any thread.

        Mosaics and maps are copies; the masks are the latest live ones, or
        the final ones once the section is finalized (read from the scan
        file) or set aside (read from the temporary file). Returns None if no
        tile of the section was analysed yet.
        """
        with self._lock:
            section = self._sections.get(section_id)
            if section is not None:
                live = self._live_regions.get(section_id)
                return section.snapshot(None if live is None else live[0])
            if section_id in self._set_aside and self._spill is not None:
                if "results" not in self._spill[section_id]:
                    return None
                return saved_snapshot(self._spill[section_id]["results"], section_id)
            if section_id in self._finalized:
                return saved_section_snapshot(self.scan_path, section_id)
        return None

    # ---------------------------------------------------------------- final

    def finalize(self, *, should_continue: Callable[[], bool] = lambda: True) -> dict[str, list[RegionRow]]:
        """After the scan closed the file: analyse done tiles still missing, write results; return tables.

        Section by section (one in memory at a time), it writes
        ``sections/<id>/analysis/``, then ``<scan>.regions.csv``.

        Parameters
        ----------
        should_continue : callable
            Asked between tiles (also while a section is rebuilt at its
            registered positions) and between sections; when it returns False
            the work stops with :class:`InterruptedError` (e.g. the scan's
            process was killed).
        """
        self._close_scan()
        tables: dict[str, list[RegionRow]] = {}
        try:
            with h5py.File(self.scan_path, "r+") as f:
                # one handle for reading tiles and writing results (no second open of the file)
                scan = ScanFile(f, self.scan_path, int(f.attrs["format_version"]))
                self._scan = scan
                try:
                    self._finalizing = True
                    # sections still in memory first: bringing a set-aside one back would set them
                    # aside (their state written out, then read back)
                    order = sorted(scan.section_ids, key=lambda sid: sid not in self._sections)
                    for sid in order:
                        for key in (sid, *scan.pass_keys(sid)):
                            for t in scan.section(key).done_indices():
                                if not should_continue():
                                    raise InterruptedError(f"final analysis of {self.scan_path.name} stopped")
                                self.add_tile(key, int(t))
                        section = self._section(sid)
                        section.read_tile = _stoppable(_done_tile_reader(scan, sid), should_continue)
                        results = self._final_results(scan, section)
                        if not should_continue():
                            raise InterruptedError(f"final analysis of {self.scan_path.name} stopped")
                        if results is not None:
                            section.write(f["sections"][sid].require_group("analysis"), results)
                            tables[sid] = results.table
                        with self._lock:
                            self._sections.pop(sid, None)
                            self._live_regions.pop(sid, None)
                            self._finalized.add(sid)
                    self._write_calibration_record(f, scan)
                finally:
                    self._scan = None
            write_scan_region_csv(self.scan_path)
        finally:
            self.close()
        return tables

    def _write_calibration_record(self, f: h5py.File, scan: ScanFile) -> None:
        """The file-level record of what was applied, with the tile-flag counts; flags logged."""
        report = calibration_report(scan, stored=self.calibration)
        write_calibration_record(f, report)
        for line in report.flag_lines():
            logger.warning("%s: %s", self.scan_path.name, line)

    def _final_results(self, scan: ScanFile, section: SectionAnalysis) -> SectionResults | None:
        """A section's final results, with its further passes' numbers where they imaged whole cells."""
        keys = [k for k in scan.pass_keys(section.section_id) if k in self._passes]
        if not keys:
            return _final_results(section)
        try:
            source, registration = section.final()
            parameters = []
            cells = np.zeros(source.accumulator.shape, dtype=bool)
            with source._lock:
                for key in keys:
                    hires = self._passes[key]
                    folded = adaptive.fold_hires(source.accumulator, hires)
                    cells |= folded
                    parameters.append(adaptive.pass_parameters(hires, folded, scan.section(key).attrs))
            results = source.results(final=False)
        except ValueError as e:  # e.g. no tissue in the tiles imaged so far
            logger.warning("section %s: no analysis (%s)", section.section_id, e)
            return None
        table = adaptive.hires_fractions(results.table, source.accumulator, results.regions.masks, cells)
        logger.info(
            "section %s: %d cells from further passes %s", section.section_id, int(cells.sum()), parameters
        )
        return dataclasses.replace(
            results,
            table=table,
            registration=registration,
            rebuilt_at_registered_positions=source is not section,
        )

    def close(self) -> None:
        """Close the scan file and the temporary file of set-aside sections (idempotent)."""
        self._close_scan()
        with self._lock:
            if self._spill is not None:
                self._spill.close()
                self._spill = None
            if self._spill_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._spill_path.unlink()
                self._spill_path = None
            self._set_aside.clear()

    # ------------------------------------------------------------- helpers

    def _open_scan(self) -> ScanFile:
        if self._scan is None:
            self._scan = ScanFile.open(self.scan_path, beside_writer=self.beside_writer)
        return self._scan

    def _close_scan(self) -> None:
        if self._scan is not None:
            self._scan.close()
            self._scan = None

    def _section(self, section_id: str) -> SectionAnalysis:
        """The section's state in memory: made, or brought back from disk; others set aside."""
        with self._lock:
            section = self._sections.pop(section_id, None)
        if section is None:
            scan = self._open_scan()
            if self.settings is None:
                self.settings = settings_of_scan(scan.plan_yaml, source=f"{self.scan_path.name}:/plan")
            applied = self.applied_calibration(section_id)
            section = _new_section(scan, section_id, self.settings, calibration=applied)
            if section_id in self._set_aside:
                assert self._spill is not None
                section.load_state(self._spill[section_id]["state"])
        with self._lock:
            self._sections[section_id] = section  # most recently used last
            self._set_aside.discard(section_id)
            while len(self._sections) > self.sections_in_memory:
                self._set_aside_section(next(iter(self._sections)))
        return section

    @property
    def calibration(self) -> ScanCalibration | None:
        """The scan file's calibration (read once; None for a file without one)."""
        if not self._calibration_read:
            try:
                self._calibration = scan_calibration(self._open_scan())
            except CalibrationError as e:
                logger.warning("%s: calibration not used: %s", self.scan_path.name, e)
                self._calibration = None
            self._calibration_read = True
        return self._calibration

    def applied_calibration(self, section_id: str) -> AppliedCalibration:
        """What the analysis of a section applies (decided once per channel set, tile shape and pixel size).

        Warnings (what could not be calibrated and what is done instead) are
        logged once.
        """
        scan = self._open_scan()
        if self.settings is None:
            self.settings = settings_of_scan(scan.plan_yaml, source=f"{self.scan_path.name}:/plan")
        reader = scan.section(section_id)
        affine = reader.pixel_affine_um
        key = (
            reader.channel_names,
            reader.tile_shape_px,
            tuple(affine.ravel().tolist()),
            reader.pixel_size_um,
        )
        applied = self._applied.get(key)
        if applied is None:
            applied = scan_applied_calibration(
                scan, reader, self.settings, calibration=self.calibration, plan_dir=self.scan_path.parent
            )
            self._applied[key] = applied
            for line in applied.warnings:
                logger.warning("%s: %s", self.scan_path.name, line)
        return applied

    def _set_aside_section(self, section_id: str) -> None:
        """Move a section's state (and its current results, for snapshots) to the spill file."""
        section = self._sections[section_id]
        spill = self._spill_file()
        if section_id in spill:
            del spill[section_id]
        group = spill.create_group(section_id)
        section.save_state(group.create_group("state"))
        if not self._finalizing:  # while the results are written, no snapshot is answered
            try:
                res = section.results(final=False)
            except ValueError as e:  # no tissue yet: no results to show, the state is kept
                logger.debug("section %s set aside without results: %s", section_id, e)
            else:
                section.write(group.create_group("results"), res)
        spill.flush()
        del self._sections[section_id]
        self._live_regions.pop(section_id, None)
        self._set_aside.add(section_id)
        self.n_set_aside += 1

    def _spill_file(self) -> h5py.File:
        if self._spill is None:
            fd, name = tempfile.mkstemp(prefix=f".{self.scan_path.stem}-analysis-", suffix=".h5")
            os.close(fd)
            self._spill_path = Path(name)
            self._spill = h5py.File(self._spill_path, "w")
        return self._spill


# ---------------------------------------------------------------- offline


def _pass_segmentation(plan_yaml: str, settings: AnalysisSettings) -> AxonSegmentationSettings:
    """Segmentation of a pass's tiles: the plan's, with the adaptive pass's edge fraction if it sets one."""
    segmentation = segmentation_settings(settings)
    adaptive_settings = (yaml.safe_load(plan_yaml) or {}).get("adaptive") or {}
    edge = adaptive_settings.get("edge_fraction")
    return segmentation if edge is None else dataclasses.replace(segmentation, edge_fraction=float(edge))


def _tracer_index(plan_yaml: str, channel_names: Sequence[str]) -> int:
    """Index of the plan's tracer channel among a pass's channels."""
    plan = yaml.safe_load(plan_yaml) or {}
    tracer = next((c.get("preset") for c in plan.get("channels", []) if c.get("role") == "tracer"), None)
    if not isinstance(tracer, str) or tracer not in channel_names:
        raise ValueError(
            f"the plan's tracer channel {tracer!r} is not among the pass's {list(channel_names)}"
        )
    return list(channel_names).index(tracer)


def feed_done_tiles(analysis: ScanAnalysis, scan: ScanFile, section_ids: Iterable[str] | None = None) -> None:
    """Feed every done tile of a file's sections to an analysis, in tile-index order."""
    for sid in scan.section_ids if section_ids is None else section_ids:
        reader = scan.section(sid)
        for t in reader.done_indices():
            analysis.add_tile(sid, int(t), reader.read_tile(int(t)))


def analyze_scan(path: str | Path, *, settings: AnalysisSettings | None = None) -> dict[str, list[RegionRow]]:
    """Rerun the analysis of a finished scan file; write its ``analysis/`` groups and region CSV.

    The same code and numbers as the live analysis: :meth:`ScanAnalysis.finalize`
    feeds every done tile in tile-index order, section by section.

    Parameters
    ----------
    path : path of the scan file (not open for writing elsewhere)
    settings : AnalysisSettings, optional
        Default: the plan's ``analysis:`` settings stored in the file.

    Returns
    -------
    dict of section id → list of RegionRow
    """
    path = Path(path)
    if path.is_file() and in_use(path):
        raise StorageError(
            f"{path} is in use (a running scan writes it, or a program has it open); analyse it once "
            "that scan has ended or the program has closed it"
        )
    with ScanFile.open(path) as scan:  # checks the format and says what is wrong
        if settings is None:  # a bad plan is one error, not one per tile
            settings = settings_of_scan(scan.plan_yaml, source=f"{path.name}:/plan")
    return ScanAnalysis(path, settings=settings).finalize()


def analyze_section_into(
    path: str | Path, section_id: str, out_path: str | Path, *, settings: AnalysisSettings | None = None
) -> list[RegionRow] | None:
    """Analyse one section of a finished scan, opened read-only; write its results into ``out_path``.

    For parallel re-analysis (:func:`analysis.distributed.analyze_many`): the
    scan file is only read, and the section's ``analysis`` group is written
    into a new HDF5 file ``out_path`` (group ``/analysis``), which
    :func:`merge_section_results` copies into the scan file. The numbers are
    those of :func:`analyze_scan` (same code, tile-index order).

    Returns
    -------
    The section's region table, or None (with a warning) if it shows no tissue.
    """
    analysis = ScanAnalysis(path, settings=settings)
    try:
        scan = analysis._open_scan()
        feed_done_tiles(analysis, scan, [section_id, *scan.pass_keys(section_id)])
        section = analysis.section(section_id) if section_id in analysis.section_ids else None
        results = None if section is None else analysis._final_results(scan, section)
        if results is None or section is None:
            return None
        with h5py.File(out_path, "w") as out:
            section.write(out.create_group("analysis"), results)
        return results.table
    finally:
        analysis.close()


def merge_section_results(path: str | Path, parts: Mapping[str, Path | None]) -> Path:
    """Copy sections' results written by :func:`analyze_section_into` into the scan file; write its CSV.

    Parameters
    ----------
    path : the scan file (opened for writing here, by this process only)
    parts : section id → the file its results were written to (None: no results)

    Returns
    -------
    The region CSV written beside the scan file.
    """
    with h5py.File(path, "r+") as f:
        for sid, part in parts.items():
            if part is None:
                continue
            group = f["sections"][sid]
            if "analysis" in group:
                del group["analysis"]
            with h5py.File(part, "r") as src:
                src.copy(src["analysis"], group, name="analysis")
        write_calibration_record(
            f, calibration_report(ScanFile(f, Path(path), int(f.attrs["format_version"])))
        )
    return write_scan_region_csv(path)
