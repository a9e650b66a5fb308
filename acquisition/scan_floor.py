"""The hardware floor of a scan: the least time its moves, settles, switches, exposures and readouts take.

A scan cannot be faster than its hardware: every stage move between tiles
(accelerate, cruise, decelerate, settle), every filter change, and every
image (exposure, then readout). :func:`scan_floor` adds these up for the
events of a compiled scan, in the order the engine runs them (with
``channel_order: alternate`` each tile starts in the channel the filter is
in), from the timing a microscope declares (:class:`HardwareTiming`). The
ratio of a scan's measured time to this floor is what CordScope's own
overhead costs (``benchmarks/bench_scan_floor.py``).

Devices declare their timing as properties; :meth:`HardwareTiming.from_core`
reads those of the demo microscope (XY stage ``Speed_um_per_s``,
``Acceleration_um_per_s2``, ``SettleTime_ms``; filter wheel and objective
``SwitchTime_ms``; camera ``ReadoutTime_ms`` and ``ExposureTiming``). For
another rig, give the numbers from its manuals.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import useq
from pymmcore_plus import CMMCorePlus

from .plan.compile import channels_from_current

__all__ = ["HardwareTiming", "ScanFloor", "move_time_s", "scan_floor"]


def move_time_s(distance_um: float, speed_um_per_s: float, acceleration_um_per_s2: float) -> float:
    """Time of a stage move without settling (s): trapezoidal profile, triangular when short.

    ``speed_um_per_s`` 0: instant; ``acceleration_um_per_s2`` 0: full speed at once.
    """
    d, v, a = float(distance_um), float(speed_um_per_s), float(acceleration_um_per_s2)
    if d <= 0.0 or v <= 0.0:
        return 0.0
    if a <= 0.0:
        return d / v
    if d <= v * v / a:
        return 2.0 * math.sqrt(d / a)
    return d / v + v / a


@dataclasses.dataclass(frozen=True)
class HardwareTiming:
    """What the microscope's moves, switches and images take.

    Attributes
    ----------
    xy_speed_um_per_s : float
        Stage top speed (0: instant moves).
    xy_acceleration_um_per_s2 : float
        Stage acceleration and deceleration (0: full speed at once).
    xy_settle_ms : float
        Settling after every XY move.
    filter_switch_ms : float
        One change of the channel's filter (or any device of the channel presets).
    readout_ms : float
        Camera readout after each exposure.
    exposure_takes_time : bool
        Whether an image takes its exposure time (False for a simulated camera that returns at once).
    """

    xy_speed_um_per_s: float = 0.0
    xy_acceleration_um_per_s2: float = 0.0
    xy_settle_ms: float = 0.0
    filter_switch_ms: float = 0.0
    readout_ms: float = 0.0
    exposure_takes_time: bool = True

    @classmethod
    def from_core(cls, core: CMMCorePlus, *, channel_group: str | None = None) -> HardwareTiming:
        """The timing the current devices declare in their properties (the demo microscope's names).

        Properties a device does not have count as 0 (instant).

        Parameters
        ----------
        core : CMMCorePlus
        channel_group : str, optional
            Group of the channel presets (default: the core's channel group);
            the slowest ``SwitchTime_ms`` of the devices its presets set is the
            filter switch time.
        """

        def prop(label: str, name: str) -> float:
            if label and core.hasProperty(label, name):
                return float(core.getProperty(label, name))
            return 0.0

        stage = core.getXYStageDevice()
        camera = core.getCameraDevice()
        group = channel_group or core.getChannelGroup()
        switch_ms = 0.0
        if group and core.isGroupDefined(group):
            labels = {
                str(setting[0])
                for preset in core.getAvailableConfigs(group)
                for setting in core.getConfigData(group, preset)
            }
            switch_ms = max((prop(label, "SwitchTime_ms") for label in labels), default=0.0)
        timing_prop = "ExposureTiming"
        real = (
            not (camera and core.hasProperty(camera, timing_prop))
            or core.getProperty(camera, timing_prop) == "Real"
        )
        return cls(
            xy_speed_um_per_s=prop(stage, "Speed_um_per_s"),
            xy_acceleration_um_per_s2=prop(stage, "Acceleration_um_per_s2"),
            xy_settle_ms=prop(stage, "SettleTime_ms"),
            filter_switch_ms=switch_ms,
            readout_ms=prop(camera, "ReadoutTime_ms"),
            exposure_takes_time=real,
        )


@dataclasses.dataclass(frozen=True)
class ScanFloor:
    """The least time a scan's hardware takes, and of what.

    Attributes
    ----------
    moves_s, settles_s, switches_s, exposures_s, readouts_s : float
        Time of each kind (s).
    n_moves, n_switches, n_images : int
    """

    moves_s: float
    settles_s: float
    switches_s: float
    exposures_s: float
    readouts_s: float
    n_moves: int
    n_switches: int
    n_images: int

    @property
    def total_s(self) -> float:
        """The floor (s)."""
        return self.moves_s + self.settles_s + self.switches_s + self.exposures_s + self.readouts_s

    def to_json(self) -> dict[str, float | int]:
        """Every number, the total included."""
        return {**dataclasses.asdict(self), "total_s": self.total_s}


def scan_floor(
    events: Iterable[useq.MDAEvent],
    timing: HardwareTiming,
    *,
    channel_order: str = "fixed",
    start_xy_um: tuple[float, float] | None = None,
    start_channel: tuple[str, str] | None = None,
) -> ScanFloor:
    """The hardware floor of a scan's events (see the module docstring).

    Parameters
    ----------
    events : iterable of useq.MDAEvent
        The compiled scan (e.g. ``ScanController``'s sequence), in order.
    timing : HardwareTiming
    channel_order : {"fixed", "alternate"}
        As the plan's ``channel_order``: with ``alternate`` each tile starts
        in the channel of the previous image (as the engine runs it).
    start_xy_um, start_channel : optional
        Where the stage and the filter are before the first event (default:
        already at the first tile, in its first channel).

    Returns
    -------
    ScanFloor
    """
    current: list[tuple[str, str] | None] = [start_channel]
    ordered = channels_from_current(events, lambda: current[0]) if channel_order == "alternate" else events
    xy = start_xy_um
    moves = settles = switches = exposures = readouts = 0.0
    n_moves = n_switches = n_images = 0
    for event in ordered:
        if event.x_pos is not None and event.y_pos is not None:
            target = (float(event.x_pos), float(event.y_pos))
            if xy is not None and target != xy:
                distance = math.hypot(target[0] - xy[0], target[1] - xy[1])
                moves += move_time_s(distance, timing.xy_speed_um_per_s, timing.xy_acceleration_um_per_s2)
                settles += timing.xy_settle_ms / 1000.0
                n_moves += 1
            xy = target
        if event.channel is not None:
            channel = (event.channel.group, event.channel.config)
            if current[0] is not None and channel != current[0]:
                switches += timing.filter_switch_ms / 1000.0
                n_switches += 1
            current[0] = channel
        n_images += 1
        if timing.exposure_takes_time and event.exposure is not None:
            exposures += float(event.exposure) / 1000.0
        readouts += timing.readout_ms / 1000.0
    return ScanFloor(moves, settles, switches, exposures, readouts, n_moves, n_switches, n_images)
