"""The scan controller: a plan in, a complete HDF5 scan file out, unattended.

The controller prepares a scan (validates the plan against the hardware
before anything moves, sets the objective, builds the focus map, lays out
the file) and then runs it with pymmcore-plus' MDA runner. CordScope adds to
that runner rather than replacing it:

- :class:`ScanEngine` is pymmcore-plus' ``MDAEngine`` with hardware faults
  handled the way an unattended scan needs: every device call runs under a
  watchdog, failed calls are retried, and a tile whose calls keep failing is
  marked failed and skipped instead of being imaged at the wrong place or
  silently dropped (the stock engine logs a warning and goes on).
- :class:`ScanOutput` is an ordinary runner output: it hands frames to the
  HDF5 writer (:class:`acquisition.storage.MDAWriterOutput`) and to any extra
  outputs (the live analysis), and turns completed tiles into progress.

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
from typing import Any, Literal, TypeVar

import numpy as np
import useq
from psygnal import Signal, SignalGroup
from pymmcore_plus import CMMCorePlus
from pymmcore_plus.mda import MDAEngine, SkipEvent
from pymmcore_plus.metadata import summary_metadata

from .errors import CordScopeError
from .hardware import objective_group
from .plan import (
    PlannedTile,
    ScanPlan,
    plan_from_yaml,
    section_tiles,
    sequence_for_tiles,
    tile_size_um,
    validate_plan,
)
from .storage import MDAWriterOutput, ScanFile, ScanWriter, SectionLayout, StorageError, TileStatus

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

T = TypeVar("T")

ScanState = Literal["idle", "preparing", "focusing", "scanning", "paused", "finished", "aborted", "failed"]

#: After this many tiles in a row fail on a watchdog timeout, the device is
#: taken as dead and the scan stops (resumable) instead of failing every tile.
MAX_CONSECUTIVE_TIMEOUTS = 3


class DeviceTimeoutError(CordScopeError):
    """A device did not answer within the watchdog timeout."""


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

    @property
    def complete(self) -> bool:
        """True when the scan finished with every tile done."""
        return self.state == "finished" and self.tiles_done == self.tiles_total


class ScanEvents(SignalGroup):
    """Signals of a scan; emitted from the scan's threads (connect queued in Qt)."""

    state_changed = Signal(str)
    progress = Signal(object)  # ScanProgress
    tile_done = Signal(str, int)  # section id, tile index
    tile_failed = Signal(str, int, str)  # section id, tile index, reason
    message = Signal(str, str)  # level ("info", "warning", "error"), text
    finished = Signal(object)  # ScanResult


# ----------------------------------------------------------------- watchdog


def call_with_watchdog(description: str, func: Callable[[], T], *, timeout_s: float) -> T:
    """Run a device call, raising :class:`DeviceTimeoutError` if it does not return in time.

    The call runs in a daemon thread so that a device that stops answering
    cannot hang the scan; the stuck thread is abandoned (a later call to the
    same device will usually time out too, which the controller turns into
    "device not answering" after a few tiles).
    """
    result: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)

    def target() -> None:
        try:
            result.put((True, func()))
        except BaseException as e:  # handed to the caller's thread, not swallowed
            result.put((False, e))

    thread = threading.Thread(target=target, name=f"device-call: {description}", daemon=True)
    thread.start()
    try:
        ok, value = result.get(timeout=timeout_s)
    except queue.Empty:
        raise DeviceTimeoutError(f"{description}: no answer within {timeout_s:g} s") from None
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


# ------------------------------------------------------------------- engine


@dataclass(frozen=True)
class TileRef:
    """One tile of one section."""

    section_id: str
    tile_index: int


class ScanEngine(MDAEngine):
    """pymmcore-plus' MDA engine with retries, watchdog and failed tiles.

    Every hardware call of an event (XY and Z moves, channel, exposure,
    waiting for the devices, the snap) runs under :func:`call_with_watchdog`
    and is retried up to ``max_retries`` times. When an event still fails,
    its tile is reported through ``on_tile_failed`` and the remaining events
    of that tile are skipped (``SkipEvent``), so a tile is either complete
    or marked failed — never imaged at the wrong position.

    Parameters
    ----------
    core : CMMCorePlus
    tile_of : callable
        Maps an event to its :class:`TileRef`.
    max_retries : int
        Extra attempts per device call.
    timeout_s : float
        Watchdog timeout of each device call (s).
    on_tile_failed : callable
        ``f(tile, reason, timed_out)``, called in the MDA thread.
    """

    def __init__(
        self,
        core: CMMCorePlus,
        *,
        tile_of: Callable[[useq.MDAEvent], TileRef],
        max_retries: int,
        timeout_s: float,
        on_tile_failed: Callable[[TileRef, str, bool], None],
    ) -> None:
        super().__init__(core, use_hardware_sequencing=False)
        self._tile_of = tile_of
        self._max_retries = max_retries
        self._timeout_s = timeout_s
        self._on_tile_failed = on_tile_failed
        self._failed: set[TileRef] = set()
        self._retries: dict[TileRef, int] = {}
        self._last_xy: tuple[float, float] | None = None
        self._last_z: float | None = None
        self._last_channel: tuple[str, str] | None = None

    def retries_of(self, tile: TileRef) -> int:
        """How many device calls of this tile needed a retry."""
        return self._retries.get(tile, 0)

    def _call(self, tile: TileRef, description: str, func: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return call_with_watchdog(description, func, timeout_s=self._timeout_s)
            except DeviceTimeoutError:
                raise  # the device hangs: retrying would only queue behind it
            except Exception as e:
                if attempt >= self._max_retries:
                    raise
                attempt += 1
                self._retries[tile] = self._retries.get(tile, 0) + 1
                logger.warning(
                    "tile %s/%s: %s failed (%s); retry %d of %d",
                    tile.section_id,
                    tile.tile_index,
                    description,
                    _one_line(e),
                    attempt,
                    self._max_retries,
                )
                self._after_failed_call()
                time.sleep(min(0.05 * attempt, 0.5))

    def _after_failed_call(self) -> None:
        # a failed move may have left the stage anywhere: move again next time
        self._last_xy = None
        self._last_z = None

    def _fail(self, tile: TileRef, error: BaseException) -> None:
        self._failed.add(tile)
        self._last_xy = self._last_z = None
        self._on_tile_failed(tile, _one_line(error), isinstance(error, DeviceTimeoutError))

    def setup_sequence(self, sequence: useq.MDASequence) -> Any:
        """Prepare the sequence (as MDAEngine) and forget state of earlier runs."""
        self._failed.clear()
        self._last_xy = self._last_z = self._last_channel = None
        return super().setup_sequence(sequence)

    def setup_event(self, event: useq.MDAEvent) -> None:
        """Move XY and Z, set channel and exposure; retry, or fail the tile and skip."""
        tile = self._tile_of(event)
        if tile in self._failed:
            raise SkipEvent(reason=f"tile {tile.section_id}/{tile.tile_index} failed")
        core = self.mmcore
        try:
            if event.x_pos is not None and event.y_pos is not None:
                xy = (float(event.x_pos), float(event.y_pos))
                if xy != self._last_xy:
                    stage = core.getXYStageDevice()
                    self._call(
                        tile, f"{stage}: move to ({xy[0]:.1f}, {xy[1]:.1f}) µm", lambda: _move_xy(core, xy)
                    )
                    self._last_xy = xy
            if event.z_pos is not None and float(event.z_pos) != self._last_z:
                z = float(event.z_pos)
                focus = core.getFocusDevice()
                self._call(tile, f"{focus}: focus to {z:.2f} µm", lambda: _move_z(core, z))
                self._last_z = z
            if (ch := event.channel) is not None and (ch.group, ch.config) != self._last_channel:
                group, config = ch.group, ch.config
                self._call(tile, f"channel {config}", lambda: _set_config(core, group, config))
                self._last_channel = (group, config)
            if event.exposure is not None:
                exposure = float(event.exposure)
                camera = core.getCameraDevice()
                self._call(tile, f"{camera}: exposure {exposure:g} ms", lambda: core.setExposure(exposure))
        except Exception as e:
            self._fail(tile, e)
            raise SkipEvent(reason=_one_line(e)) from None

    def exec_single_event(self, event: useq.MDAEvent) -> Iterator[Any]:
        """Snap (watchdog, retries); a tile whose snap keeps failing is marked failed."""
        tile = self._tile_of(event)
        core = self.mmcore
        camera = core.getCameraDevice()
        t0 = event.metadata.get("runner_t0") or time.perf_counter()
        try:
            image = self._call(tile, f"{camera}: snap", lambda: _snap(core))
        except Exception as e:
            self._fail(tile, e)
            return
        meta = self.get_frame_metadata(
            event,
            runner_time_ms=(time.perf_counter() - t0) * 1000,
            camera_device=camera,
            include_position=True,
        )
        yield (image, event, meta)


def _move_xy(core: CMMCorePlus, xy: tuple[float, float]) -> None:
    core.setXYPosition(*xy)
    core.waitForDevice(core.getXYStageDevice())


def _move_z(core: CMMCorePlus, z: float) -> None:
    core.setPosition(z)
    core.waitForDevice(core.getFocusDevice())


def _set_config(core: CMMCorePlus, group: str, config: str) -> None:
    core.setConfig(group, config)
    core.waitForConfig(group, config)


def _snap(core: CMMCorePlus) -> np.ndarray:
    core.snapImage()
    return np.asarray(core.getImage())


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) < 300 else text[:297] + "..."


# ------------------------------------------------------------------- output


class ScanOutput:
    """Runner output: frames to the HDF5 writer and extra outputs; progress out.

    Runs in the runner's relay thread, which therefore owns the open HDF5
    file during the run. Tile failures reported by the engine (MDA thread)
    are queued and written from this thread, after the frames before them.
    """

    def __init__(
        self,
        writer: ScanWriter,
        *,
        extra_outputs: Sequence[Any] = (),
        on_tile_done: Callable[[TileRef], None],
        on_storage_error: Callable[[StorageError], None],
    ) -> None:
        self._writer = writer
        self._writer_output = MDAWriterOutput(
            writer, on_error=on_storage_error, on_tile_done=lambda sid, t: on_tile_done(TileRef(sid, t))
        )
        self._extra = list(extra_outputs)
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

    def _each_extra(self, method: str, *args: Any) -> None:
        for out in self._extra:
            if (func := getattr(out, method, None)) is None:
                continue
            try:
                func(*args)
            except Exception:  # an analysis fault never stops acquisition
                logger.exception("output %s.%s failed", type(out).__name__, method)

    def sequenceStarted(self, sequence: useq.MDASequence, meta: Any = None) -> None:
        """Start the writer's and extra outputs' run."""
        self._writer_output.sequenceStarted(sequence, meta)
        self._each_extra("sequenceStarted", sequence, meta)
        self._drain()

    def frameReady(self, img: np.ndarray, event: useq.MDAEvent, meta: Mapping[str, Any]) -> None:
        """Write the frame (the writer reports the tile once it is complete)."""
        self._writer_output.frameReady(img, event, meta)
        self._each_extra("frameReady", img, event, meta)
        self._drain()

    def sequencePauseToggled(self, paused: bool) -> None:
        """Log pause / resume."""
        self._writer_output.sequencePauseToggled(paused)

    def sequenceCanceled(self, sequence: useq.MDASequence) -> None:
        """Log the abort."""
        self._writer_output.sequenceCanceled(sequence)

    def sequenceFinished(self, sequence: useq.MDASequence) -> None:
        """Write queued failures, then finish the writer's and extra outputs' run."""
        self._drain()
        self._writer_output.sequenceFinished(sequence)
        self._each_extra("sequenceFinished", sequence)
        self._drain()


def _tile_ref_from_name(event: useq.MDAEvent) -> TileRef:
    name = event.pos_name or ""
    section_id, _, index = name.rpartition("/")
    if not section_id or not index.isdigit():
        raise StorageError(f"stage position {name!r} is not named '<section>/<tile>'")
    return TileRef(section_id, int(index))


# --------------------------------------------------------------- controller


@dataclass
class _Counters:
    totals: dict[str, int] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)
    failed: set[TileRef] = field(default_factory=set)  # failed and not (yet) redone
    finished_this_run: int = 0  # done or failed in this run
    to_do_this_run: int = 0


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
    extra_outputs : sequence
        More runner outputs (objects with ``frameReady`` ...), e.g. the live
        analysis feed. Their faults are logged and never stop the scan.
    stage_limits_um : optional
        ``((xmin, xmax), (ymin, ymax))`` of the XY stage for validation.

    Examples
    --------
    >>> controller = ScanController(core, plan)  # doctest: +SKIP
    >>> controller.events.progress.connect(print)  # doctest: +SKIP
    >>> result = controller.run()  # blocking; or start() + wait()  # doctest: +SKIP
    """

    def __init__(
        self,
        core: CMMCorePlus,
        plan: ScanPlan,
        *,
        overwrite: bool = False,
        extra_outputs: Sequence[Any] = (),
        stage_limits_um: tuple[tuple[float, float], tuple[float, float]] | None = None,
        _resume_path: Path | None = None,
    ) -> None:
        self.core = core
        self.plan = plan
        self.events = ScanEvents()
        self._overwrite = overwrite
        self._extra_outputs = list(extra_outputs)
        self._stage_limits_um = stage_limits_um
        self._resume_path = _resume_path
        self._lock = threading.Lock()
        self._state: ScanState = "idle"
        self._abort_requested = False
        self._abort_reason = ""
        self._thread: threading.Thread | None = None
        self._result: ScanResult | None = None
        self._counters = _Counters()
        self._current_section: str | None = None
        self._t0 = time.perf_counter()
        self._consecutive_timeouts = 0
        self._output: ScanOutput | None = None
        self._engine: ScanEngine | None = None
        self._focus_points: dict[str, list[list[float]]] = {}

    # ------------------------------------------------------------ creation

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike[str],
        core: CMMCorePlus,
        *,
        extra_outputs: Sequence[Any] = (),
        stage_limits_um: tuple[tuple[float, float], tuple[float, float]] | None = None,
    ) -> ScanController:
        """A controller that continues the scan in ``path`` from its stored plan.

        Only tiles not yet done (pending or failed) are acquired, at the
        positions and focus stored in the file.
        """
        file = Path(path)
        with ScanFile.open(file) as scan:
            plan_text = scan.plan_yaml
        plan = plan_from_yaml(plan_text, source=f"{file.name}:/plan")
        plan = plan.model_copy(update={"output": file})
        return cls(
            core, plan, extra_outputs=extra_outputs, stage_limits_um=stage_limits_um, _resume_path=file
        )

    # ----------------------------------------------------------- control

    @property
    def state(self) -> ScanState:
        """Current state."""
        return self._state

    @property
    def extra_outputs(self) -> tuple[Any, ...]:
        """The extra runner outputs (e.g. the live analysis) given at creation."""
        return tuple(self._extra_outputs)

    @property
    def output_path(self) -> Path:
        """The scan file."""
        return Path(self.plan.output)

    def start(self) -> threading.Thread:
        """Run the scan in a background thread; returns the thread."""
        if self._thread is not None:
            raise CordScopeError("this scan was already started; make a new controller to scan again")
        self._thread = threading.Thread(target=self._run_catching, name="cordscope-scan", daemon=True)
        self._thread.start()
        return self._thread

    def _run_catching(self) -> None:
        try:
            self.run()
        except Exception:  # already reported: events.message and events.finished carry it
            logger.debug("scan thread ended with an error", exc_info=True)

    def wait(self, timeout_s: float | None = None) -> ScanResult:
        """Wait for a started scan to end and return its result."""
        if self._thread is None:
            raise CordScopeError("the scan was not started")
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"scan still running after {timeout_s} s")
        assert self._result is not None
        return self._result

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
        """Stop after the current event; the file stays resumable."""
        with self._lock:
            self._abort_requested = True
            self._abort_reason = reason
        if self.core.mda.is_running():
            self.core.mda.cancel()

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
        except Exception as e:
            self._set_state("failed")
            self._message("error", _one_line(e))
            self._result = self._make_result("failed", message=_one_line(e))
            self.events.finished.emit(self._result)
            raise
        try:
            self._scan(writer, tiles)
        finally:
            writer.close()
        assert self._result is not None
        self.events.finished.emit(self._result)
        return self._result

    def _prepare(self) -> tuple[ScanWriter, list[PlannedTile]]:
        self._set_state("preparing")
        core, plan = self.core, self.plan
        resuming = self._resume_path is not None
        validate_plan(
            plan,
            core,
            stage_limits_um=self._stage_limits_um,
            overwrite=self._overwrite,
            resume=resuming,
        )
        group = plan.objective_group or objective_group(core)
        core.setConfig(group, plan.objective)
        core.waitForConfig(group, plan.objective)
        if resuming:
            writer = ScanWriter.open_for_resume(self.output_path)
            self._check_resume_matches(writer)
        else:
            writer = self._create_file()
        try:
            tiles = self._pending_tiles(writer)
            self._count(writer)
            writer.log_event("resume_scan" if resuming else "new_scan", pending_tiles=len(tiles))
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

    def _create_file(self) -> ScanWriter:
        core, plan = self.core, self.plan
        size_um = tile_size_um(core, plan)
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
                    tile_size_um=size_um,
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
        )

    def _focus_function(self, centres: Mapping[str, np.ndarray]) -> Callable[[str, float, float], float]:
        plan, core = self.plan, self.core
        self._focus_points = {}
        if plan.focus.strategy == "fixed":
            z_fixed = plan.focus.z_um if plan.focus.z_um is not None else float(core.getPosition())
            return lambda _sid, _x, _y: float(z_fixed)
        from .focus import build_focus_map

        self._set_state("focusing")
        anatomy = plan.anatomy_channel
        focus_map = build_focus_map(
            core,
            {s.id: np.asarray(s.polygon_um, dtype=np.float64) for s in plan.sections},
            points_per_section=plan.focus.points_per_section,
            channel_group=plan.channel_group,
            channel=anatomy.preset,
            exposure_ms=anatomy.exposure_ms,
            coarse_range_um=plan.focus.coarse_range_um,
            coarse_step_um=plan.focus.coarse_step_um,
            fine_range_um=plan.focus.fine_range_um,
            fine_step_um=plan.focus.fine_step_um,
            z_start_um=plan.focus.z_um,
            progress=lambda sid, i, n: self._message("info", f"focus map: section {sid}, point {i} of {n}"),
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
            for sid in writer.section_ids:
                status = writer.tile_status_array(sid)
                c.totals[sid] = int(status.size)
                c.done[sid] = int(np.count_nonzero(status == TileStatus.DONE))
                c.failed.update(TileRef(sid, int(t)) for t in np.flatnonzero(status == TileStatus.FAILED))

    def _sequence(self, tiles: Sequence[PlannedTile]) -> useq.MDASequence:
        return sequence_for_tiles(self.plan, tiles)

    def _scan(self, writer: ScanWriter, tiles: list[PlannedTile]) -> None:
        core, plan = self.core, self.plan
        c = self._counters
        c.to_do_this_run = len(tiles)
        if not tiles:
            self._result = self._make_result("finished", message="nothing to do: every tile is done")
            self._set_state("finished")
            return
        sequence = self._sequence(tiles)

        def tile_of(event: useq.MDAEvent) -> TileRef:
            return _tile_ref_from_name(event)

        self._output = ScanOutput(
            writer,
            extra_outputs=self._extra_outputs,
            on_tile_done=self._tile_done,
            on_storage_error=self._storage_error,
        )
        self._engine = ScanEngine(
            core,
            tile_of=tile_of,
            max_retries=plan.reliability.max_retries,
            timeout_s=plan.reliability.tile_timeout_s,
            on_tile_failed=self._tile_failed,
        )
        previous_engine = core.mda.set_engine(self._engine)
        self._set_state("scanning")
        self._emit_progress()
        error: BaseException | None = None
        try:
            with self._current_section_tracking():
                core.mda.run(sequence, output=self._output)
        except BaseException as e:
            error = e
        finally:
            if previous_engine is not None:
                core.mda.set_engine(previous_engine)
        writer.flush()
        self._count(writer)
        if error is not None:
            state: ScanState = "failed"
            message = f"scan stopped by an error: {_one_line(error)}"
        elif self._abort_requested:
            state, message = "aborted", self._abort_reason
        else:
            state, message = "finished", ""
        if state != "finished":
            message += f"; {self.output_path} is resumable: cordscope scan --resume {self.output_path}"
            writer.log_event("stopped", state=state, reason=message)
        else:
            writer.log_event("finished")
        self._result = self._make_result(state, message=message)
        self._set_state(state)
        if state != "finished":
            self._message("error" if state == "failed" else "warning", message)

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

    def _tile_done(self, tile: TileRef) -> None:
        c = self._counters
        with self._lock:
            c.done[tile.section_id] = c.done.get(tile.section_id, 0) + 1
            c.failed.discard(tile)
            c.finished_this_run += 1
        self._consecutive_timeouts = 0
        self.events.tile_done.emit(tile.section_id, tile.tile_index)
        self._emit_progress()

    def _tile_failed(self, tile: TileRef, reason: str, timed_out: bool) -> None:
        c = self._counters
        retries = self._engine.retries_of(tile) if self._engine else 0
        with self._lock:
            c.failed.add(tile)
            c.finished_this_run += 1
        assert self._output is not None
        self._output.report_failure(
            tile, reason, {"error": reason, "retries": retries, "timed_out": timed_out}
        )
        self.events.tile_failed.emit(tile.section_id, tile.tile_index, reason)
        self._message(
            "warning", f"tile {tile.section_id}/{tile.tile_index} failed after {retries} retries: {reason}"
        )
        self._emit_progress()
        if timed_out:
            self._consecutive_timeouts += 1
            if self._consecutive_timeouts >= MAX_CONSECUTIVE_TIMEOUTS:
                self.abort(
                    f"device not answering: {self._consecutive_timeouts} tiles in a row timed out ({reason})"
                )
        else:
            self._consecutive_timeouts = 0

    def _storage_error(self, error: StorageError) -> None:
        self._message("error", str(error))
        self.abort(f"cannot write the scan file: {error}")

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
        )


def read_stored_plan(path: str | os.PathLike[str]) -> ScanPlan:
    """The plan stored in a scan file, with ``output`` set to that file.

    The file is first repaired as for resuming (what a crash or a full disk
    left behind), so a file that needs repair can still be resumed.
    """
    file = Path(path)
    ScanWriter.open_for_resume(file).close()
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
