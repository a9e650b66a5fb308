"""What the reliability tests share: small demo rigs and plans, the command in-process, and checks.

Every bad-input case asserts the same four things (:func:`assert_refused`):
exit code 2, exactly one line on stderr naming the problem (no traceback, no
multi-line dump), no stage motion (the demo stages count their moves), and
the input files byte-identical afterwards (:func:`file_digests`).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from acquisition.demo.devices import DemoCamera, DemoXYStage, DemoZStage
from acquisition.demo.plans import demo_plan
from acquisition.hardware import DEMO_CONFIG
from acquisition.plan import ScanPlan, plan_from_dict, save_plan
from cordscope.cli import app

SECTION = "rat01-Th7"
#: The demo camera in these tests: 128² pixels, so a tile is 83 µm at 10x and a scan takes a second.
SENSOR_PX = 128
#: Half the side of the small square section scanned (µm): 16 tiles at 10x with a 128² sensor.
HALF_SIDE_UM = 150.0

runner = CliRunner()


def fault_config(
    directory: Path, *properties: str, name: str = "rig.cfg", sensor_px: int = SENSOR_PX
) -> Path:
    """The demo config with a small sensor and extra ``Device,Property,Value`` settings (faults)."""
    lines = [f"Camera,SensorWidth,{sensor_px}", f"Camera,SensorHeight,{sensor_px}", *properties]
    path = directory / name
    path.write_text(
        DEMO_CONFIG.read_text() + "\n# test settings\n" + "".join(f"#py Property,{p}\n" for p in lines)
    )
    return path


def small_plan(
    output: Path,
    *,
    config: Path | None = None,
    half_side_um: float = HALF_SIDE_UM,
    at_edge: bool = False,
    **update: Any,
) -> ScanPlan:
    """One small square of the demo's rat01-Th7 (16 tiles with a 128² sensor), fixed focus.

    The square is centred on the section, or (``at_edge``) over its left edge, where the
    analysis finds tissue and glass and so writes region tables.
    """
    plan = demo_plan(
        output=output,
        section_ids=[SECTION],
        focus={"strategy": "fixed", "z_um": 0.0},
        hardware_config=config or DEMO_CONFIG,
    )
    poly = plan.sections[0].polygon_um
    h = half_side_um
    cx = sum(v[0] for v in poly) / len(poly)
    cy = sum(v[1] for v in poly) / len(poly)
    if at_edge:
        cx = min(v[0] for v in poly) + h + 100.0
    square = [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    data = plan.model_dump()
    data["sections"][0]["polygon_um"] = square
    return plan_from_dict({**data, **update}, source="small_plan")


def write_plan(directory: Path, *, name: str = "plan.yaml", **kw: Any) -> Path:
    """A small plan (:func:`small_plan`) scanning to ``directory/scan.h5``, saved as ``directory/name``."""
    config = kw.pop("config", None) or fault_config(directory)
    plan = small_plan(kw.pop("output", directory / "scan.h5"), config=config, **kw)
    path = directory / name
    save_plan(plan, path)
    return path


# ------------------------------------------------------------------ watching


@dataclass
class Motion:
    """Moves and snaps of every demo device while a command ran."""

    xy_moves: int = 0
    z_moves: int = 0
    snaps: int = 0

    @property
    def anything(self) -> bool:
        """Whether any stage moved or the camera snapped."""
        return bool(self.xy_moves or self.z_moves or self.snaps)


@contextmanager
def watch_motion(monkeypatch: pytest.MonkeyPatch) -> Iterator[Motion]:
    """Count demo stage moves and camera snaps (every core, every device) inside the block."""
    motion = Motion()

    def counting(cls: type, method: str, counter: str) -> None:
        original = getattr(cls, method)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            setattr(motion, counter, getattr(motion, counter) + 1)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, wrapper)

    counting(DemoXYStage, "set_position_um", "xy_moves")
    counting(DemoZStage, "set_position_um", "z_moves")
    counting(DemoCamera, "snap", "snaps")
    yield motion


def file_digests(*roots: Path) -> dict[Path, str]:
    """SHA-256 of every file under ``roots`` (files or folders)."""
    out: dict[Path, str] = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in paths:
            out[p] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------ running


@dataclass
class Run:
    """One in-process run of the ``cordscope`` command."""

    args: list[str]
    exit_code: int
    stdout: str
    stderr: str
    motion: Motion
    exception: BaseException | None = None
    changed: list[Path] = field(default_factory=list)

    def error_line(self) -> str:
        """The single line on stderr (asserting there is exactly one and no traceback)."""
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        shown = f"args: {self.args}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        assert "Traceback" not in self.stdout + self.stderr, shown
        assert len(lines) == 1, f"expected one error line\n{shown}"
        return lines[0]


def run_cli(
    args: Sequence[str],
    monkeypatch: pytest.MonkeyPatch,
    *,
    inputs: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
) -> Run:
    """Run ``cordscope args`` in this process; count motion; note input files that changed."""
    before = file_digests(*[p for p in inputs if p.exists()])
    with watch_motion(monkeypatch) as motion:
        result: Result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", **(env or {})})
    after = file_digests(*[p for p in inputs if p.exists()])
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    exception = result.exception if not isinstance(result.exception, SystemExit) else None
    return Run(
        [str(a) for a in args],
        int(result.exit_code),
        result.stdout,
        result.stderr,
        motion,
        exception,
        changed,
    )


def assert_refused(run: Run, *needles: str) -> str:
    """Exit code 2, one error line containing every needle, nothing moved, no input changed."""
    assert run.exception is None, f"{run.args}: raised {run.exception!r}\n{run.stdout}\n{run.stderr}"
    line = run.error_line()
    assert run.exit_code == 2, f"{run.args}: exit code {run.exit_code}\n{run.stdout}\n{run.stderr}"
    assert line.startswith("error: "), line
    assert "internal error" not in line, line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert not run.motion.xy_moves and not run.motion.z_moves, f"{run.args}: stage moved ({run.motion})"
    assert not run.changed, f"{run.args}: changed {run.changed}"
    return line


def copy_tree(src: Path, dst: Path) -> Path:
    """Copy a folder (a prepared scan and its plan) for one case to damage."""
    shutil.copytree(src, dst)
    return dst
