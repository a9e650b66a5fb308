"""Per-tile checksums (``info --verify``, resume re-acquires damaged tiles) and ``reliability.fsync``."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from acquisition.controller import ScanController
from acquisition.hardware import build_core
from acquisition.storage import ScanFile, TileStatus, image_crc32
from tests.reliability.helpers import SECTION, run_cli, small_plan

DAMAGED_TILE = 5


def _flip_pixels(path: Path, tile: int, channel: int = 1) -> None:
    """Change bytes of one stored image in place, as a failing disk or a bad copy would."""
    with h5py.File(path, "r") as f:
        info = f[f"sections/{SECTION}/tiles"].id.get_chunk_info_by_coord((tile, channel, 0, 0, 0))
    with path.open("r+b") as fh:
        fh.seek(info.byte_offset + 1000)
        old = fh.read(16)
        fh.seek(info.byte_offset + 1000)
        fh.write(bytes(b ^ 0xFF for b in old))


def test_every_done_tile_has_the_checksum_of_its_pixels(scan_copy: Path) -> None:
    with ScanFile.open(scan_copy) as scan:
        sec = scan.section(SECTION)
        crc = sec.tile_crc32
        assert crc is not None and crc.shape == (sec.n_tiles, 2, 1)
        for t in sec.done_indices():
            images = sec.read_tile(int(t))
            assert [image_crc32(images[c, 0]) for c in range(2)] == crc[t, :, 0].tolist()


def test_info_verify_passes_an_intact_scan(scan_copy: Path, monkeypatch) -> None:
    run = run_cli(["info", scan_copy, "--verify"], monkeypatch)
    assert run.exit_code == 0, run.stdout + run.stderr
    with ScanFile.open(scan_copy) as scan:
        done = scan.summary().done
    assert f"verified: {done} done tiles match their checksums" in run.stdout


def test_a_damaged_tile_is_found_by_verify_and_acquired_again_by_resume(scan_copy: Path, monkeypatch) -> None:
    _flip_pixels(scan_copy, DAMAGED_TILE)
    run = run_cli(["info", scan_copy, "--verify"], monkeypatch)
    assert run.exit_code == 1, run.stdout + run.stderr
    assert (
        f"damaged: 1 done tiles no longer match their checksums ({SECTION}/{DAMAGED_TILE:04d})" in run.stdout
    )

    run = run_cli(["scan", "--resume", scan_copy, "--no-analysis"], monkeypatch)
    assert run.exit_code == 0, run.stdout + run.stderr
    assert "no longer match their checksums" in run.stdout and f"{SECTION}/{DAMAGED_TILE:04d}" in run.stdout
    assert run.motion.snaps == 2  # the damaged tile's two images, nothing else
    run = run_cli(["info", scan_copy, "--verify"], monkeypatch)
    assert run.exit_code == 0, run.stdout + run.stderr


def test_files_without_checksums_read_as_unverified_and_gain_them_on_resume(
    scan_copy: Path, monkeypatch
) -> None:
    with h5py.File(scan_copy, "r+") as f:  # a scan written before checksums existed
        del f[f"sections/{SECTION}/tile_crc32"]
        status = f[f"sections/{SECTION}/tile_status"]
        status[0] = TileStatus.PENDING
        done = int(np.count_nonzero(status[()] == TileStatus.DONE))
    run = run_cli(["info", scan_copy, "--verify"], monkeypatch)
    assert run.exit_code == 0, run.stdout + run.stderr
    assert f"verified: 0 done tiles match their checksums; {done} done tiles have no checksum" in run.stdout

    run = run_cli(["scan", "--resume", scan_copy, "--no-analysis"], monkeypatch)
    assert run.exit_code == 0, run.stdout + run.stderr
    with ScanFile.open(scan_copy) as scan:
        check = scan.section(SECTION).check_done_tiles()
    assert (check.verified, check.unverified, check.damaged) == (1, done, ())


@pytest.mark.parametrize(("fsync", "per_tile"), [("off", 0), ("per_tile", 2)], ids=["off", "per-tile"])
def test_fsync_per_tile_syncs_before_and_after_each_status(
    tmp_path: Path, monkeypatch, fsync, per_tile
) -> None:
    from tests.reliability.helpers import fault_config

    config = fault_config(tmp_path)
    plan = small_plan(tmp_path / "scan.h5", config=config, reliability={"fsync": fsync})
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    core = build_core(config)
    try:
        result = ScanController(core, plan).run()
    finally:
        core.close()
    assert result.complete
    assert len(calls) == per_tile * result.tiles_total
