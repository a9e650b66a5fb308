"""Streaming analysis of a scan: a runner output with its own thread, and the same analysis offline.

Live
----
:class:`AnalysisWorker` is an extra output of the scan controller (an
object with pymmcore-plus' ``sequenceStarted`` / ``frameReady`` /
``sequenceFinished``). Its ``frameReady`` runs on the runner's relay thread,
after the scan writer has stored the frame, and only collects the frames of
the current tile; once a tile has all its channel × z frames it is put on a
bounded queue with ``put_nowait``. If the queue is full the tile is *not*
waited for: it is remembered as skipped, and the worker thread reads it back
from the scan file later (when it has caught up, and at the end). A set of
analysed tiles makes every done tile analysed exactly once.

The worker thread corrects, segments and places each tile
(:class:`SectionAnalysis`) and publishes ``maps_updated(section_id, rows)``
at most every :data:`MIN_UPDATE_INTERVAL_S` (updates in between are
coalesced). An exception while analysing a tile is logged with the tile,
counted in :attr:`AnalysisWorker.faults` and the worker goes on.

The scan writer owns the HDF5 file for writing during the scan (one writer
per file), so the worker only reads while the scan runs. The caller runs
:meth:`AnalysisWorker.finalize` *after* the scan has ended (the controller
closed the file): it analyses any done tile still missing, writes each
section's ``analysis/`` group and ``<scan>.regions.csv`` beside the file.

Offline
-------
:func:`analyze_scan` feeds every done tile of a finished file through the
same :class:`SectionAnalysis`, in tile-index order, and writes the same
outputs. Live and offline tables are identical: tile ownership is fixed by
the planned tile centres (:class:`~analysis.maps.SectionAccumulator`), and
each tile's per-cell contribution is rounded to a dyadic grid (2⁻²⁴ pixel,
2⁻¹⁶ ADU) before it is added, so the float64 sums are exact and do not
depend on the order the tiles arrived in. (The anatomy mosaic, from which
the region masks come, is a feathered blend whose last bits may depend on
tile order; a region mask could only change if a mosaic value lay within a
rounding error of a threshold.)
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml
from numpy.typing import ArrayLike, NDArray
from psygnal import Signal, SignalGroup

from acquisition.storage import ScanFile, SectionReader, TileStatus
from analysis.maps import (
    Heatmaps,
    RegionRow,
    SectionAccumulator,
    heatmaps,
    region_table,
    write_analysis,
    write_region_csv,
)
from analysis.mosaic import SectionMosaic
from analysis.regions import SectionRegions, section_regions
from analysis.tile import AxonSegmentationSettings, correct_tile, segment_axons

__all__ = [
    "MIN_UPDATE_INTERVAL_S",
    "REGIONS_REFRESH_S",
    "AnalysisEvents",
    "AnalysisWorker",
    "SectionAnalysis",
    "SectionResults",
    "analyze_scan",
    "channel_roles",
    "region_csv_path",
]

logger = logging.getLogger(__name__)

#: Shortest time between two ``maps_updated`` emissions of one worker (s): ≤ 10 per second.
MIN_UPDATE_INTERVAL_S = 0.1

#: Live region masks (the slow part of a table) are recomputed at most this often (s),
#: and never more often than every 5× the time they take; tables in between use the last masks.
REGIONS_REFRESH_S = 1.0

# dyadic grids that make per-cell sums exact (see the module docstring)
_PX_QUANTUM = 2.0**-24
_SIGNAL_QUANTUM = 2.0**-16

TileKey = tuple[str, int]


class AnalysisEvents(SignalGroup):
    """Signals of an AnalysisWorker: ``maps_updated`` from its thread, ``finished`` from ``finalize``."""

    maps_updated = Signal(str, list)
    """``(section_id, rows)``: the section's region table (list of RegionRow) changed; ≤ 10 Hz.

    Live tables use region masks refreshed every :data:`REGIONS_REFRESH_S` or so;
    the final table (:meth:`AnalysisWorker.finalize`) uses masks of the whole section.
    """
    finished = Signal()
    """The worker analysed every tile it will analyse (emitted by :meth:`AnalysisWorker.finalize`)."""


def region_csv_path(scan_path: str | Path) -> Path:
    """The region CSV written beside a scan file: ``<scan>.regions.csv``."""
    p = Path(scan_path)
    return p.with_name(p.stem + ".regions.csv")


def channel_roles(plan_yaml: str, channel_names: Sequence[str]) -> tuple[int, int]:
    """Indices ``(tracer, anatomy)`` of a section's channels, from the plan stored in the scan.

    Parameters
    ----------
    plan_yaml : str
        ``ScanFile.plan_yaml``; its ``channels`` list gives ``preset`` and ``role``.
    channel_names : sequence of str
        The section's stored channel names (presets), in channel-index order.

    Raises
    ------
    ValueError
        If the plan does not name exactly one tracer and one anatomy channel among them.
    """
    plan = yaml.safe_load(plan_yaml) or {}
    roles = {str(ch.get("preset")): ch.get("role") for ch in plan.get("channels", [])}
    found: dict[str, int] = {}
    for i, name in enumerate(channel_names):
        role = roles.get(str(name))
        if role in ("tracer", "anatomy"):
            if role in found:
                raise ValueError(
                    f"two {role} channels in the plan: {channel_names[found[role]]!r} and {name!r}"
                )
            found[role] = i
    missing = [r for r in ("tracer", "anatomy") if r not in found]
    if missing:
        raise ValueError(
            f"the scan's plan names no {' and no '.join(missing)} channel among {list(channel_names)}"
        )
    return found["tracer"], found["anatomy"]


@dataclasses.dataclass(frozen=True)
class SectionResults:
    """Analysis results of one section.

    Attributes
    ----------
    section_id : str
    regions : SectionRegions
        Region masks on the analysis grid (from the anatomy mosaic).
    table : list of RegionRow
    maps : Heatmaps
    n_tiles_analysed : int
    """

    section_id: str
    regions: SectionRegions
    table: list[RegionRow]
    maps: Heatmaps
    n_tiles_analysed: int


def _quantised(a: NDArray[np.float64], quantum: float) -> NDArray[np.float64]:
    return np.round(a / quantum) * quantum


class SectionAnalysis:
    """Per-section analysis state: mosaic, accumulator, settings; fed tile by tile.

    Parameters
    ----------
    section_id : str
    tile_xy_um : (n_tiles, 2) array
        Planned tile centres (µm); they fix tile ownership (and are used as tile positions).
    tile_shape_px : (H, W)
    pixel_size_um : float
        Tile pixel size (µm).
    n_channels : int
    tracer_channel, anatomy_channel : int
        Channel indices.
    section_attrs : mapping
        Section attributes (``SectionReader.attrs``): ``orientation``, ``injection_side``,
        ``rostral_direction_deg``, ``lesion_epicenter_um``, ``region_polygons_um``.
    settings : AxonSegmentationSettings
    dark_offset_adu : float
        Camera dark offset subtracted from every channel (ADU).
    mosaic_pixel_um : float
        Target analysis-grid cell (µm).
    bin_um : float
        Heatmap bin (µm).
    channel_names : sequence of str
        Channel (preset) names, in tile order.
    """

    def __init__(
        self,
        *,
        section_id: str,
        tile_xy_um: ArrayLike,
        tile_shape_px: tuple[int, int],
        pixel_size_um: float,
        n_channels: int,
        tracer_channel: int,
        anatomy_channel: int,
        section_attrs: Mapping[str, Any] | None = None,
        settings: AxonSegmentationSettings | None = None,
        dark_offset_adu: float = 100.0,
        mosaic_pixel_um: float = 4.0,
        bin_um: float = 50.0,
        channel_names: Sequence[str] = (),
    ) -> None:
        self.section_id = str(section_id)
        self.channel_names = tuple(str(c) for c in channel_names)
        self.tile_xy_um = np.asarray(tile_xy_um, dtype=np.float64)
        self.tile_shape_px = (int(tile_shape_px[0]), int(tile_shape_px[1]))
        self.pixel_size_um = float(pixel_size_um)
        self.n_channels = int(n_channels)
        self.tracer_channel = int(tracer_channel)
        self.anatomy_channel = int(anatomy_channel)
        self.attrs = dict(section_attrs or {})
        self.settings = settings or AxonSegmentationSettings()
        self.dark_offset_adu = float(dark_offset_adu)
        self.bin_um = float(bin_um)
        h, w = self.tile_shape_px
        half = np.array([w, h], dtype=np.float64) * self.pixel_size_um / 2
        lo, hi = self.tile_xy_um.min(axis=0) - half, self.tile_xy_um.max(axis=0) + half
        self.mosaic = SectionMosaic(
            (lo[0], lo[1], hi[0], hi[1]),
            n_channels=self.n_channels,
            tile_pixel_size_um=self.pixel_size_um,
            mosaic_pixel_um=mosaic_pixel_um,
        )
        self.accumulator = SectionAccumulator.for_mosaic(
            self.mosaic, tile_centres_um=self.tile_xy_um, tile_shape=self.tile_shape_px
        )
        # one tile's contribution is computed here, rounded, then added to the accumulator
        self._scratch = SectionAccumulator.for_mosaic(
            self.mosaic, tile_centres_um=self.tile_xy_um, tile_shape=self.tile_shape_px
        )
        self.tiles_added: list[int] = []
        self._lock = threading.Lock()

    @classmethod
    def from_reader(
        cls,
        section: SectionReader,
        *,
        plan_yaml: str,
        settings: AxonSegmentationSettings | None = None,
        dark_offset_adu: float = 100.0,
        bin_um: float = 50.0,
    ) -> SectionAnalysis:
        """Analysis state for a section of a scan file (geometry, channel roles, attributes)."""
        tracer, anatomy = channel_roles(plan_yaml, section.channel_names)
        return cls(
            section_id=section.section_id,
            tile_xy_um=section.tile_xy_um,
            tile_shape_px=section.tile_shape_px,
            pixel_size_um=section.pixel_size_um,
            n_channels=len(section.channel_names),
            tracer_channel=tracer,
            anatomy_channel=anatomy,
            section_attrs=section.attrs,
            settings=settings,
            dark_offset_adu=dark_offset_adu,
            bin_um=bin_um,
            channel_names=section.channel_names,
        )

    def parameters(self) -> dict[str, Any]:
        """JSON-serialisable parameters of this analysis (written with the results)."""
        return {
            "segmentation": dataclasses.asdict(self.settings),
            "dark_offset_adu": self.dark_offset_adu,
            "tracer_channel": self.tracer_channel,
            "anatomy_channel": self.anatomy_channel,
            "mosaic_pixel_um": self.mosaic.pixel_size_um,
            "bin_um": self.bin_um,
            "z_projection": "max",
            "tile_position": "planned",
        }

    def add_tile(
        self, images: ArrayLike, *, tile_index: int, center_um: tuple[float, float] | None = None
    ) -> None:
        """Correct, segment and place one tile.

        Parameters
        ----------
        images : (C, Z, H, W) or (C, H, W) array
            Raw tile (ADU); several planes are max-projected.
        tile_index : int
            Index of the tile in the section.
        center_um : (x, y), optional
            Tile centre (µm); default the planned centre ``tile_xy_um[tile_index]``.
        """
        raw = np.asarray(images)
        if raw.ndim == 4:
            raw = raw.max(axis=1)
        if raw.ndim != 3 or raw.shape[0] != self.n_channels or raw.shape[1:] != self.tile_shape_px:
            raise ValueError(
                f"tile {self.section_id}/{tile_index}: expected ({self.n_channels}, Z, "
                f"{self.tile_shape_px[0]}, {self.tile_shape_px[1]}) images, got {np.shape(images)}"
            )
        if center_um is None:
            cx, cy = self.tile_xy_um[int(tile_index)]
            center_um = (float(cx), float(cy))
        corrected = np.stack([correct_tile(ch, dark_offset_adu=self.dark_offset_adu) for ch in raw])
        tracer = corrected[self.tracer_channel]
        axons = segment_axons(tracer, pixel_size_um=self.pixel_size_um, settings=self.settings)
        with self._lock:
            self.mosaic.add_tile(corrected, center_um=center_um, pixel_size_um=self.pixel_size_um)
            self._add_exact(axons.mask, tracer, center_um=center_um, tile_index=int(tile_index))
            self.tiles_added.append(int(tile_index))

    def _add_exact(
        self,
        mask: NDArray[np.bool_],
        tracer: NDArray[np.float32],
        *,
        center_um: tuple[float, float],
        tile_index: int,
    ) -> None:
        s, acc = self._scratch, self.accumulator
        s.add_tile(mask, tracer, center_um=center_um, pixel_size_um=self.pixel_size_um, tile_index=tile_index)
        h, w = self.tile_shape_px
        p = self.pixel_size_um
        # cells the tile can touch (one cell of margin for rounding)
        c0 = int(np.floor((center_um[0] - w / 2 * p - acc.origin_um[0]) / acc.cell_um)) - 1
        r0 = int(np.floor((center_um[1] - h / 2 * p - acc.origin_um[1]) / acc.cell_um)) - 1
        c1 = int(np.floor((center_um[0] + w / 2 * p - acc.origin_um[0]) / acc.cell_um)) + 2
        r1 = int(np.floor((center_um[1] + h / 2 * p - acc.origin_um[1]) / acc.cell_um)) + 2
        at = (slice(max(r0, 0), max(r1, 0)), slice(max(c0, 0), max(c1, 0)))
        for name, quantum in (
            ("imaged_px", _PX_QUANTUM),
            ("axon_px", _PX_QUANTUM),
            ("tracer_sum", _SIGNAL_QUANTUM),
        ):
            part = getattr(s, name)
            getattr(acc, name)[at] += _quantised(part[at], quantum)
            part[at] = 0.0
        acc.n_tiles_added += 1

    def regions(self) -> SectionRegions:
        """Region masks from the anatomy mosaic of the tiles added so far (≈ 0.3 s for a Th7 section).

        Raises
        ------
        ValueError
            If the mosaic shows no tissue yet (e.g. only glass tiles were added).
        """
        with self._lock:
            anatomy = self.mosaic.image(self.anatomy_channel)
        a = self.attrs
        epicenter = a.get("lesion_epicenter_um")
        return section_regions(
            anatomy,
            origin_um=self.mosaic.origin_um,
            pixel_size_um=self.mosaic.pixel_size_um,
            orientation=a.get("orientation") or "coronal",
            injection_side=a.get("injection_side") or "left",
            rostral_direction_deg=float(a.get("rostral_direction_deg") or 180.0),
            epicenter_um=None if epicenter is None else (float(epicenter[0]), float(epicenter[1])),
            user_polygons_um=a.get("region_polygons_um") or None,
        )

    def table(self, regions: SectionRegions) -> list[RegionRow]:
        """Region table of the tiles added so far, on the given region masks (cheap: ≈ 10 ms)."""
        with self._lock:
            return region_table(self.accumulator, regions.masks)

    def results(self) -> SectionResults:
        """Regions from the anatomy mosaic, region table and heatmaps of what was added so far."""
        regions = self.regions()
        with self._lock:
            n = len(self.tiles_added)
            table = region_table(self.accumulator, regions.masks)
            maps = heatmaps(self.accumulator, bin_um=self.bin_um, tissue_mask=regions.masks["section"])
        return SectionResults(self.section_id, regions, table, maps, n)

    def write(self, h5_group: h5py.Group, results: SectionResults) -> None:
        """Write ``results`` into a section's ``analysis`` group (open for writing)."""
        with self._lock:
            acc = _copy_accumulator(self.accumulator)
            mosaic = np.stack([self.mosaic.image(c) for c in range(self.n_channels)])
        write_analysis(
            h5_group,
            maps=results.maps,
            masks=results.regions.masks,
            table=results.table,
            parameters={**self.parameters(), "n_tiles_analysed": results.n_tiles_analysed},
            accumulator=acc,
            mosaic=mosaic,
            mosaic_origin_um=self.mosaic.origin_um,
            mosaic_pixel_um=self.mosaic.pixel_size_um,
            channel_names=self.channel_names,
        )

    def snapshot(self, regions: SectionRegions | None = None) -> LiveSnapshot:
        """A consistent copy of the section's state now, safe to use from another thread.

        Parameters
        ----------
        regions : SectionRegions, optional
            Region masks to compute the table and the tissue-restricted heatmap
            on; without them the table is empty and the heatmap counts every
            imaged cell.
        """
        with self._lock:
            anatomy = self.mosaic.image(self.anatomy_channel)
            tracer = self.mosaic.image(self.tracer_channel)
            tissue = None if regions is None else regions.masks.get("section")
            maps = heatmaps(self.accumulator, bin_um=self.bin_um, tissue_mask=tissue)
            table = [] if regions is None else region_table(self.accumulator, regions.masks)
            n = len(self.tiles_added)
        return LiveSnapshot(
            section_id=self.section_id,
            anatomy_mosaic=anatomy,
            tracer_mosaic=tracer,
            mosaic_origin_um=self.mosaic.origin_um.copy(),
            mosaic_pixel_um=self.mosaic.pixel_size_um,
            maps=maps,
            regions=regions,
            table=table,
            n_tiles_analysed=n,
            n_tiles=len(self.tile_xy_um),
        )


@dataclasses.dataclass(frozen=True)
class LiveSnapshot:
    """A section's live analysis state, copied (see :meth:`AnalysisWorker.snapshot`).

    Attributes
    ----------
    section_id : str
    anatomy_mosaic, tracer_mosaic : (rows, cols) float32
        Reduced mosaics (corrected values), NaN where nothing is imaged yet.
    mosaic_origin_um : (2,) float64
        Stage (x, y) of the mosaics' top-left corner.
    mosaic_pixel_um : float
        Mosaic pixel size (µm); the region masks use the same grid.
    maps : Heatmaps
        % axonal area and mean tracer per bin (NaN where nothing imaged).
    regions : SectionRegions or None
        The latest live region masks (None before the first could be computed).
    table : list of RegionRow
        Region table on those masks (empty without masks).
    n_tiles_analysed, n_tiles : int
    """

    section_id: str
    anatomy_mosaic: NDArray[np.float32]
    tracer_mosaic: NDArray[np.float32]
    mosaic_origin_um: NDArray[np.float64]
    mosaic_pixel_um: float
    maps: Heatmaps
    regions: SectionRegions | None
    table: list[RegionRow]
    n_tiles_analysed: int
    n_tiles: int


def _copy_accumulator(acc: SectionAccumulator) -> SectionAccumulator:
    out = SectionAccumulator(
        origin_um=acc.origin_um,
        cell_um=acc.cell_um,
        shape=acc.shape,
        tile_centres_um=acc.tile_centres_um,
        tile_shape=acc.tile_shape,
        tile_pixel_size_um=acc.tile_pixel_size_um,
    )
    out.imaged_px[...] = acc.imaged_px
    out.axon_px[...] = acc.axon_px
    out.tracer_sum[...] = acc.tracer_sum
    out.n_tiles_added = acc.n_tiles_added
    return out


def _results_of(sections: Mapping[str, SectionAnalysis]) -> dict[str, SectionResults]:
    """Each section's results; a section with no tissue imaged yet is left out, with a warning."""
    results = {}
    for sid, sec in sections.items():
        try:
            results[sid] = sec.results()
        except ValueError as e:  # e.g. no tissue in the tiles imaged so far
            n = len(sec.tiles_added)
            logger.warning("section %s: no analysis (%s) from %d analysed tiles", sid, e, n)
    return results


def _write_outputs(
    path: Path, sections: Mapping[str, SectionAnalysis], results: Mapping[str, SectionResults]
) -> None:
    with h5py.File(path, "r+") as f:
        for sid, res in results.items():
            group = f["sections"][sid].require_group("analysis")
            sections[sid].write(group, res)
    write_region_csv(region_csv_path(path), {sid: res.table for sid, res in results.items()})


# ---------------------------------------------------------------- live worker


@dataclasses.dataclass(frozen=True)
class AnalysisFault:
    """An exception met while analysing one tile."""

    section_id: str
    tile_index: int
    message: str


_STOP = object()


class AnalysisWorker:
    """Live analysis beside acquisition: a runner output feeding a bounded queue and its own thread.

    Pass it to ``ScanController(core, plan, extra_outputs=[worker])``; it
    starts its thread at ``sequenceStarted`` (or call :meth:`start`). After
    the scan has ended and closed the file, call :meth:`finalize` to analyse
    what is left, write the ``analysis/`` groups and the region CSV::

        worker = AnalysisWorker(plan.output)
        ScanController(core, plan, extra_outputs=[worker]).run()
        tables = worker.finalize()

    Parameters
    ----------
    scan_path : path
        The scan file being written.
    settings : AxonSegmentationSettings
    dark_offset_adu : float
        Camera dark offset (ADU), e.g. the camera's ``DarkOffset_ADU`` (100 on the demo).
    queue_size : int
        Complete tiles waiting for analysis; beyond, tiles are re-read from the file later.
    bin_um : float
        Heatmap bin (µm).

    Attributes
    ----------
    events : AnalysisEvents
    analysis_counts : Counter of (section_id, tile_index)
        How many times each tile was analysed (1 for every done tile).
    skipped : int
        Tiles that did not fit in the queue (re-read from the file).
    faults : list of AnalysisFault
    n_updates : int
        ``maps_updated`` emissions.
    """

    def __init__(
        self,
        scan_path: str | Path,
        *,
        settings: AxonSegmentationSettings | None = None,
        dark_offset_adu: float = 100.0,
        queue_size: int = 8,
        bin_um: float = 50.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be ≥ 1, got {queue_size}")
        self.scan_path = Path(scan_path)
        self.settings = settings or AxonSegmentationSettings()
        self.dark_offset_adu = float(dark_offset_adu)
        self.bin_um = float(bin_um)
        self.events = AnalysisEvents()
        self.analysis_counts: Counter[TileKey] = Counter()
        self.skipped = 0
        self.faults: list[AnalysisFault] = []
        self.n_updates = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._frames: dict[TileKey, dict[tuple[int, int], np.ndarray]] = {}
        self._frames_per_tile = (1, 1)
        self._to_reread: set[TileKey] = set()
        self._reread_lock = threading.Lock()
        self._analysed: set[TileKey] = set()
        self._sections: dict[str, SectionAnalysis] = {}
        self._scan: ScanFile | None = None
        self._thread: threading.Thread | None = None
        self._dirty: dict[str, None] = {}  # ordered set of sections with unpublished changes
        self._last_update = -np.inf
        # live region masks per section: (regions, when computed, how long it took)
        self._live_regions: dict[str, tuple[SectionRegions, float, float]] = {}
        self._finalized: dict[str, SectionResults] | None = None

    # ---------------------------------------------------------- runner output

    def sequenceStarted(self, sequence: Any, meta: Any = None) -> None:
        """Start the worker thread (if not started yet)."""
        self._frames.clear()
        self._frames_per_tile = _frames_per_tile(sequence)
        if self._thread is None:
            self.start()

    def frameReady(self, img: np.ndarray, event: Any, meta: Any = None) -> None:
        """Collect one frame; queue its tile once complete, or remember it for re-reading. Never blocks."""
        name = event.pos_name or ""
        sid, _, index = name.rpartition("/")
        if not sid or not index.isdigit():
            logger.error("frame of stage position %r ignored: not named '<section>/<tile>'", name)
            return
        key = (sid, int(index))
        c, z = int(event.index.get("c", 0)), int(event.index.get("z", 0))
        frames = self._frames.setdefault(key, {})
        frames[(c, z)] = img
        n_c, n_z = self._frames_per_tile
        if len(frames) < n_c * n_z:
            return
        del self._frames[key]
        tile = np.stack([np.stack([frames[(ci, zi)] for zi in range(n_z)]) for ci in range(n_c)])
        try:
            self._queue.put_nowait((key, tile))
        except queue.Full:
            self.skipped += 1
            with self._reread_lock:
                self._to_reread.add(key)

    def sequenceFinished(self, sequence: Any) -> None:
        """Tiles still collecting frames are dropped (not done); the thread goes on with the queue."""
        self._frames.clear()

    # ---------------------------------------------------------------- control

    def start(self) -> None:
        """Start the worker thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="cordscope-analysis", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish: it analyses what is queued and the tiles to re-read, then ends."""
        if self._thread is None:
            return
        self._queue.put(_STOP)  # may wait for the worker to take a tile: never called from the runner

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the thread to end (after :meth:`stop`)."""
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise TimeoutError(f"analysis still running after {timeout_s} s")

    def finalize(self, *, timeout_s: float | None = None) -> dict[str, list[RegionRow]]:
        """After the scan: finish, analyse done tiles still missing, write results; return the tables.

        Must be called once the scan controller has closed the file (e.g.
        after ``ScanController.run()`` returned); writes
        ``sections/<id>/analysis/`` and ``<scan>.regions.csv``, then emits
        ``events.finished``.
        """
        self.stop()
        self.join(timeout_s)
        with ScanFile.open(self.scan_path) as scan:
            self._scan = scan
            try:
                for sid in scan.section_ids:
                    for t in scan.section(sid).done_indices():
                        self._analyse_from_file((sid, int(t)))
                plan_yaml = scan.plan_yaml
                for sid in scan.section_ids:  # sections with no analysed tile get an empty table
                    if sid not in self._sections:
                        self._sections[sid] = self._new_section(scan.section(sid), plan_yaml)
            finally:
                self._scan = None
        results = _results_of(self._sections)
        _write_outputs(self.scan_path, self._sections, results)
        self._finalized = results
        self.events.finished.emit()
        return {sid: r.table for sid, r in results.items()}

    def section(self, section_id: str) -> SectionAnalysis:
        """The running analysis of one section (its mosaic, accumulator, settings)."""
        return self._sections[section_id]

    @property
    def section_ids(self) -> list[str]:
        """Sections with at least one tile analysed (or all of them, after :meth:`finalize`)."""
        return list(self._sections)

    def snapshot(self, section_id: str) -> LiveSnapshot | None:
        """A thread-safe copy of one section's live mosaic, heatmap, region masks and table.

        For a viewer polling on a timer (e.g. the GUI at a few Hz, from its own
        thread): mosaics and maps are copies, the masks are the latest live ones
        (or the final ones after :meth:`finalize`). Costs a few ms for a coronal
        section. Returns None if no tile of the section was analysed yet.
        """
        section = self._sections.get(section_id)
        if section is None:
            return None
        if self._finalized is not None and section_id in self._finalized:
            regions: SectionRegions | None = self._finalized[section_id].regions
        else:
            live = self._live_regions.get(section_id)
            regions = None if live is None else live[0]
        return section.snapshot(regions)

    def results(self) -> dict[str, SectionResults]:
        """Results per section (the final ones after :meth:`finalize`, else computed now)."""
        if self._finalized is not None:
            return dict(self._finalized)
        return {sid: sec.results() for sid, sec in list(self._sections.items())}

    @property
    def analysed_tiles(self) -> set[TileKey]:
        """Tiles analysed so far."""
        return set(self._analysed)

    # ------------------------------------------------------------- the thread

    def _run(self) -> None:
        try:
            while True:
                try:
                    item = self._queue.get(timeout=MIN_UPDATE_INTERVAL_S / 2)
                except queue.Empty:
                    # caught up: read back skipped tiles, publish coalesced updates
                    if not self._reread_one():
                        self._publish()
                    continue
                if item is _STOP:
                    break
                key, tile = item
                self._analyse(key, lambda tile=tile: tile)
                self._publish()
            self._reread_all()
            self._publish()
        finally:
            if self._scan is not None:
                self._scan.close()
                self._scan = None

    def _reread_all(self) -> None:
        while self._to_reread:
            self._reread_one()

    def _reread_one(self) -> bool:
        with self._reread_lock:
            if not self._to_reread:
                return False
            key = min(self._to_reread)
            self._to_reread.discard(key)
        self._analyse_from_file(key)
        self._publish()
        return True

    def _open_scan(self) -> ScanFile:
        if self._scan is None:
            self._scan = ScanFile.open(self.scan_path)
        return self._scan

    def _analyse_from_file(self, key: TileKey) -> None:
        if key in self._analysed:
            return

        def read() -> np.ndarray | None:
            sec = self._open_scan().section(key[0])
            if sec.tile_status[key[1]] != TileStatus.DONE:
                return None
            return sec.read_tile(key[1])

        self._analyse(key, read)

    def _new_section(self, reader: SectionReader, plan_yaml: str) -> SectionAnalysis:
        return SectionAnalysis.from_reader(
            reader, plan_yaml=plan_yaml, settings=self.settings, dark_offset_adu=self.dark_offset_adu,
            bin_um=self.bin_um,
        )  # fmt: skip

    def _section(self, section_id: str) -> SectionAnalysis:
        if section_id not in self._sections:
            scan = self._open_scan()
            self._sections[section_id] = self._new_section(scan.section(section_id), scan.plan_yaml)
        return self._sections[section_id]

    def _analyse(self, key: TileKey, get_tile: Any) -> None:
        sid, t = key
        if key in self._analysed:
            return
        try:
            tile = get_tile()
            if tile is None:
                return  # not done (yet): nothing to analyse
            self._section(sid).add_tile(tile, tile_index=t)
        except Exception as e:  # an analysis fault never stops the scan
            logger.exception("analysis of tile %s/%s failed", sid, t)
            self.faults.append(AnalysisFault(sid, t, f"{type(e).__name__}: {e}"))
        # a tile is analysed once, even when its analysis failed (it is not retried)
        self._analysed.add(key)
        self.analysis_counts[key] += 1
        self._dirty[sid] = None

    def _publish(self) -> None:
        if not self._dirty:
            return
        now = time.monotonic()
        if now - self._last_update < MIN_UPDATE_INTERVAL_S:
            return
        sid = next(iter(self._dirty))
        del self._dirty[sid]
        self._last_update = now
        section = self._sections[sid]
        try:
            regions = self._live_regions.get(sid)
            if regions is None or now - regions[1] >= max(REGIONS_REFRESH_S, 5 * regions[2]):
                t0 = time.monotonic()
                masks = section.regions()
                regions = (masks, t0, time.monotonic() - t0)
                self._live_regions[sid] = regions
            rows = section.table(regions[0])
        except ValueError as e:  # e.g. no tissue in the first tiles yet
            logger.debug("no live region table for section %s yet: %s", sid, e)
            return
        except Exception:
            logger.exception("live region table of section %s failed", sid)
            return
        self.n_updates += 1
        # the interval counts from the emission: computing the masks may have taken a while
        self._last_update = time.monotonic()
        self.events.maps_updated.emit(sid, rows)


def _frames_per_tile(sequence: Any) -> tuple[int, int]:
    """(channels, planes) per tile of an MDA sequence (read duck-typed: no useq import)."""
    n_c = max(1, len(getattr(sequence, "channels", ()) or ()))
    z_plan = getattr(sequence, "z_plan", None)
    n_z = max(1, len(list(z_plan))) if z_plan is not None else 1
    return n_c, n_z


# ---------------------------------------------------------------- offline


def analyze_scan(
    path: str | Path,
    *,
    settings: AxonSegmentationSettings | None = None,
    dark_offset_adu: float = 100.0,
    bin_um: float = 50.0,
) -> dict[str, list[RegionRow]]:
    """Rerun the analysis of a finished scan file; write its ``analysis/`` groups and region CSV.

    Every done tile is fed through :class:`SectionAnalysis` in tile-index
    order: the same code and numbers as the live :class:`AnalysisWorker`.
    A tile whose analysis raises is logged with its id and left out.

    Parameters
    ----------
    path : path of the scan file (not open for writing elsewhere)
    settings, dark_offset_adu, bin_um : as for :class:`AnalysisWorker`

    Returns
    -------
    dict of section id → list of RegionRow
    """
    path = Path(path)
    sections: dict[str, SectionAnalysis] = {}
    with ScanFile.open(path) as scan:
        plan_yaml = scan.plan_yaml
        for sid in scan.section_ids:
            reader = scan.section(sid)
            sec = SectionAnalysis.from_reader(
                reader, plan_yaml=plan_yaml, settings=settings, dark_offset_adu=dark_offset_adu, bin_um=bin_um
            )
            sections[sid] = sec
            for t in reader.done_indices():
                try:
                    sec.add_tile(reader.read_tile(int(t)), tile_index=int(t))
                except Exception:
                    logger.exception("analysis of tile %s/%s failed", sid, int(t))
    results = _results_of(sections)
    _write_outputs(path, sections, results)
    return {sid: r.table for sid, r in results.items()}
