"""Shared fixtures: the demo microscope, small and deterministic."""

from __future__ import annotations

import os
import time

# Qt tests run offscreen; set before anything imports Qt.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import logging
from collections.abc import Iterator

import pytest

from acquisition.hardware import CordScopeCore, build_core
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
