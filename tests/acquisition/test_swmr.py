"""Reading a scan file while a scan writes it, from another process.

The scan runs in this process; a reader process polls the file with
``ScanFile.open`` (and ``cordscope info`` runs on it) while tiles arrive.
Every tile the reader saw as done must hold exactly the pixels of the
finished file (never a half-written tile), and the scan must finish
normally. See the storage module docstring for why no SWMR mode is needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from acquisition.demo.plans import demo_plan
from acquisition.session import ScanSession
from acquisition.storage import ScanFile, ScanWriter, StorageError
from tests.conftest import make_demo_core

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# Polls until STOP exists; prints one JSON line per tile first seen done, then a summary line.
_READER = """
import hashlib, json, sys, time
from pathlib import Path
from acquisition.storage import ScanFile
path, stop = Path(sys.argv[1]), Path(sys.argv[2])
seen, polls, live_polls, partial_polls = {}, 0, 0, 0
print("ready", flush=True)
while True:
    last = stop.exists()
    with ScanFile.open(path) as scan:
        polls += 1
        live_polls += scan.live
        done_now, total = 0, 0
        for sid in scan.section_ids:
            sec = scan.section(sid)
            status = sec.tile_status
            total += status.size
            for t in sec.done_indices():
                done_now += 1
                key = f"{sid}/{int(t)}"
                if key not in seen:
                    seen[key] = hashlib.blake2b(sec.read_tile(int(t)).tobytes(), digest_size=16).hexdigest()
                    print(json.dumps({"tile": key, "digest": seen[key], "live": scan.live}), flush=True)
        partial_polls += 0 < done_now < total
    if last:
        break
    time.sleep(0.005)
print(json.dumps({"polls": polls, "live_polls": live_polls, "partial_polls": partial_polls}), flush=True)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _digest(tile: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(tile).tobytes(), digest_size=16).hexdigest()


def test_a_reader_process_polls_a_running_scan_and_never_sees_half_written_tiles(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    stop = tmp_path / "stop"
    plan = demo_plan(output=path, section_ids=("rat01-Th7",), focus={"strategy": "fixed", "z_um": 0.0})
    core = make_demo_core(noise=True, seed=3)
    reader: subprocess.Popen[str] | None = None
    try:
        # Slow stage moves stretch the scan over a few seconds, so the reader catches it mid-way.
        core.setProperty("XYStage", "Speed_um_per_s", 40_000.0)
        session = ScanSession(core, plan)
        session.start()
        deadline = time.monotonic() + 60
        while not (path.exists() and _done(path) >= 3):
            assert time.monotonic() < deadline, "the scan wrote no tiles"
            time.sleep(0.02)
        # paused, the scan's file stays open for writing while the reader and `info` start (seconds on
        # a busy machine); the reader then polls it while the scan goes on
        session.pause()
        reader = subprocess.Popen(
            [sys.executable, "-c", _READER, str(path), str(stop)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=_env(),
        )
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"
        info = subprocess.run(
            [sys.executable, "-m", "cordscope.cli", "info", str(path)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=_env(),
            timeout=60,
        )
        scan_running = session.state not in {"done", "failed"}
        session.resume_scanning()
        result = session.wait().scan
    finally:
        stop.touch()
        core.close()
        if reader is not None and reader.poll() is None:
            try:
                reader.wait(timeout=60)
            except subprocess.TimeoutExpired:
                reader.kill()
    assert reader is not None
    out, err = reader.communicate()
    assert reader.returncode == 0, err
    assert info.returncode == 0, info.stdout + info.stderr
    assert " tiles, " in info.stdout and "rat01-Th7" in info.stdout
    assert "being written by a running scan" in " ".join(info.stdout.split())
    assert result.state == "finished" and result.complete

    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    summary = lines[-1]
    seen = lines[:-1]
    assert scan_running, "the scan finished before cordscope info ran: nothing was read live"
    assert summary["live_polls"] >= 1 and summary["partial_polls"] >= 1, summary
    live_tiles = [s for s in seen if s["live"]]
    assert live_tiles, "the reader read no tile while the scan was running"
    with ScanFile.open(path) as final:
        assert not final.live
        sec = final.section("rat01-Th7")
        assert len(seen) == sec.n_tiles
        for s in seen:
            sid, t = s["tile"].split("/")
            assert s["digest"] == _digest(final.section(sid).read_tile(int(t))), s["tile"]
    with h5py.File(path, "r") as f:  # closed normally: plain h5py opens it, nothing left flagged
        assert f.attrs["format"] == "cordscope-scan"


def _done(path: Path) -> int:
    try:
        with ScanFile.open(path) as scan:
            return scan.summary().done
    except StorageError:
        return 0


def test_live_reader_sees_tiles_as_they_are_completed(tmp_path: Path) -> None:
    """A writer in another process; this process's reader opens live and sees statuses change."""
    path = tmp_path / "w.h5"
    script = f"""
import sys, numpy as np
from acquisition.storage import ScanWriter, SectionLayout
xy = np.array([[0.0, 0.0], [100.0, 0.0]])
w = ScanWriter.create({str(path)!r}, plan_yaml="name: t\\n", config_path="demo.cfg", config_text="",
    core_state={{}}, sections=[SectionLayout("S1", xy, ("DAPI",), 1, (16, 16), 0.65, (10.4, 10.4))])
for t in range(2):
    w.write_image("S1", t, 0, 0, np.full((16, 16), 1000 + t, np.uint16))
    w.complete_tile("S1", t, z_um=0.0, meta={{}})
    print("done", t, flush=True)
    sys.stdin.readline()
w.close()
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=_env(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().split() == ["done", "0"]
        with ScanFile.open(path) as scan:
            assert scan.live
            sec = scan.section("S1")
            assert list(sec.tile_status) == [1, 0]
            assert (sec.read_tile(0) == 1000).all()
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().split() == ["done", "1"]
            # the same open file sees the new status and pixels (no caching of raw data)
            assert list(sec.tile_status) == [1, 1]
            assert (sec.read_tile(1) == 1001).all()
            assert sec.tile_meta(0)["time"]
            scan.refresh()
            assert scan.section("S1").tile_meta(1)["time"]
        _, err = proc.communicate("\n", timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    with ScanFile.open(path) as scan:
        assert not scan.live and scan.summary().complete


def test_a_compressed_scan_is_not_read_while_written(tmp_path: Path) -> None:
    path = tmp_path / "gz.h5"
    script = f"""
import sys, numpy as np
from acquisition.storage import ScanWriter, SectionLayout

xy = np.array([[0.0, 0.0]])
w = ScanWriter.create({str(path)!r}, plan_yaml="name: t\\n", config_path="demo.cfg", config_text="",
    core_state={{}}, sections=[SectionLayout("S1", xy, ("DAPI",), 1, (16, 16), 0.65, (10.4, 10.4))],
    compression="gzip")
print("open", flush=True)
sys.stdin.readline()
w.close()
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=_env(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "open"
        with pytest.raises(StorageError, match=r"being written: its tiles are compressed \(gzip"):
            ScanFile.open(path)
        with pytest.raises(StorageError, match="locked"):  # writing stays exclusive
            ScanWriter.open_for_resume(path)
        proc.communicate("\n", timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    with ScanFile.open(path) as scan:
        assert not scan.live
