"""The scan engine: pymmcore-plus' ``MDAEngine`` with a watchdog and retries on every device call.

:class:`ScanEngine` handles hardware faults the way an unattended scan needs:
every device call runs under :func:`call_with_watchdog`, failed calls are
retried, and a tile whose calls keep failing is marked failed and skipped
instead of being imaged at the wrong place or silently dropped (the stock
engine logs a warning and goes on).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import useq
from pymmcore_plus import CMMCorePlus
from pymmcore_plus.mda import MDAEngine, SkipEvent

from .errors import CordScopeError
from .plan.compile import channels_from_current

if TYPE_CHECKING:
    from .retake import RetakeRunner

__all__ = ["DeviceTimeoutError", "ScanEngine", "TileRef", "call_with_watchdog"]

logger = logging.getLogger(__name__)


T = TypeVar("T")


class DeviceTimeoutError(CordScopeError):
    """A device did not answer within the watchdog timeout."""


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
    channel_order : {"fixed", "alternate"}
        ``alternate``: each tile's channels start with the one the microscope
        is in (:func:`acquisition.plan.compile.channels_from_current`).
    retake : RetakeRunner, optional
        Checks each complete single-plane tile's sharpness and refocuses and
        retakes it if blurred (:mod:`acquisition.retake`); the tile's frames
        are held until then, and its record goes into the frames' metadata
        (``cordscope_retake``).
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
                self._retry_log.setdefault(tile, []).append(
                    {"call": description, "attempt": attempt, "error": _one_line(e)}
                )
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
