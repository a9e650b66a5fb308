"""Shared fixtures: the demo microscope, small and deterministic."""

from __future__ import annotations

import os
import time

# Qt tests run offscreen; set before anything imports Qt.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# importing pymmcore-widgets sets PYMM_SIGNALS_BACKEND=qt for this process, which the commands the
# tests start in child processes would inherit (a warning line: no Qt app there); "auto" picks Qt
# wherever a QApplication exists
os.environ.setdefault("PYMM_SIGNALS_BACKEND", "auto")
# rich sizes its console when cordscope.cli is first imported: the same width whichever test does it
os.environ.setdefault("COLUMNS", "200")

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from acquisition.hardware import DEMO_CONFIG, CordScopeCore, build_core
from tests.acquisition.mm_adapters import mm_demo_config  # noqa: F401  (fixture for every test)

TEST_SENSOR_PX = 512


def make_demo_core(*, sensor_px: int = TEST_SENSOR_PX, noise: bool = True, seed: int = 7) -> CordScopeCore:
    """A demo core with a small sensor and seeded noise."""
    core = build_core()
    core.setProperty("Camera", "SensorWidth", sensor_px)
    core.setProperty("Camera", "SensorHeight", sensor_px)
    core.setProperty("Camera", "Noise", "On" if noise else "Off")
    core.setProperty("Camera", "NoiseSeed", seed)
    return core


@pytest.fixture
def demo_core() -> Iterator[CordScopeCore]:
    """A fresh demo core (512×512 sensor, seeded noise), unloaded afterwards."""
    core = make_demo_core()
    yield core
    core.close()


@pytest.fixture
def wait_until():
    """Poll a condition (outside Qt) until it holds, optionally for ``stable_s`` seconds."""

    def wait(condition, *, timeout_s: float = 30.0, stable_s: float = 0.0) -> None:
        deadline = time.monotonic() + timeout_s
        held_since = None
        while time.monotonic() < deadline:
            if condition():
                held_since = held_since or time.monotonic()
                if time.monotonic() - held_since >= stable_s:
                    return
            else:
                held_since = None
            time.sleep(0.02)
        raise AssertionError(f"condition not met within {timeout_s} s")

    return wait


@pytest.fixture(autouse=True)
def _quiet_vispy() -> None:
    """vispy (pymmcore-widgets' image view) warns that offscreen Qt has no OpenGL context.

    It logs through a handler bound to a stream pytest has closed by then, and sets its
    logger's level when it is imported: keep the logger to errors before every test.
    """
    logging.getLogger("vispy").setLevel(logging.ERROR)


# ----------------------------------------------------------------- shared scans

TH7 = "rat01-Th7"  # 60 tiles at 10x with a 512² sensor (the minimal cover of its demo polygon)


@dataclasses.dataclass
class LiveScan:
    """A finished scan session with the live analysis process, and what was seen while it ran."""

    path: Path
    session: Any
    result: Any
    update_times: list[float]
    update_rows: list[tuple[str, list]]
    snapshots: list[Any]


def run_live_scan(path: Path, *, section_ids=(TH7,), driver: Any = None, **plan_options: Any) -> LiveScan:
    """Scan demo sections in a ScanSession with a live analysis ``driver`` (default: the process users run).

    Snapshots are polled from this thread while the session runs, as the GUI does.
    """
    from acquisition.demo.plans import demo_plan
    from acquisition.session import ScanSession
    from analysis.live import AnalysisProcess

    options = {"focus": {"strategy": "fixed", "z_um": 0.0}, **plan_options}
    core = make_demo_core()
    try:
        plan = demo_plan(output=path, section_ids=list(section_ids), **options)
        session = ScanSession(core, plan, analysis=driver or AnalysisProcess, overwrite=True)
        times: list[float] = []
        rows: list[tuple[str, list]] = []
        snapshots: list[Any] = []

        def on_update(section_id: str, table_rows: list) -> None:
            times.append(time.monotonic())
            rows.append((section_id, table_rows))

        session.events.maps_updated.connect(on_update)
        session.start()
        while session.result is None and session.state != "failed":
            if session.state == "scanning" and (snap := session.snapshot(section_ids[0])) is not None:
                snapshots.append(snap)
            time.sleep(0.1)
        result = session.wait(600)
    finally:
        core.close()
    return LiveScan(path, session, result, times, rows, snapshots)


@pytest.fixture(scope="session")
def th7_live_scan(tmp_path_factory) -> LiveScan:
    """rat01-Th7 scanned once per test run with the live analysis process (do not modify the file)."""
    return run_live_scan(tmp_path_factory.mktemp("th7-live") / "th7.h5")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to run over a demo microscope (model A or B) that was calibrated in this checkout.

    Every scan of a config copies the calibration files beside it
    (``<cfg stem>.calibration/``) and applies them; the tests' expectations are
    those of the demo microscope as shipped.
    """
    for folder in sorted(DEMO_CONFIG.parent.glob("*.calibration")):
        raise pytest.UsageError(
            f"{folder} exists (written by cordscope calibrate/flatfield): every demo scan of the tests "
            "would apply it; move it out of the checkout to run the tests"
        )
