"""Fixtures of the reliability tests: a finished, analysed small scan made once per test run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.reliability.helpers import fault_config, run_cli, small_plan, write_plan


@pytest.fixture(scope="session")
def finished_scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``rig.cfg``, ``plan.yaml`` and ``scan.h5``, scanned and analysed; copy to change it."""
    folder = tmp_path_factory.mktemp("finished")
    config = fault_config(folder)
    plan = write_plan(folder, config=config, at_edge=True, half_side_um=300.0)
    with pytest.MonkeyPatch.context() as mp:
        run = run_cli(["scan", plan], mp)
    assert run.exit_code == 0, run.stdout + run.stderr
    assert (folder / "scan.h5").is_file() and (folder / "scan.regions.csv").is_file()
    assert "rubrospinal_territory" in run.stdout, run.stdout  # analysed: region tables were written
    return folder


@pytest.fixture
def scan_copy(finished_scan: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`finished_scan`'s folder; returns the copied ``scan.h5``."""
    folder = tmp_path / "copy"
    shutil.copytree(finished_scan, folder)
    plan = folder / "plan.yaml"  # its paths name the copy's config and scan file
    plan.write_text(plan.read_text().replace(str(finished_scan), str(folder)))
    return folder / "scan.h5"


__all__ = ["fault_config", "small_plan"]
