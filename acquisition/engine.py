"""The scan engine: pymmcore-plus' ``MDAEngine`` with a watchdog and retries on every device call.

:class:`ScanEngine` handles hardware faults the way an unattended scan needs:
every device call runs through :class:`DeviceCalls` (a watchdog, retries,
one call at a time), and a tile whose calls keep failing is marked failed
and skipped instead of being imaged at the wrong place or silently dropped
(the stock engine logs a warning and goes on). The focus map runs its
device calls through the same :class:`DeviceCalls`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import useq
from pymmcore_plus import CMMCorePlus
from pymmcore_plus.mda import MDAEngine, SkipEvent

from .errors import CordScopeError
from .plan.compile import channels_from_current

if TYPE_CHECKING:
    from .retake import RetakeRunner
from .storage import tile_name

__all__ = [
    "AbortRequested",
    "DeviceCalls",
    "DeviceTimeoutError",
    "ScanEngine",
    "TileRef",
    "call_with_watchdog",
    "unanswered_device_calls",
]

logger = logging.getLogger(__name__)


T = TypeVar("T")

#: Slice (s) in which a wait for a device call checks for an abort.
_POLL_S = 0.1


class DeviceTimeoutError(CordScopeError):
    """A device did not answer within the watchdog timeout."""


class AbortRequested(CordScopeError):
    """A device call was not made (or not waited for) because the scan is being stopped."""


# ----------------------------------------------------------------- watchdog

#: Device calls abandoned by the watchdog that have not returned yet (see :func:`unanswered_device_calls`).
_UNANSWERED: dict[threading.Thread, str] = {}
_UNANSWERED_LOCK = threading.Lock()


def unanswered_device_calls() -> list[str]:
    """Descriptions of device calls the watchdog gave up on that are still running.

    Such a call holds its device (a Python device's lock, or MMCore's), so
    anything touching that device blocks until it returns, which may be
    never: a process with unanswered calls cannot shut its devices down and
    should end without waiting for them (the ``cordscope`` command does).
    """
    with _UNANSWERED_LOCK:
        for thread in [t for t in _UNANSWERED if not t.is_alive()]:
            del _UNANSWERED[thread]
        return list(_UNANSWERED.values())


@dataclass
class _Call:
    """A device call running in its own daemon thread."""

    description: str
    thread: threading.Thread
    result: queue.Queue[tuple[bool, Any]] = field(default_factory=lambda: queue.Queue(maxsize=1))
    started: float = field(default_factory=time.monotonic)


def _start_call(description: str, func: Callable[[], Any]) -> _Call:
    box: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)

    def target() -> None:
        try:
            box.put((True, func()))
        except BaseException as e:  # handed to the caller's thread, not swallowed
            box.put((False, e))

    thread = threading.Thread(target=target, name=f"device-call: {description}", daemon=True)
    call = _Call(description, thread, box)
    thread.start()
    return call


def _wait(call: _Call, timeout_s: float, stop: Callable[[], str | None]) -> tuple[bool, Any] | None:
    """The call's ``(ok, value)``, or None if it did not return within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if (reason := stop()) is not None:
            _abandon(call)
            raise AbortRequested(f"{call.description}: not waited for: {reason}")
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            return call.result.get(timeout=min(_POLL_S, left))
        except queue.Empty:
            continue


def _abandon(call: _Call) -> None:
    if call.thread.is_alive():
        with _UNANSWERED_LOCK:
            _UNANSWERED[call.thread] = call.description


def _never() -> str | None:
    return None


def call_with_watchdog(description: str, func: Callable[[], T], *, timeout_s: float) -> T:
    """Run a device call, raising :class:`DeviceTimeoutError` if it does not return in time.

    The call runs in a daemon thread so that a device that stops answering
    cannot hang the caller; the stuck thread is abandoned and listed by
    :func:`unanswered_device_calls`. :class:`DeviceCalls` adds retries and
    never starts a call beside an abandoned one.
    """
    call = _start_call(description, func)
    answer = _wait(call, timeout_s, _never)
    if answer is None:
        _abandon(call)
        raise DeviceTimeoutError(f"{description}: no answer within {timeout_s:g} s")
    ok, value = answer
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


class DeviceCalls:
    """Device calls under a watchdog, with retries, one at a time, stoppable.

    Every call runs in a daemon thread and must return within ``timeout_s``.
    A call that fails (an exception, or no answer in time) is retried up to
    ``max_retries`` times. A call that did not answer is never run again
    beside itself: the next call (its retry, or any later call) first waits
    up to ``timeout_s`` for it to return (the device is busy with it; a
    second call would only queue behind it, or worse, run late and move a
    stage after the scan moved on). If it still has not returned, that wait
    fails as a timeout, without starting anything.

    Parameters
    ----------
    max_retries : int
        Extra attempts per call.
    timeout_s : float
        Watchdog timeout of one attempt (and of one wait for an unanswered call), s.
    should_stop : callable, optional
        Returns a reason to stop (e.g. the user aborted) or None; asked
        before every attempt and while waiting. A stop raises :class:`AbortRequested`.
    on_retry : callable, optional
        ``f(description, attempt, error)`` before each retry.
    """

    def __init__(
        self,
        *,
        max_retries: int,
        timeout_s: float,
        should_stop: Callable[[], str | None] = _never,
        on_retry: Callable[[str, int, BaseException], None] | None = None,
    ) -> None:
        self.max_retries = int(max_retries)
        self.timeout_s = float(timeout_s)
        self.should_stop = should_stop
        self.on_retry = on_retry
        self.n_retries = 0
        self._unanswered: _Call | None = None

    def _check_stop(self, description: str) -> None:
        if (reason := self.should_stop()) is not None:
            raise AbortRequested(f"{description}: not started: {reason}")

    def _wait_unanswered(self, description: str) -> None:
        """Wait up to the timeout for an earlier call that did not answer; raise if it still has not."""
        pending = self._unanswered
        if pending is None:
            return
        if pending.thread.is_alive():
            if _wait(pending, self.timeout_s, self.should_stop) is None:
                age = time.monotonic() - pending.started
                raise DeviceTimeoutError(
                    f"{description}: not started, the device has not answered {pending.description} "
                    f"for {age:.0f} s"
                )
        self._unanswered = None

    def _attempt(self, description: str, func: Callable[[], T]) -> T:
        self._check_stop(description)
        self._wait_unanswered(description)
        call = _start_call(description, func)
        answer = _wait(call, self.timeout_s, self.should_stop)
        if answer is None:
            self._unanswered = call
            _abandon(call)
            raise DeviceTimeoutError(f"{description}: no answer within {self.timeout_s:g} s")
        ok, value = answer
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def call(self, description: str, func: Callable[[], T]) -> T:
        """Run ``func`` (a device call named by ``description``) with watchdog and retries.

        Raises
        ------
        DeviceTimeoutError
            When the last attempt did not answer in time.
        AbortRequested
            When ``should_stop`` asked to stop.
        Exception
            The last attempt's own error.
        """
        attempt = 0
        while True:
            try:
                return self._attempt(description, func)
            except AbortRequested:
                raise
            except Exception as e:
                if attempt >= self.max_retries:
                    raise
                attempt += 1
                self.n_retries += 1
                if self.on_retry is not None:
                    self.on_retry(description, attempt, e)
                time.sleep(min(0.05 * attempt, 0.5))


# ------------------------------------------------------------------- engine


@dataclass(frozen=True)
class TileRef:
    """One tile of one section."""

    section_id: str
    tile_index: int

    def __str__(self) -> str:
        return tile_name(self.section_id, self.tile_index)


class ScanEngine(MDAEngine):
    """pymmcore-plus' MDA engine with retries, watchdog and failed tiles.

    Every hardware call of an event (XY and Z moves, channel, exposure,
    waiting for the devices, the snap) runs through :class:`DeviceCalls`:
    under a watchdog, retried up to ``max_retries`` times (calls that did not
    answer in time too, once the device answered the earlier call). When an
    event still fails, its tile is reported through ``on_tile_failed`` and
    the remaining events of that tile are skipped (``SkipEvent``), so a tile
    is either complete or marked failed — never imaged at the wrong position.

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
    channel_order : {"fixed", "alternate"}
        ``alternate``: each tile's channels start with the one the microscope
        is in (:func:`acquisition.plan.compile.channels_from_current`).
    retake : RetakeRunner, optional
        Checks each complete single-plane tile's sharpness and refocuses and
        retakes it if blurred (:mod:`acquisition.retake`); the tile's frames
        are held until then, and its record goes into the frames' metadata
        (``cordscope_retake``).
    on_retry : callable, optional
        ``f(tile, description, attempt, error)`` before each retry, in the MDA thread.
    should_stop : callable, optional
        Returns a reason to stop waiting for devices (the scan is aborted) or None.
    """

    def __init__(
        self,
        core: CMMCorePlus,
        *,
        tile_of: Callable[[useq.MDAEvent], TileRef],
        max_retries: int,
        timeout_s: float,
        on_tile_failed: Callable[[TileRef, str, bool], None],
        channel_order: Literal["fixed", "alternate"] = "fixed",
        retake: RetakeRunner | None = None,
        on_retry: Callable[[TileRef, str, int, BaseException], None] | None = None,
        should_stop: Callable[[], str | None] = _never,
    ) -> None:
        super().__init__(core, use_hardware_sequencing=False)
        self._channel_order = channel_order
        self._retake = retake
        self._n_channels = 0
        self._held: dict[TileRef, dict[int, tuple[np.ndarray, useq.MDAEvent, Any]]] = {}
        self._settling: TileRef | None = None
        self._tile_of = tile_of
        self._max_retries = max_retries
        self._timeout_s = timeout_s
        self._on_tile_failed = on_tile_failed
        self._on_retry = on_retry
        self._current_tile: TileRef | None = None
        self.calls = DeviceCalls(
            max_retries=max_retries, timeout_s=timeout_s, should_stop=should_stop, on_retry=self._retried
        )
        self._failed: set[TileRef] = set()
        self._retries: dict[TileRef, int] = {}
        # retried calls of each tile not yet handed on with a frame (see exec_single_event)
        self._retry_log: dict[TileRef, list[dict[str, Any]]] = {}
        self._last_xy: tuple[float, float] | None = None
        self._last_z: float | None = None
        self._last_channel: tuple[str, str] | None = None

    def retries_of(self, tile: TileRef) -> int:
        """How many device calls of this tile needed a retry."""
        return self._retries.get(tile, 0)

    def _retried(self, description: str, attempt: int, error: BaseException) -> None:
        tile = self._current_tile
        if tile is None:
            return
        self._retries[tile] = self._retries.get(tile, 0) + 1
        self._retry_log.setdefault(tile, []).append(
            {
                "call": description,
                "attempt": attempt,
                "error": _one_line(error),
                "timed_out": isinstance(error, DeviceTimeoutError),
            }
        )
        logger.info("tile %s: %s failed (%s); retry %d", tile, description, _one_line(error), attempt)
        self._after_failed_call()
        if self._on_retry is not None:
            self._on_retry(tile, description, attempt, error)

    def _call(self, tile: TileRef, description: str, func: Callable[[], T]) -> T:
        self._current_tile = tile
        return self.calls.call(description, func)

    def _after_failed_call(self) -> None:
        # a failed move may have left the stage anywhere: move again next time
        self._last_xy = None
        self._last_z = None

    def _fail(self, tile: TileRef, error: BaseException) -> None:
        self._failed.add(tile)
        self._retry_log.pop(tile, None)
        self._held.pop(tile, None)
        if self._retake is not None:
            self._retake.neighbours.forget((tile.section_id, tile.tile_index))
        self._last_xy = self._last_z = None
        self._on_tile_failed(tile, _one_line(error), isinstance(error, DeviceTimeoutError))

    def setup_sequence(self, sequence: useq.MDASequence) -> Any:
        """Prepare the sequence (as MDAEngine) and forget state of earlier runs."""
        self._failed.clear()
        self._held.clear()
        self._last_xy = self._last_z = self._last_channel = None
        self._n_channels = len(sequence.channels)
        if self._retake is not None and sequence.z_plan is not None and sequence.z_plan.num_positions() > 1:
            self._retake = None  # a z-stack samples focus already: tiles are kept as taken
        return super().setup_sequence(sequence)

    def event_iterator(self, events: Iterable[useq.MDAEvent]) -> Iterator[useq.MDAEvent]:
        """The sequence's events; ``alternate`` channel order: each tile starts in the current channel."""
        if self._channel_order != "alternate":
            yield from events
            return
        yield from channels_from_current(events, lambda: self._last_channel)

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
        except AbortRequested as e:
            raise SkipEvent(reason=_one_line(e)) from None  # the run is being cancelled: no failure
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
        except AbortRequested:
            return  # the run is being cancelled: the tile stays pending
        except Exception as e:
            self._fail(tile, e)
            return
        meta = self.get_frame_metadata(
            event,
            runner_time_ms=(time.perf_counter() - t0) * 1000,
            camera_device=camera,
            include_position=True,
        )
        if self._retake is None:
            # the writer stores them in the tile's metadata (retries of a tile that finally succeeds)
            meta["cordscope_retries"] = self._retry_log.pop(tile, [])  # type: ignore[typeddict-unknown-key]
            yield (image, event, meta)
            return
        # hold the tile's frames until all its channels are in, then judge its sharpness
        held = self._held.setdefault(tile, {})
        held[int(event.index.get("c", 0))] = (image, event, meta)
        if len(held) < self._n_channels:
            return
        del self._held[tile]
        self._settling = tile
        try:
            frames, record = self._retake.settle((tile.section_id, tile.tile_index), held, self)
        except Exception as e:
            self._fail(tile, e)
            return
        finally:
            self._settling = None
        retries = self._retry_log.pop(tile, [])
        for k, (img, ev, frame_meta) in enumerate(frames.values()):
            frame_meta["cordscope_retries"] = retries if k == 0 else []
            frame_meta["cordscope_retake"] = record.to_json()
            yield (img, ev, frame_meta)

    # ------------------------------------------------ TileCamera (retakes)

    def current_channel(self) -> tuple[str, str] | None:
        """``(group, config)`` of the channel set last."""
        return self._last_channel

    def snap_at(self, event: useq.MDAEvent, z_um: float) -> np.ndarray:
        """Image ``event``'s channel at ``z_um`` (XY unchanged), each call under the watchdog."""
        tile = self._settling or self._tile_of(event)
        core = self.mmcore
        if z_um != self._last_z:
            focus = core.getFocusDevice()
            self._call(tile, f"{focus}: focus to {z_um:.2f} µm", lambda: _move_z(core, z_um))
            self._last_z = z_um
        if (ch := event.channel) is not None and (ch.group, ch.config) != self._last_channel:
            group, config = ch.group, ch.config
            self._call(tile, f"channel {config}", lambda: _set_config(core, group, config))
            self._last_channel = (group, config)
        if event.exposure is not None and float(event.exposure) != float(core.getExposure()):
            exposure = float(event.exposure)
            self._call(tile, f"exposure {exposure:g} ms", lambda: core.setExposure(exposure))
        camera = core.getCameraDevice()
        return self._call(tile, f"{camera}: snap", lambda: _snap(core))


#: Polling interval while waiting for a Python device (pymmcore-plus polls every 10 ms: up to
#: 10 ms lost per move or filter change, ~5 % of a tile at realistic timings).
_PY_DEVICE_POLL_S = 0.0005


def _wait_for_device(core: CMMCorePlus, label: str) -> None:
    is_py = getattr(core, "isPyDevice", None)
    if is_py is None or not is_py(label):
        core.waitForDevice(label)
        return
    deadline = time.perf_counter() + core.getTimeoutMs() / 1000.0
    while core.deviceBusy(label):
        if time.perf_counter() > deadline:
            # as pymmcore-plus' waitForDevice: an error the call's retries handle
            raise TimeoutError(f"{label}: still busy after {core.getTimeoutMs():g} ms")
        time.sleep(_PY_DEVICE_POLL_S)


def _move_xy(core: CMMCorePlus, xy: tuple[float, float]) -> None:
    core.setXYPosition(*xy)
    _wait_for_device(core, core.getXYStageDevice())


def _move_z(core: CMMCorePlus, z: float) -> None:
    core.setPosition(z)
    _wait_for_device(core, core.getFocusDevice())


def _set_config(core: CMMCorePlus, group: str, config: str) -> None:
    core.setConfig(group, config)
    for label in sorted({str(setting[0]) for setting in core.getConfigData(group, config)}):
        _wait_for_device(core, label)


def _snap(core: CMMCorePlus) -> np.ndarray:
    core.snapImage()
    return np.asarray(core.getImage())


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) < 300 else text[:297] + "..."
