"""The examples in examples/ run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_scan_demo_slide_example(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "scan_demo_slide.py"), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "finished:" in proc.stdout and "rat05-Th7:" in proc.stdout
    assert (tmp_path / "two-sections.yaml").is_file()
    with h5py.File(tmp_path / "two-sections.h5", "r") as f:
        assert set(f["sections"]) == {"rat01-Th7", "rat05-Th7"}
        assert all((f[f"sections/{s}/tile_status"][()] == 1).all() for s in f["sections"])
