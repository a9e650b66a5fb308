"""Crash safety end to end: ``cordscope scan`` killed with SIGKILL at random moments, then resumed.

A real scan process (the console command, its controller, the MDA runner and
the HDF5 writer) is killed while it writes tiles and while a resume reopens
the file. After every kill the file must open with plain h5py and every tile
marked done must hold exactly the pixels the camera gave at that tile; the
camera is the demo camera with its noise off, so the test process can render
the same pixels itself. Resuming must then finish the scan.

The moment of each kill is chosen from the scan's progress as the file
system sees it (bytes of pixels allocated in the sparse scan file), never by
opening the file while the scan writes it: HDF5 locks a file open for
writing, and a reader holding a lock would make a starting resume fail.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from acquisition.demo.plans import demo_plan
from acquisition.hardware import DEMO_CONFIG
from acquisition.plan import ScanPlan, resolve_plan_groups, save_plan, validate_plan
from acquisition.storage import ScanFile
from tests.conftest import make_demo_core

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and sparse files are POSIX"),
]

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("rat01-Th7", "rat05-Th7")  # ~130 tiles at 10x with a 512² sensor
SENSOR_PX = 512
N_KILLS = 4
SEED = 20260527
START_TIMEOUT_S = 120.0  # a loaded 2-core machine: start-up alone can take many seconds


def _quiet_config(directory: Path) -> Path:
    """A copy of the demo config whose camera is noise-free (pixels are predictable)."""
    cfg = directory / "demo-noise-free.cfg"
    cfg.write_text(
        DEMO_CONFIG.read_text()
        + "\n# test: no camera noise, a small sensor\n"
        + "#py Property,Camera,Noise,Off\n"
        + f"#py Property,Camera,SensorWidth,{SENSOR_PX}\n"
        + f"#py Property,Camera,SensorHeight,{SENSOR_PX}\n"
    )
    return cfg


def _write_plan(directory: Path) -> tuple[ScanPlan, Path]:
    plan = demo_plan(
        output=directory / "scan.h5",
        section_ids=SECTIONS,
        focus={"strategy": "fixed", "z_um": 0.0},
        hardware_config=_quiet_config(directory),
    )
    plan_path = directory / "plan.yaml"
    save_plan(plan, plan_path)
    return plan, plan_path


def _allocated_bytes(path: Path) -> int:
    """Bytes the file system has allocated to ``path`` (0 if it does not exist)."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def _has_grown_to(path: Path, allocated_bytes: float) -> bool:
    return _allocated_bytes(path) >= allocated_bytes


def _has_changed_since(path: Path, state: tuple[int, int, int] | None) -> bool:
    return _file_state(path) != state


def _file_state(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_blocks)


def _skip_without_sparse_files(directory: Path) -> None:
    # The scan file's tile chunks are allocated at creation but written as
    # tiles arrive; the kill moments below are read from the growth of the
    # allocated blocks, which needs a file system with sparse files.
    probe = directory / "sparse-probe"
    with probe.open("wb") as f:
        f.truncate(64 * 1024**2)
    allocated = _allocated_bytes(probe)
    probe.unlink()
    if allocated > 1024**2:
        pytest.skip(f"{directory} does not keep files sparse; the kill moments cannot be found")


class CameraTruth:
    """What the noise-free demo camera gives at a tile, remembered as a digest per image."""

    def __init__(self, plan: ScanPlan) -> None:
        self.channels = [(ch.preset, ch.exposure_ms) for ch in plan.channels]
        self.core = make_demo_core(sensor_px=SENSOR_PX, noise=False)
        self.channel_group, objective_group = resolve_plan_groups(plan, self.core).groups
        self.core.setConfig(objective_group, plan.objective)
        self._digests: dict[tuple[float, float, float, int], bytes] = {}

    def image(self, x_um: float, y_um: float, z_um: float, c: int) -> np.ndarray:
        preset, exposure_ms = self.channels[c]
        self.core.setXYPosition(x_um, y_um)
        self.core.setPosition(z_um)
        self.core.setConfig(self.channel_group, preset)
        self.core.setExposure(exposure_ms)
        self.core.snapImage()
        return self.core.getImage()

    def check(self, stored: np.ndarray, x_um: float, y_um: float, z_um: float, c: int, where: str) -> None:
        key = (x_um, y_um, z_um, c)
        if key not in self._digests:
            self._digests[key] = _digest(self.image(x_um, y_um, z_um, c))
        if _digest(stored) != self._digests[key]:
            np.testing.assert_array_equal(stored, self.image(x_um, y_um, z_um, c), err_msg=where)

    def close(self) -> None:
        self.core.close()


def _digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image, dtype=np.uint16).tobytes(), digest_size=16).digest()


def _check_file(path: Path, truth: CameraTruth) -> dict[str, np.ndarray]:
    """Open the file with plain h5py; every done tile holds the camera's pixels; return the statuses."""
    statuses = {}
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "cordscope-scan"
        for sid in SECTIONS:
            g = f["sections"][sid]
            status = g["tile_status"][()]
            assert set(np.unique(status).tolist()) <= {0, 1}, f"{sid}: no faults were injected"
            xy, z = g["tile_xy_um"][()], g["tile_z_um"][()]
            tiles = g["tiles"]
            assert tiles.shape[1:] == (len(truth.channels), 1, SENSOR_PX, SENSOR_PX)
            for t in np.flatnonzero(status == 1):
                where = f"{path.name}:{sid}/{t}"
                x_um, y_um = (float(v) for v in xy[t])
                assert z[t] == 0.0, where  # the plan's fixed focus
                meta = json.loads(g["tile_meta"][t])
                assert meta["planned_xy_um"] == pytest.approx([x_um, y_um]), where
                assert meta["exposure_ms"] == dict(truth.channels), where
                stored = tiles[t]
                for c in range(len(truth.channels)):
                    truth.check(stored[c, 0], x_um, y_um, float(z[t]), c, f"{where} channel {c}")
            statuses[sid] = status
    return statuses


@dataclass
class Run:
    """One ``cordscope scan`` process, its output going to files (a full pipe would stall it)."""

    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, directory: Path, number: int, *args: str) -> Run:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        env.pop("CORDSCOPE_DEBUG", None)
        log = directory / f"run{number}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cordscope.cli", "scan", *args, "--sensor-px", str(SENSOR_PX)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=directory,
                env=env,
            )
        return cls(proc, log)

    def output(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(line for line in lines if " DEBUG " not in line)[-3000:]

    def wait_for(self, condition: Callable[[], bool], what: str) -> bool:
        """Poll ``condition`` while the process runs; True if it held before the process ended."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.proc.poll() is None:
            if condition():
                return True
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"no {what} within {START_TIMEOUT_S:.0f} s:\n{self.output()}")
            time.sleep(0.001)
        return False

    def finish(self) -> int:
        """Wait for the process to end by itself; its exit code."""
        try:
            return self.proc.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the scan did not end within {START_TIMEOUT_S:.0f} s:\n{self.output()}")

    def kill(self) -> bool:
        """SIGKILL the process if it still runs; True if it was killed, False if it had finished."""
        running = self.proc.poll() is None
        if running:
            self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait(timeout=60)
        if running and code == -signal.SIGKILL:
            return True
        assert code == 0, f"the scan ended with exit code {code} before it was killed:\n{self.output()}"
        return False


@pytest.fixture
def scan_plan(tmp_path: Path) -> tuple[ScanPlan, Path]:
    """The plan (written to plan.yaml) of a two-section scan on the noise-free demo camera."""
    return _write_plan(tmp_path)


@pytest.fixture
def truth(scan_plan: tuple[ScanPlan, Path]) -> Iterator[CameraTruth]:
    camera = CameraTruth(scan_plan[0])
    yield camera
    camera.close()


def test_scan_killed_at_random_moments_keeps_done_tiles_and_resumes(
    tmp_path: Path, scan_plan: tuple[ScanPlan, Path], truth: CameraTruth
) -> None:
    _skip_without_sparse_files(tmp_path)
    rng = random.Random(SEED)
    plan, plan_path = scan_plan
    path = Path(plan.output)
    n_tiles = validate_plan(plan, truth.core).total_tiles
    pixel_bytes = n_tiles * len(plan.channels) * SENSOR_PX * SENSOR_PX * 2
    # Kill moments, in turn: while a new scan or a resume writes tiles (a random
    # share of the pixels still to write has reached the file), and while a
    # resume reopens the file (it has just changed it: repair, events, first
    # tiles). A random delay of up to a few tiles shifts each kill within the
    # write-flush-status cycle of a tile. Moments before the scan file is fully
    # created are not drawn: see test_kill_while_the_file_is_created.
    moments = ["writing", "reopening", "writing", "writing"]
    kills: list[str] = []
    done_before = 0
    for number in range(1, 3 * N_KILLS + 1):
        if len(kills) == N_KILLS:
            break
        resuming = path.exists()
        moment = moments[len(kills)] if resuming else "writing"
        before, allocated = _file_state(path), _allocated_bytes(path)
        target = allocated + rng.uniform(0.1, 0.6) * max(pixel_bytes - allocated, 0)
        run = Run.start(tmp_path, number, *(["--resume", str(path)] if resuming else [str(plan_path)]))
        if moment == "writing":
            run.wait_for(functools.partial(_has_grown_to, path, target), "tiles written")
        else:
            run.wait_for(functools.partial(_has_changed_since, path, before), "change to the file")
        time.sleep(rng.uniform(0.0, 0.03))
        if run.kill():
            kills.append(moment)
        statuses = _check_file(path, truth)
        done = sum(int(np.count_nonzero(s == 1)) for s in statuses.values())
        assert done_before <= done <= n_tiles, f"run {number}: {done_before} tiles were done, now {done}"
        done_before = done
        if done == n_tiles and len(kills) < N_KILLS:  # a fast run finished: kill a new scan
            path.unlink()
            done_before = 0
    assert len(kills) == N_KILLS, f"only {len(kills)} kills landed ({kills})"

    final = Run.start(tmp_path, 0, "--resume", str(path))
    assert final.finish() == 0, final.output()
    statuses = _check_file(path, truth)
    assert all((s == 1).all() for s in statuses.values())
    with ScanFile.open(path) as scan:
        assert scan.summary().complete and scan.summary().n_tiles == n_tiles
        assert any(e["kind"] == "resume_scan" for e in scan.events())
    info = subprocess.run(
        [sys.executable, "-m", "cordscope.cli", "info", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=START_TIMEOUT_S,
    )
    assert info.returncode == 0, info.stderr
    assert f"{n_tiles}/{n_tiles} tiles" in info.stdout and "; complete" in info.stdout


# A script that runs ``cordscope scan`` and kills itself while the scan file is
# being created (as its second section's datasets are made): a deterministic
# stand-in for a SIGKILL that lands in the first few milliseconds of the file.
_DIE_WHILE_CREATING = """
import os, signal, sys
import acquisition.storage.writer as storage
real, calls = storage._write_section, []
def dying(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
storage._write_section = dying
from cordscope.cli import app
app(sys.argv[1:])
"""


def test_kill_while_the_file_is_created(tmp_path: Path, scan_plan: tuple[ScanPlan, Path]) -> None:
    plan, plan_path = scan_plan
    path = Path(plan.output)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def cordscope(*args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
        head = ["-c", script] if script else ["-m", "cordscope.cli"]
        return subprocess.run(
            [sys.executable, *head, *args, "--sensor-px", str(SENSOR_PX)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=START_TIMEOUT_S,
        )

    killed = cordscope("scan", str(plan_path), script=_DIE_WHILE_CREATING)
    if killed.returncode != -signal.SIGKILL:
        pytest.fail(f"the scan did not die while creating its file: {killed.returncode}\n{killed.stderr}")
    if path.exists():  # then it must be a scan file that --resume finishes
        try:
            h5py.File(path, "r").close()
        except OSError as e:
            raise AssertionError(
                f"killed while creating {path.name}, it left a file h5py can't open: {e}"
            ) from e
        again = cordscope("scan", "--resume", str(path))
    else:  # or no file, and the scan can simply start again
        again = cordscope("scan", str(plan_path))
    assert again.returncode == 0, again.stdout + again.stderr
