"""The scan controller: a plan in, a complete HDF5 scan file out, unattended.

The controller is the acquisition step of a scan session
(:class:`acquisition.session.ScanSession` adds the live analysis and the
final results around it). It prepares a scan (validates the plan against the
hardware before anything moves, sets the objective, builds the focus map,
lays out the file) and then runs it with pymmcore-plus' MDA runner.
CordScope adds to that runner rather than replacing it:

- :class:`~acquisition.engine.ScanEngine` is pymmcore-plus' ``MDAEngine``
  with a watchdog and retries on every device call;
- :class:`ScanOutput` is an ordinary runner output: it hands frames to the
  HDF5 writer (:class:`acquisition.storage.MDAWriterOutput`), whose "tile
  stored" event (:class:`acquisition.storage.TileStored`) becomes progress
  and ``events.tile_stored`` for whoever subscribes (the live analysis).

Pause and abort set flags that take effect between events, as the runner
does. A scan file is resumable at any point: ``ScanController.resume(path)``
acquires only the tiles that are not done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import shapely
import useq
from psygnal import Signal, SignalGroup
from pymmcore_plus import CMMCorePlus
from pymmcore_plus.metadata import summary_metadata

from .calibration import ScanCalibrationInputs, plan_calibration_inputs
from .engine import AbortRequested, DeviceCalls, DeviceTimeoutError, ScanEngine, TileRef, _one_line
from .errors import CordScopeError
from .pixel_geometry import covered_extent_um, pixel_size_from_affine
from .plan import (
    ChannelSetting,
    PlannedTile,
    ScanPlan,
    pixel_affine_for_objective,
    plan_from_yaml,
    resolve_plan_groups,
    section_tiles,
    sequence_for_tiles,
    tile_size_um,
    validate_plan,
)
from .plan.compile import minimal_cover
from .retake import NeighbourSharpness, RetakeRunner
from .roles import pixel_affine_um
from .storage import (
    EventKind,
    MDAWriterOutput,
    NeedsRepair,
    ScanFile,
    ScanWriter,
    SectionLayout,
    StorageError,
    TileStatus,
    TileStored,
    parse_tile_name,
    pass_key,
    tile_name,
)
from .storage.repair import describe_repairs

__all__ = [
    "DeviceTimeoutError",
    "ScanAbortedError",
    "ScanController",
    "ScanEngine",
    "ScanEvents",
    "ScanProgress",
    "ScanResult",
    "SectionProgress",
    "read_stored_plan",
]

logger = logging.getLogger(__name__)


ScanState = Literal["idle", "preparing", "focusing", "scanning", "paused", "finished", "aborted", "failed"]

#: After this many tiles in a row fail on a watchdog timeout, the device is
#: taken as dead and the scan stops (resumable) instead of failing every tile.
MAX_CONSECUTIVE_TIMEOUTS = 3


class ScanAbortedError(CordScopeError):
    """The scan stopped before its end (user abort or a dead device)."""


# ----------------------------------------------------------------- progress


@dataclass(frozen=True)
class SectionProgress:
    """Tiles of one section: done, failed, total."""

    done: int
    failed: int
    total: int


@dataclass(frozen=True)
class ScanProgress:
    """Where a scan is, for progress bars and the GUI.

    Attributes
    ----------
    state : str
        One of idle, preparing, focusing, scanning, paused, finished, aborted, failed.
    tiles_done, tiles_failed, tiles_total : int
        Over the whole scan file (tiles done in earlier runs count).
    sections : Mapping[str, SectionProgress]
        Per section, in plan order.
    current_section : str or None
        Section of the tile being acquired.
    elapsed_s : float
        Time since this run started.
    eta_s : float or None
        Estimated time to finish, from this run's time per tile.
    """

    state: ScanState
    tiles_done: int
    tiles_failed: int
    tiles_total: int
    sections: Mapping[str, SectionProgress]
    current_section: str | None
    elapsed_s: float
    eta_s: float | None


@dataclass(frozen=True)
class ScanResult:
    """How a scan run ended."""

    path: Path
    state: ScanState
    tiles_done: int
    tiles_failed: int
    tiles_total: int
    sections: Mapping[str, SectionProgress]
    elapsed_s: float
    file_size_bytes: int
    message: str = ""
    tiles_retaken: int = 0
    """Tiles refocused and imaged again because they were blurred (see :mod:`acquisition.retake`)."""
    retake_time_s: float = 0.0
    """Time the sharpness checks' probes, refocusing and retakes took (s)."""
    retried_calls: int = 0
    """Device calls of this run that failed and were retried (focus map included)."""

    @property
    def complete(self) -> bool:
        """True when the scan finished with every tile done."""
        return self.state == "finished" and self.tiles_done == self.tiles_total


class ScanEvents(SignalGroup):
    """Signals of a scan; emitted from the scan's threads (connect queued in Qt)."""

    state_changed = Signal(str)
    progress = Signal(object)  # ScanProgress
    tile_stored = Signal(object)  # TileStored: a tile is complete on disk (the writer's event)
    tile_failed = Signal(str, int, str)  # section id, tile index, reason
    message = Signal(str, str)  # level ("info", "warning", "error"), text
    finished = Signal(object)  # ScanResult


# ------------------------------------------------------------------- output


class ScanOutput:
    """Runner output: frames to the HDF5 writer; its "tile stored" events and tile failures out.

    Runs in the runner's relay thread, which therefore owns the open HDF5
    file during the run. Tile failures reported by the engine (MDA thread)
    are queued and written from this thread, after the frames before them.
    """

    def __init__(
        self,
        writer: ScanWriter,
        *,
        on_tile_stored: Callable[[TileStored], None],
        on_storage_error: Callable[[StorageError], None],
    ) -> None:
        self._writer = writer
        self._writer_output = MDAWriterOutput(writer, on_error=on_storage_error)
        self._writer_output.events.tile_stored.connect(on_tile_stored)
        self._failures: queue.SimpleQueue[tuple[TileRef, str, Mapping[str, Any]]] = queue.SimpleQueue()

    def report_failure(self, tile: TileRef, reason: str, meta: Mapping[str, Any]) -> None:
        """Queue a failed tile (from any thread) to be written in order."""
        self._failures.put((tile, reason, meta))

    def _drain(self) -> None:
        while True:
            try:
                tile, reason, meta = self._failures.get_nowait()
            except queue.Empty:
                break
            try:
                if self._writer.tile_status(tile.section_id, tile.tile_index) != TileStatus.DONE:
                    self._writer.fail_tile(tile.section_id, tile.tile_index, reason=reason, meta=meta)
            except StorageError as e:
                logger.error("%s", e)

    def sequenceStarted(self, sequence: useq.MDASequence, meta: Any = None) -> None:
        """Start the writer's run."""
        self._writer_output.sequenceStarted(sequence, meta)
        self._drain()

    def frameReady(self, img: np.ndarray, event: useq.MDAEvent, meta: Mapping[str, Any]) -> None:
        """Write the frame (the writer reports the tile once it is complete)."""
        self._writer_output.frameReady(img, event, meta)
        self._drain()

    def sequencePauseToggled(self, paused: bool) -> None:
        """Log pause / resume."""
        self._writer_output.sequencePauseToggled(paused)

    def sequenceCanceled(self, sequence: useq.MDASequence) -> None:
        """Log the abort."""
        self._writer_output.sequenceCanceled(sequence)

    def sequenceFinished(self, sequence: useq.MDASequence) -> None:
        """Write queued failures, then finish the writer's run."""
        self._drain()
        self._writer_output.sequenceFinished(sequence)
        self._drain()


def _tile_ref_from_name(event: useq.MDAEvent) -> TileRef:
    try:
        return TileRef(*parse_tile_name(event.pos_name or ""))
    except ValueError as e:
        raise StorageError(f"stage position: {e}") from None


# --------------------------------------------------------------- controller


@dataclass
class _Counters:
    totals: dict[str, int] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)
    failed: set[TileRef] = field(default_factory=set)  # failed and not (yet) redone
    finished_this_run: int = 0  # done or failed in this run
    to_do_this_run: int = 0
    retaken: int = 0
    retake_time_s: float = 0.0


class ScanController:
    """Runs one scan plan on a core into one HDF5 file.

    Parameters
    ----------
    core : CMMCorePlus
        A loaded core (see :func:`acquisition.hardware.build_core`).
    plan : ScanPlan
        A plan; validated against ``core`` before anything moves.
    overwrite : bool
        Replace an existing output file.
    stage_limits_um : optional
        ``((xmin, xmax), (ymin, ymax))`` of the XY stage for validation.

    Examples
    --------
    >>> controller = ScanController(core, plan)  # doctest: +SKIP
    >>> controller.events.progress.connect(print)  # doctest: +SKIP
    >>> result = controller.run()  # blocking (a ScanSession runs it in the background)  # doctest: +SKIP
    """

    def __init__(
        self,
        core: CMMCorePlus,
        plan: ScanPlan,
        *,
        overwrite: bool = False,
        stage_limits_um: tuple[tuple[float, float], tuple[float, float]] | None = None,
        _resume_path: Path | None = None,
    ) -> None:
        self.core = core
        self.plan = plan
        self.events = ScanEvents()
        self._overwrite = overwrite
        self._stage_limits_um = stage_limits_um
        self._resume_path = _resume_path
        self._lock = threading.Lock()
        self._state: ScanState = "idle"
        self._abort_requested = False
        self._abort_reason = ""
        self._failure: str | None = None  # why the scan stopped on its own (dead device, disk)
        self._n_retried_calls = 0
        self._result: ScanResult | None = None
        self._counters = _Counters()
        self._current_section: str | None = None
        self._t0 = time.perf_counter()
        self._consecutive_timeouts = 0
        self._output: ScanOutput | None = None
        self._engine: ScanEngine | None = None
        self._focus_points: dict[str, list[list[float]]] = {}
        self._z_of: Callable[[str, float, float], float] | None = None
        self.adaptive_targets: Callable[[str], list[list[tuple[float, float]]]] | None = None
        """For the plan's adaptive pass: ``f(section_id)`` → polygons (stage µm) to image again
        (set by :class:`~acquisition.session.ScanSession` from its live analysis)."""

    # ------------------------------------------------------------ creation

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike[str],
        core: CMMCorePlus,
        *,
        stage_limits_um: tuple[tuple[float, float], tuple[float, float]] | None = None,
    ) -> ScanController:
        """A controller that continues the scan in ``path`` from its stored plan.

        Only tiles not yet done (pending or failed) are acquired, at the
        positions and focus stored in the file.
        """
        file = Path(path)
        return cls(core, read_stored_plan(file), stage_limits_um=stage_limits_um, _resume_path=file)

    # ----------------------------------------------------------- control

    @property
    def state(self) -> ScanState:
        """Current state."""
        return self._state

    @property
    def result(self) -> ScanResult | None:
        """How the scan ended (None until it has)."""
        return self._result

    @property
    def output_path(self) -> Path:
        """The scan file."""
        return Path(self.plan.output)

    def pause(self) -> None:
        """Pause between events (the current image finishes)."""
        if self._state == "scanning":
            self.core.mda.set_paused(True)
            self._set_state("paused")

    def resume_scanning(self) -> None:
        """Continue after :meth:`pause`."""
        if self._state == "paused":
            self.core.mda.set_paused(False)
            self._set_state("scanning")

    def abort(self, reason: str = "aborted by the user") -> None:
        """Stop after the current event (also during the focus map); the file stays resumable."""
        with self._lock:
            if not self._abort_requested:
                self._abort_requested = True
                self._abort_reason = reason
        if self.core.mda.is_running():
            self.core.mda.cancel()

    def _stop_on_fault(self, reason: str) -> None:
        """Stop the scan because it cannot go on (a dead device, a disk error): it ends *failed*."""
        with self._lock:
            if self._failure is None:
                self._failure = reason
        self.abort(reason)

    def _stop_reason(self) -> str | None:
        with self._lock:
            return self._abort_reason if self._abort_requested else None

    @property
    def n_retried_calls(self) -> int:
        """Device calls of this run that failed and were retried (focus map included)."""
        return self._n_retried_calls

    # ---------------------------------------------------------------- run

    def run(self) -> ScanResult:
        """Prepare and run the scan in this thread; returns how it ended.

        Raises
        ------
        PlanError, ConfigError, StorageError
            Before anything moves, when the plan does not fit the hardware or
            the file cannot be written.
        """
        self._t0 = time.perf_counter()
        try:
            writer, tiles = self._prepare()
        except AbortRequested:
            # stopped before a file existed (e.g. Ctrl-C during the focus map): nothing to resume
            message = (
                f"{self._abort_reason} during {self._state_words()}; nothing was acquired and "
                f"{self.output_path.name} was not written"
            )
            self._set_state("aborted")
            self._message("warning", message)
            self._result = self._make_result("aborted", message=message)
            self.events.finished.emit(self._result)
            return self._result
        except Exception as e:
            message = _one_line(e)
            if isinstance(e, DeviceTimeoutError):
                message = f"device not answering during {self._state_words()}: {message}"
            self._set_state("failed")
            self._message("error", message)
            self._result = self._make_result("failed", message=message)
            self.events.finished.emit(self._result)
            raise
        try:
            self._scan(writer, tiles)
        finally:
            try:
                writer.close()
            except StorageError as e:  # the tiles done are safe; say so instead of a traceback
                self._stop_on_fault(f"cannot close the scan file: {e}")
        if self._result is None:  # the run ended before _scan could say how (it re-raised)
            self._result = self._make_result("failed", message=self._failure or "the scan stopped")
        self.events.finished.emit(self._result)
        return self._result

    def _state_words(self) -> str:
        return {"focusing": "the focus map", "preparing": "preparation"}.get(self._state, self._state)

    def _prepare(self) -> tuple[ScanWriter, list[PlannedTile]]:
        self._set_state("preparing")
        # groups decided from the config once, and stored with the plan in the file
        self.plan = resolve_plan_groups(self.plan, self.core)
        core, plan = self.core, self.plan
        resuming = self._resume_path is not None
        validate_plan(
            plan,
            core,
            stage_limits_um=self._stage_limits_um,
            overwrite=self._overwrite,
            resume=resuming,
        )
        if not resuming:
            _make_output_folder(self.output_path)
        assert plan.objective_group is not None  # resolved above
        core.setConfig(plan.objective_group, plan.objective)
        core.waitForConfig(plan.objective_group, plan.objective)
        if resuming:
            writer = ScanWriter.open_for_resume(self.output_path)
            for repairs in writer.repairs_since_last_run():
                self._message("warning", describe_repairs(self.output_path, repairs))
            self._check_resume_matches(writer)
            try:  # a resumed scan keeps its dark frames; channels without any get them now
                calibration = self._calibration_inputs(writer.dark_frame_channels)
                writer.add_calibration(dark_frames=calibration.dark_frames, files=calibration.files)
            except Exception:
                writer.close()
                raise
        else:
            # dark frames first: before the focus map (or anything else) moves the stage
            calibration = self._calibration_inputs(())
            writer = self._create_file(calibration)
        writer.fsync_per_tile = plan.reliability.fsync == "per_tile"
        try:
            tiles = self._pending_tiles(writer)
            self._count(writer)
            writer.log_event(
                EventKind.RESUME_SCAN if resuming else EventKind.NEW_SCAN, pending_tiles=len(tiles)
            )
        except Exception:
            writer.close()
            raise
        return writer, tiles

    def _check_resume_matches(self, writer: ScanWriter) -> None:
        width, height = self.core.getImageWidth(), self.core.getImageHeight()
        for sid in writer.section_ids:
            _, _, _, h, w = writer.section_shape(sid)
            if (h, w) != (height, width):
                writer.close()
                raise StorageError(
                    f"cannot resume {self.output_path.name}: its tiles are {w}×{h} px but the camera "
                    f"now gives {width}×{height} px; set the same camera ROI as when the scan started"
                )

    def _calibration_inputs(self, have_dark_frames: Sequence[str]) -> ScanCalibrationInputs:
        """Dark frames (shutter closed; retried, stoppable) and the calibration files; said in one line."""
        calls = DeviceCalls(
            max_retries=self.plan.reliability.max_retries,
            timeout_s=self.plan.reliability.tile_timeout_s,
            should_stop=self._stop_reason,
            on_retry=lambda what, attempt, e: self._retried(f"dark frames: {what}", attempt, e),
        )
        inputs = plan_calibration_inputs(self.core, self.plan, have_dark_frames, device_call=calls.call)
        for level, line in [("info", inputs.info), *(("warning", w) for w in inputs.warnings)]:
            self._message(level, line)
        return inputs

    def _create_file(self, calibration: ScanCalibrationInputs | None = None) -> ScanWriter:
        core, plan = self.core, self.plan
        size_um = tile_size_um(core, plan)
        affine = pixel_affine_um(core)  # the objective is set: the affine the tiles are taken with
        centres = section_tiles(plan, tile_size_um=size_um)
        z_of = self._focus_function(centres)
        layouts = []
        for section in plan.sections:
            xy = centres[section.id]
            z = np.array([z_of(section.id, float(x), float(y)) for x, y in xy], dtype=np.float64)
            attrs: dict[str, Any] = {
                "animal": section.animal,
                "group": section.group,
                "level": section.level,
                "orientation": section.orientation,
                "injection_side": section.injection_side,
                "polygon_um": [list(v) for v in section.polygon_um],
                "lesion_epicenter_um": list(section.lesion_epicenter_um)
                if section.lesion_epicenter_um
                else None,
                "rostral_direction_deg": section.rostral_direction_deg,
            }
            if section.region_polygons_um:  # hand-drawn regions replace the automatic ones in the analysis
                attrs["region_polygons_um"] = {
                    k: [list(v) for v in poly] for k, poly in section.region_polygons_um.items()
                }
            if self._focus_points.get(section.id) is not None:
                attrs["focus_points_um"] = self._focus_points[section.id]
            layouts.append(
                SectionLayout(
                    section_id=section.id,
                    tile_xy_um=xy,
                    channel_names=tuple(ch.preset for ch in plan.channels),
                    n_z=plan.n_z_slices,
                    tile_shape_px=(core.getImageHeight(), core.getImageWidth()),
                    pixel_size_um=core.getPixelSizeUm(),
                    pixel_affine_um=affine,
                    # the camera's field (width, height) on the slide; tiles are spaced by size_um
                    tile_size_um=(
                        core.getImageWidth() * core.getPixelSizeUm(),
                        core.getImageHeight() * core.getPixelSizeUm(),
                    ),
                    planned_tile_z_um=z,
                    attrs=attrs,
                )
            )
        config_path = str(core.systemConfigurationFile() or "")
        config_text = Path(config_path).read_text() if config_path and Path(config_path).is_file() else ""
        return ScanWriter.create(
            self.output_path,
            plan_yaml=plan.to_yaml(),
            sections=layouts,
            config_path=config_path,
            config_text=config_text,
            core_state=_core_state(core),
            overwrite=self._overwrite,
            dark_frames=calibration.dark_frames if calibration else (),
            calibration_files=calibration.files if calibration else None,
        )

    def _focus_function(self, centres: Mapping[str, np.ndarray]) -> Callable[[str, float, float], float]:
        z_of = self._measure_focus(centres)
        self._z_of = z_of
        return z_of

    def _measure_focus(self, centres: Mapping[str, np.ndarray]) -> Callable[[str, float, float], float]:
        plan, core = self.plan, self.core
        self._focus_points = {}
        if plan.focus.strategy == "fixed":
            z_fixed = plan.focus.z_um if plan.focus.z_um is not None else float(core.getPosition())
            return lambda _sid, _x, _y: float(z_fixed)
        from .focus import build_focus_map

        self._set_state("focusing")
        anatomy = plan.anatomy_channel
        calls = DeviceCalls(
            max_retries=plan.reliability.max_retries,
            timeout_s=plan.reliability.tile_timeout_s,
            should_stop=self._stop_reason,
            on_retry=lambda what, attempt, e: self._retried(f"focus map: {what}", attempt, e),
        )
        focus_map = build_focus_map(
            core,
            {s.id: np.asarray(s.polygon_um, dtype=np.float64) for s in plan.sections},
            points_per_section=plan.focus.points_per_section,
            channel_group=plan.groups[0],
            channel=anatomy.preset,
            exposure_ms=anatomy.exposure_ms,
            coarse_range_um=plan.focus.coarse_range_um,
            coarse_step_um=plan.focus.coarse_step_um,
            fine_range_um=plan.focus.fine_range_um,
            fine_step_um=plan.focus.fine_step_um,
            z_start_um=plan.focus.z_um,
            progress=lambda sid, i, n: self._message("info", f"focus map: section {sid}, point {i} of {n}"),
            device_call=calls.call,
        )
        self._focus_points = {
            sid: np.asarray(pts, dtype=float).tolist() for sid, pts in focus_map.points_um.items()
        }
        return lambda sid, x, y: float(focus_map.z_at(sid, x, y))

    def _pending_tiles(self, writer: ScanWriter) -> list[PlannedTile]:
        """Tiles still to acquire, at the positions and focus the file planned."""
        pending = writer.pending_tiles()
        tiles = []
        for sid in writer.section_ids:
            xy = writer.tile_xy_um(sid)
            z = writer.planned_tile_z_um(sid)
            for t in pending.get(sid, np.array([], dtype=int)):
                z_t = float(z[t])
                tiles.append(
                    PlannedTile(
                        sid, int(t), float(xy[t, 0]), float(xy[t, 1]), z_t if np.isfinite(z_t) else None
                    )
                )
        return tiles

    def _count(self, writer: ScanWriter) -> None:
        c = self._counters
        with self._lock:
            c.failed.clear()
            for sid in (*writer.section_ids, *writer.pass_keys):
                status = writer.tile_status_array(sid)
                c.totals[sid] = int(status.size)
                c.done[sid] = int(np.count_nonzero(status == TileStatus.DONE))
                c.failed.update(TileRef(sid, int(t)) for t in np.flatnonzero(status == TileStatus.FAILED))

    def _scan(self, writer: ScanWriter, tiles: list[PlannedTile]) -> None:
        plan = self.plan
        c = self._counters
        c.to_do_this_run = len(tiles)
        if not tiles and (plan.adaptive is None or self.adaptive_targets is None):
            self._result = self._make_result("finished", message="nothing to do: every tile is done")
            self._set_state("finished")
            return
        self._set_state("scanning")
        self._emit_progress()
        error = self._run_tiles(writer, tiles, retake=True) if tiles else None
        if error is None and not self._abort_requested and plan.adaptive is not None:
            error = self._adaptive_pass(writer)
        try:
            writer.flush()
        except StorageError as e:  # the writer stopped on a disk error (already reported, or now)
            self._stop_on_fault(str(e))
        self._count(writer)
        state: ScanState
        if error is not None:
            state = "failed"
            message = f"scan stopped by an error: {_one_line(error)}"
        elif self._failure is not None:
            state, message = "failed", self._failure
        elif self._abort_requested:
            state, message = "aborted", self._abort_reason
        else:
            state, message = "finished", ""
        try:
            if state != "finished":
                message = message.rstrip(". ")
                message += f"; {self.output_path} is resumable: cordscope scan --resume {self.output_path}"
                writer.log_event(EventKind.STOPPED, state=state, reason=message)
            else:
                writer.log_event(EventKind.FINISHED)
        except StorageError as e:
            logger.info("could not log the end of the scan: %s", e)  # the writer has stopped; tiles are safe
        self._result = self._make_result(state, message=message)
        self._set_state(state)
        if state != "finished":
            self._message("error" if state == "failed" else "warning", message)

    def _run_tiles(
        self,
        writer: ScanWriter,
        tiles: Sequence[PlannedTile],
        *,
        retake: bool,
        channels: Sequence[ChannelSetting] | None = None,
    ) -> BaseException | None:
        """Acquire tiles with one MDA run; returns the error that stopped it, if any."""
        core, plan = self.core, self.plan
        sequence = sequence_for_tiles(plan, tiles, channels=channels)

        def tile_of(event: useq.MDAEvent) -> TileRef:
            return _tile_ref_from_name(event)

        self._output = ScanOutput(
            writer,
            on_tile_stored=self._tile_stored,
            on_storage_error=self._storage_error,
        )
        self._engine = ScanEngine(
            core,
            tile_of=tile_of,
            max_retries=plan.reliability.max_retries,
            timeout_s=plan.reliability.tile_timeout_s,
            on_tile_failed=self._tile_failed,
            channel_order=plan.channel_order,
            retake=self._retake_runner(sequence) if retake else None,
            on_retry=lambda tile, what, attempt, e: self._retried(f"tile {tile}: {what}", attempt, e),
            should_stop=self._stop_reason,
        )
        previous_engine = core.mda.set_engine(self._engine)
        error: BaseException | None = None
        try:
            with self._current_section_tracking():
                core.mda.run(sequence, output=self._output)
        except BaseException as e:
            error = e
        finally:
            if previous_engine is not None:
                core.mda.set_engine(previous_engine)
        return error

    # ------------------------------------------------------- adaptive pass

    def _adaptive_pass(self, writer: ScanWriter) -> BaseException | None:
        """Add and acquire the plan's adaptive pass (see :class:`~acquisition.plan.AdaptiveSettings`).

        Sections that have no pass yet get one from :attr:`adaptive_targets`
        (what to image again, from the live analysis of the first pass); a
        resumed scan acquires what its passes still miss. One objective
        change for the whole pass.
        """
        plan, core = self.plan, self.core
        adaptive = plan.adaptive
        assert adaptive is not None
        name = _pass_name(adaptive.objective)
        group = plan.groups[1]
        channels = [plan.tracer_channel] if adaptive.channels == "tracer" else list(plan.channels)
        affine = pixel_affine_for_objective(core, group, adaptive.objective)
        pixel_um = pixel_size_from_affine(affine)
        _, _, width_px, height_px = (int(v) for v in core.getROI())
        size_um = covered_extent_um(affine, (width_px, height_px))
        if self.adaptive_targets is None:
            self._message(
                "warning", "adaptive pass skipped: it needs the live analysis (scan with analysis on)"
            )
            return None
        tiles: list[PlannedTile] = []
        for sid in writer.section_ids:
            key = pass_key(sid, name)
            if key not in writer.pass_keys:
                if not np.any(writer.tile_status_array(sid) == TileStatus.DONE):
                    continue
                try:
                    polygons = self.adaptive_targets(sid)
                except Exception as e:  # the first pass is safe; the section keeps its first-pass numbers
                    self._message("warning", f"adaptive pass: section {sid} skipped: {_one_line(e)}")
                    continue
                if not polygons:
                    self._message("info", f"adaptive pass: nothing to image again in section {sid}")
                    continue
                target = shapely.unary_union([shapely.Polygon(v) for v in polygons])
                centres = minimal_cover(target, tile_size_um=size_um, overlap_pct=plan.overlap_pct)
                z = self._pass_focus(writer, sid, centres) + adaptive.z_offset_um
                writer.add_pass(
                    SectionLayout(
                        section_id=sid,
                        tile_xy_um=centres,
                        channel_names=tuple(ch.preset for ch in channels),
                        n_z=plan.n_z_slices,
                        tile_shape_px=(height_px, width_px),
                        pixel_size_um=pixel_um,
                        pixel_affine_um=affine,
                        tile_size_um=(width_px * pixel_um, height_px * pixel_um),
                        planned_tile_z_um=z,
                    ),
                    section_id=sid,
                    name=name,
                    attrs={
                        "kind": "adaptive",
                        "objective": adaptive.objective,
                        "region": adaptive.region,
                        "min_pct_axonal_area": adaptive.min_pct_axonal_area,
                        "target_polygons_um": [np.asarray(v, dtype=float).tolist() for v in polygons],
                    },
                )
                writer.log_event(
                    EventKind.ADAPTIVE_PASS, section=sid, objective=adaptive.objective, n_tiles=len(centres)
                )
                self._message(
                    "info", f"adaptive pass: {len(centres)} tiles at {adaptive.objective} in section {sid}"
                )
            xy, z_planned = writer.tile_xy_um(key), writer.planned_tile_z_um(key)
            for t in np.flatnonzero(writer.tile_status_array(key) != TileStatus.DONE):
                zt = float(z_planned[t])
                tiles.append(
                    PlannedTile(
                        key, int(t), float(xy[t, 0]), float(xy[t, 1]), zt if np.isfinite(zt) else None
                    )
                )
        self._count(writer)
        if not tiles or self._abort_requested:
            return None
        with self._lock:
            self._counters.to_do_this_run += len(tiles)
        core.setConfig(group, adaptive.objective)
        core.waitForConfig(group, adaptive.objective)
        self._emit_progress()
        return self._run_tiles(writer, tiles, retake=False, channels=channels)

    def _pass_focus(self, writer: ScanWriter, section_id: str, centres: np.ndarray) -> np.ndarray:
        """Focus of pass tiles: the focus map there, moved as the nearest first-pass tile was by a retake."""
        xy = writer.tile_xy_um(section_id)
        planned = writer.planned_tile_z_um(section_id)
        used = writer.tile_z_um(section_id)
        done = np.flatnonzero((writer.tile_status_array(section_id) == TileStatus.DONE) & np.isfinite(used))
        nearest = done[np.argmin(((xy[done, None, :] - centres[None, :, :]) ** 2).sum(axis=2), axis=0)]
        if self._z_of is None:
            return used[nearest]
        correction = np.where(np.isfinite(planned[nearest]), used[nearest] - planned[nearest], 0.0)
        return np.array([self._z_of(section_id, float(x), float(y)) for x, y in centres]) + correction

    def _retake_runner(self, sequence: useq.MDASequence) -> RetakeRunner | None:
        """The sharpness check of the plan's tiles (focus-map plans with one plane per tile), or None."""
        plan, core = self.plan, self.core
        if not plan.retake.enabled or plan.focus.strategy != "focus_map" or plan.z_stack is not None:
            return None
        neighbours = NeighbourSharpness(
            [tuple(row) for row in sequence.metadata["cordscope"]["tiles"]],
            tile_shape_px=(core.getImageHeight(), core.getImageWidth()),
            pixel_affine_um=pixel_affine_um(core),
            dark_offset_adu=plan.analysis.dark_offset_adu,
            tissue_min_adu=plan.retake.tissue_min_adu,
            min_tissue_fraction=plan.retake.min_tissue_fraction,
        )
        return RetakeRunner(plan.retake, neighbours, anatomy_channel=plan.anatomy_channel.preset)

    @contextlib.contextmanager
    def _current_section_tracking(self) -> Iterator[None]:
        def on_event(event: useq.MDAEvent) -> None:
            self._current_section = _tile_ref_from_name(event).section_id

        self.core.mda.events.eventStarted.connect(on_event)
        try:
            yield
        finally:
            self.core.mda.events.eventStarted.disconnect(on_event)

    # ----------------------------------------------------------- callbacks

    def _tile_stored(self, stored: TileStored) -> None:
        c = self._counters
        retake = stored.meta.get("retake") or {}
        with self._lock:
            c.retaken += retake.get("decision") == "retaken"
            c.retake_time_s += float(retake.get("time_s") or 0.0)
            c.done[stored.section_id] = c.done.get(stored.section_id, 0) + 1
            c.failed.discard(TileRef(stored.section_id, stored.tile_index))
            c.finished_this_run += 1
            self._consecutive_timeouts = 0
        self.events.tile_stored.emit(stored)
        self._emit_progress()

    def _tile_failed(self, tile: TileRef, reason: str, timed_out: bool) -> None:
        c = self._counters
        retries = self._engine.retries_of(tile) if self._engine else 0
        with self._lock:
            c.failed.add(tile)
            c.finished_this_run += 1
            # the relay thread resets it when a tile is stored: one lock for both threads
            self._consecutive_timeouts = self._consecutive_timeouts + 1 if timed_out else 0
            dead_device = self._consecutive_timeouts >= MAX_CONSECUTIVE_TIMEOUTS
            n_timeouts = self._consecutive_timeouts
        assert self._output is not None
        self._output.report_failure(
            tile, reason, {"error": reason, "retries": retries, "timed_out": timed_out}
        )
        self.events.tile_failed.emit(tile.section_id, tile.tile_index, reason)
        self._message(
            "warning",
            f"tile {tile_name(tile.section_id, tile.tile_index)} failed after {retries} retries: {reason}",
        )
        self._emit_progress()
        if dead_device:
            self._stop_on_fault(f"device not answering: {n_timeouts} tiles in a row timed out ({reason})")

    def _retried(self, what: str, attempt: int, error: BaseException) -> None:
        with self._lock:
            self._n_retried_calls += 1
        retries = self.plan.reliability.max_retries
        self._message("warning", f"{what} failed ({_one_line(error)}); retrying ({attempt} of {retries})")

    def _storage_error(self, error: StorageError) -> None:
        self._stop_on_fault(str(error))

    # ------------------------------------------------------------- helpers

    def _set_state(self, state: ScanState) -> None:
        self._state = state
        self.events.state_changed.emit(state)

    def _message(self, level: str, text: str) -> None:
        log = {"info": logger.info, "warning": logger.warning}.get(level, logger.error)
        log("%s", text)
        self.events.message.emit(level, text)

    def _sections_progress(self) -> dict[str, SectionProgress]:
        c = self._counters
        failed: dict[str, int] = {}
        for tile in c.failed:
            failed[tile.section_id] = failed.get(tile.section_id, 0) + 1
        return {
            sid: SectionProgress(c.done.get(sid, 0), failed.get(sid, 0), n) for sid, n in c.totals.items()
        }

    def progress(self) -> ScanProgress:
        """A snapshot of the scan's progress."""
        c = self._counters
        with self._lock:
            sections = self._sections_progress()
            elapsed = time.perf_counter() - self._t0
            remaining = c.to_do_this_run - c.finished_this_run
            eta = elapsed / c.finished_this_run * remaining if c.finished_this_run else None
        return ScanProgress(
            state=self._state,
            tiles_done=sum(s.done for s in sections.values()),
            tiles_failed=sum(s.failed for s in sections.values()),
            tiles_total=sum(s.total for s in sections.values()),
            sections=sections,
            current_section=self._current_section,
            elapsed_s=elapsed,
            eta_s=eta,
        )

    def _emit_progress(self) -> None:
        self.events.progress.emit(self.progress())

    def _make_result(self, state: ScanState, *, message: str = "") -> ScanResult:
        p = self.progress()
        path = self.output_path
        size = path.stat().st_size if path.is_file() else 0
        return ScanResult(
            path=path,
            state=state,
            tiles_done=p.tiles_done,
            tiles_failed=p.tiles_failed,
            tiles_total=p.tiles_total,
            sections=p.sections,
            elapsed_s=p.elapsed_s,
            file_size_bytes=size,
            message=message,
            tiles_retaken=self._counters.retaken,
            retake_time_s=self._counters.retake_time_s,
            retried_calls=self._n_retried_calls,
        )


def _pass_name(objective: str) -> str:
    """A pass's name from its objective preset: letters, digits, ``_``, ``.``, ``-`` kept."""
    name = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in objective)
    return name or "pass"


def _make_output_folder(path: Path) -> None:
    """Create the scan file's folder (validation checked it can be), before anything moves."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(
            f"cannot create the folder {path.parent} for {path.name}: {e.strerror or e}"
        ) from None


def read_stored_plan(path: str | os.PathLike[str]) -> ScanPlan:
    """The plan stored in a scan file, with ``output`` set to that file.

    A file that needs repair before it can be read (cut short by a failed
    write, a status byte out of range: :class:`~acquisition.storage.NeedsRepair`)
    is first repaired as for resuming; anything else is left untouched.
    """
    file = Path(path)
    try:
        with ScanFile.open(file) as scan:  # read-only: an intact file is not touched here
            plan_text = scan.plan_yaml
    except NeedsRepair:
        ScanWriter.open_for_resume(file).close()  # repairs it, or says what cannot be repaired
        with ScanFile.open(file) as scan:
            plan_text = scan.plan_yaml
    plan = plan_from_yaml(plan_text, source=f"{file.name}:/plan")
    return plan.model_copy(update={"output": file})


def _core_state(core: CMMCorePlus) -> dict[str, Any]:
    try:
        return dict(summary_metadata(core))
    except Exception as e:  # the state is documentation; never block a scan on it
        logger.warning("could not record the core state: %s", e)
        return {"error": _one_line(e)}
