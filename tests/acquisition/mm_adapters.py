"""Micro-Manager's own C++ demo adapters as a test tier.

``mm_demo_config(kind)`` (a fixture, registered in ``tests/conftest.py``)
gives a configuration of the kind Micro-Manager's Hardware Configuration
Wizard writes for the ``DemoCamera`` adapters, with what CordScope should
decide about it. The adapters are found through ``MICROMANAGER_PATH`` or a
``shared/mm-adapters/lib`` folder beside the repository or one of its
parent folders (a worktree may sit deeper than the main checkout); without
them the test is skipped with the reason.

Kinds
-----
``"8bit"``
    8-bit DCam; a ``Channel`` group (no ``Core,ChannelGroup`` line:
    pymmcore-plus guesses it) and a ``Nosepiece`` objective group.
``"16bit-bin2"``
    16-bit DCam binned 2×2; a ``Fluorophore`` group (no name rule fits:
    the only group switching a state device), a ``Turret`` objective group
    and a camera ``Gain`` group; rotated pixel affines.
``"12bit-roi"``
    12-bit DCam with an ROI set after loading; ``Channel`` (camera modes)
    and ``Filter`` both match pymmcore-plus' name guess, ``Filter`` switches
    the wheel; ``Objectives`` group; a mirrored camera's affines.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from acquisition.hardware import CordScopeCore

MM_CONFIGS = Path(__file__).resolve().parent / "mm_configs"
REPO = Path(__file__).resolve().parents[2]
_ADAPTER_FILE = "libmmgr_dal_DemoCamera"


def _has_demo_adapters(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.startswith(_ADAPTER_FILE) for p in folder.iterdir())


def find_mm_adapters() -> Path | None:
    """The folder holding Micro-Manager's C++ DemoCamera adapter, or None.

    ``MICROMANAGER_PATH`` first, then ``shared/mm-adapters/lib`` beside the
    repository or beside any of its parent folders.
    """
    if env := os.environ.get("MICROMANAGER_PATH"):
        folder = Path(env).expanduser()
        if _has_demo_adapters(folder):
            return folder
    for parent in REPO.parents:
        folder = parent / "shared" / "mm-adapters" / "lib"
        if _has_demo_adapters(folder):
            return folder
    return None


SKIP_REASON = (
    "Micro-Manager's C++ DemoCamera adapters not found: set MICROMANAGER_PATH or build them into "
    "<repo>/../shared/mm-adapters/lib (its build.sh)"
)


@dataclass(frozen=True)
class MMDemoConfig:
    """A Wizard-style ``.cfg`` for the C++ demo adapters and what CordScope should decide.

    Usable as a path (``os.fspath``); :meth:`build` loads it into a core
    and applies the ROI a ``.cfg`` cannot hold.
    """

    kind: str
    path: Path
    adapters: Path
    bit_depth: int
    binning: int
    roi: tuple[int, int, int, int] | None
    channel_group: str
    channel_reason: str
    objective_group: str
    #: unbinned 2×2 affine (µm/px) of each pixel-size configuration
    affines_um: dict[str, tuple[tuple[float, float], tuple[float, float]]]

    def __fspath__(self) -> str:
        return str(self.path)

    def build(self, **kwargs: Any) -> CordScopeCore:
        """Load into a CordScope core (adapters from :attr:`adapters`), ROI applied."""
        from acquisition.hardware import build_core

        core = build_core(self.path, mm_path=self.adapters, **kwargs)
        if self.roi is not None:
            core.setROI(*self.roi)
        return core


def _rotation(px: float, deg: float) -> tuple[tuple[float, float], tuple[float, float]]:
    import math

    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return ((px * c, -px * s), (px * s, px * c))


def _kinds(adapters: Path) -> dict[str, MMDemoConfig]:
    identity = {
        name: ((px, 0.0), (0.0, px)) for name, px in (("Res4x", 1.625), ("Res10x", 0.65), ("Res20x", 0.325))
    }
    mirrored = {
        name: ((-px, 0.0), (0.0, px)) for name, px in (("Res4x", 1.625), ("Res10x", 0.65), ("Res20x", 0.325))
    }
    return {
        "8bit": MMDemoConfig(
            kind="8bit",
            path=MM_CONFIGS / "dcam-8bit.cfg",
            adapters=adapters,
            bit_depth=8,
            binning=1,
            roi=None,
            channel_group="Channel",
            channel_reason="guessed by pymmcore-plus from the group name",
            objective_group="Nosepiece",
            affines_um=identity,
        ),
        "16bit-bin2": MMDemoConfig(
            kind="16bit-bin2",
            path=MM_CONFIGS / "dcam-16bit-bin2.cfg",
            adapters=adapters,
            bit_depth=16,
            binning=2,
            roi=None,
            channel_group="Fluorophore",
            channel_reason=(
                "the only group whose presets switch a filter/state device (objective group aside)"
            ),
            objective_group="Turret",
            affines_um={
                "Res4x": _rotation(1.625, 1.5),
                "Res10x": _rotation(0.65, 1.5),
                "Res20x": ((0.0, -0.325), (0.325, 0.0)),
            },
        ),
        "12bit-roi": MMDemoConfig(
            kind="12bit-roi",
            path=MM_CONFIGS / "dcam-12bit-roi.cfg",
            adapters=adapters,
            bit_depth=12,
            binning=1,
            roi=(64, 32, 256, 192),
            channel_group="Filter",
            channel_reason=(
                "guessed by pymmcore-plus among Channel, Filter; the only one switching a state device"
            ),
            objective_group="Objectives",
            affines_um=mirrored,
        ),
        "beads": MMDemoConfig(
            kind="beads",
            path=MM_CONFIGS / "dcam-beads.cfg",
            adapters=adapters,
            bit_depth=16,
            binning=1,
            roi=None,
            channel_group="Channel",
            channel_reason="guessed by pymmcore-plus from the group name",
            objective_group="Nosepiece",
            affines_um={"Res4x": ((2.5, 0.0), (0.0, 2.5)), "Res10x": ((1.0, 0.0), (0.0, 1.0))},
        ),
    }


#: The kinds the per-config tests run on ("beads" is for whole scans: tests/acquisition/test_cpp_scan.py).
MM_DEMO_KINDS: tuple[str, ...] = ("8bit", "16bit-bin2", "12bit-roi")


@pytest.fixture
def mm_demo_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], MMDemoConfig]]:
    """``mm_demo_config(kind) -> MMDemoConfig`` for the C++ demo adapters (skips without them).

    Also points ``MICROMANAGER_PATH`` at the adapters, so ``build_core``,
    the command line and the GUI find them as they would on a rig.
    """
    adapters = find_mm_adapters()
    if adapters is None:
        pytest.skip(SKIP_REASON)
    monkeypatch.setenv("MICROMANAGER_PATH", str(adapters))
    kinds = _kinds(adapters)

    def get(kind: str) -> MMDemoConfig:
        if kind not in kinds:
            raise KeyError(f"no C++ demo config {kind!r}; kinds: {', '.join(kinds)}")
        return kinds[kind]

    yield get
