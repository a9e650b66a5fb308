"""The hardware floor of a scan: moves, settles, switches, exposures and readouts from the devices' timing."""

from __future__ import annotations

import pytest
import useq

from acquisition.demo.devices import move_time_s as demo_move_time_s
from acquisition.scan_floor import HardwareTiming, move_time_s, scan_floor

pytestmark = pytest.mark.filterwarnings("error")


@pytest.mark.parametrize(
    ("distance", "speed", "accel"),
    [
        pytest.param(0.0, 20_000.0, 200_000.0, id="no-move"),
        pytest.param(300.0, 20_000.0, 200_000.0, id="short-triangular"),
        pytest.param(2_000.0, 20_000.0, 200_000.0, id="exactly-reaches-top-speed"),
        pytest.param(9_000.0, 20_000.0, 200_000.0, id="long-trapezoid"),
        pytest.param(1_000.0, 5_000.0, 0.0, id="no-acceleration-limit"),
        pytest.param(1_000.0, 0.0, 0.0, id="instant"),
    ],
)
def test_move_time_is_the_demo_stages(distance: float, speed: float, accel: float) -> None:
    assert move_time_s(distance, speed, accel) == pytest.approx(demo_move_time_s(distance, speed, accel, 0.0))


def _sequence(n_tiles: int) -> useq.MDASequence:
    return useq.MDASequence(
        stage_positions=[useq.Position(x=300.0 * p, y=0.0, z=0.0) for p in range(n_tiles)],
        channels=[
            useq.Channel(config="DAPI", group="Channel", exposure=20.0),
            useq.Channel(config="tdTomato", group="Channel", exposure=50.0),
        ],
        axis_order=("p", "c", "z"),
    )


TIMING = HardwareTiming(
    xy_speed_um_per_s=20_000.0,
    xy_acceleration_um_per_s2=200_000.0,
    xy_settle_ms=30.0,
    filter_switch_ms=50.0,
    readout_ms=20.0,
)


@pytest.mark.parametrize(
    ("order", "start", "switches"),
    [
        pytest.param("fixed", None, 5, id="fixed"),
        pytest.param("fixed", ("Channel", "tdTomato"), 6, id="fixed-from-tdTomato"),
        pytest.param("alternate", None, 3, id="alternate"),
        pytest.param("alternate", ("Channel", "tdTomato"), 3, id="alternate-from-tdTomato"),
    ],
)
def test_floor_of_three_tiles(order: str, start, switches: int) -> None:
    floor = scan_floor(_sequence(3), TIMING, channel_order=order, start_xy_um=(0.0, 0.0), start_channel=start)
    one_move = move_time_s(300.0, 20_000.0, 200_000.0)
    assert floor.n_moves == 2 and floor.moves_s == pytest.approx(2 * one_move)
    assert floor.settles_s == pytest.approx(0.06)
    assert floor.n_switches == switches and floor.switches_s == pytest.approx(0.05 * switches)
    assert floor.n_images == 6
    assert floor.exposures_s == pytest.approx(3 * 0.07) and floor.readouts_s == pytest.approx(6 * 0.02)
    parts = floor.moves_s + floor.settles_s + floor.switches_s + floor.exposures_s + floor.readouts_s
    assert floor.total_s == pytest.approx(parts)
    assert floor.to_json()["total_s"] == pytest.approx(parts)


def test_a_simulated_camera_without_real_exposures_costs_only_its_readout() -> None:
    timing = HardwareTiming(readout_ms=20.0, exposure_takes_time=False)
    floor = scan_floor(_sequence(2), timing)
    assert floor.total_s == pytest.approx(4 * 0.02) == floor.readouts_s
    assert (floor.n_moves, floor.n_switches, floor.n_images) == (1, 3, 4)  # counted, at no cost


def test_timing_is_read_from_the_demo_devices(demo_core) -> None:
    assert HardwareTiming.from_core(demo_core) == HardwareTiming(exposure_takes_time=False)  # all instant
    settings = {
        ("XYStage", "Speed_um_per_s"): 20_000.0,
        ("XYStage", "Acceleration_um_per_s2"): 200_000.0,
        ("XYStage", "SettleTime_ms"): 30.0,
        ("FilterWheel", "SwitchTime_ms"): 50.0,
        ("Camera", "ReadoutTime_ms"): 20.0,
        ("Camera", "ExposureTiming"): "Real",
    }
    for (device, prop), value in settings.items():
        demo_core.setProperty(device, prop, value)
    assert HardwareTiming.from_core(demo_core) == TIMING
