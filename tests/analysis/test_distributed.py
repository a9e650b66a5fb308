"""Distributed re-analysis with Dask gives exactly the serial results."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from analysis.distributed import analyze_many, analyze_serial
from analysis.scan_analysis import region_csv_path
from tests.analysis._study_data import relabel, scan_one_section

pytestmark = pytest.mark.slow

N_FILES = 2


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Two unanalysed scan files (one real scan, copied and relabelled)."""
    tmp = tmp_path_factory.mktemp("dist")
    base = scan_one_section(tmp, analysis=False)
    paths = []
    for i in range(N_FILES):
        p = tmp / f"animal{i}.h5"
        shutil.copyfile(base, p)
        relabel(p, "rat01-L2", animal=f"animal{i}")
        paths.append(p)
    return paths


def _copies(paths, folder):
    folder.mkdir()
    out = []
    for p in paths:
        q = folder / p.name
        shutil.copyfile(p, q)
        out.append(q)
    return out


def _analysis_datasets(path):
    """Every dataset of every section's analysis group, as numpy arrays or bytes."""
    out = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and "/analysis/" in name:
                out[name] = obj[()]

        f.visititems(visit)
    return out


def _same(a, b):
    if isinstance(a, np.ndarray):
        return (
            a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        )
    return a == b


def test_two_worker_processes_match_a_serial_run(scans, tmp_path):
    serial_files = _copies(scans, tmp_path / "serial")
    dask_files = _copies(scans, tmp_path / "dask")
    serial = analyze_serial(serial_files)
    done = []
    parallel = analyze_many(dask_files, workers=2, on_file=lambda p, _: done.append(p.name))
    assert sorted(done) == sorted(p.name for p in dask_files)
    assert [p.name for p in parallel] == [p.name for p in dask_files]  # the order of the input
    for s_path, d_path in zip(serial_files, dask_files, strict=True):
        s_tables = serial[s_path]
        d_tables = parallel[d_path.resolve()]
        assert s_tables == d_tables  # RegionRow dataclasses: every number exactly equal
        assert s_tables["rat01-L2"][0].pct_axonal_area > 0
        s_data, d_data = _analysis_datasets(s_path), _analysis_datasets(d_path)
        assert s_data.keys() == d_data.keys() and len(s_data) > 5
        for name in s_data:
            assert _same(s_data[name], d_data[name]), name
        assert region_csv_path(s_path).read_text() == region_csv_path(d_path).read_text()


def test_existing_scheduler_is_used(scans, tmp_path):
    from dask.distributed import LocalCluster

    files = _copies(scans[:1], tmp_path / "sched")
    reference = analyze_serial(_copies(scans[:1], tmp_path / "ref"))
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
        result = analyze_many(files, scheduler=cluster.scheduler_address)
    assert list(result.values()) == list(reference.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"workers": 0}, "at least 1"), ({"workers": 1, "duplicate": True}, "listed twice")],
    ids=["zero-workers", "duplicate-file"],
)
def test_bad_arguments(scans, kwargs, match):
    paths = [scans[0], scans[0]] if kwargs.pop("duplicate", False) else scans[:1]
    with pytest.raises(ValueError, match=match):
        analyze_many(paths, **kwargs)


def test_a_failing_file_raises_its_error(scans, tmp_path):
    from acquisition.storage import StorageError

    bad = tmp_path / "bad.h5"
    bad.write_text("not a scan")
    with pytest.raises((StorageError, OSError)):
        analyze_many([bad], workers=1)
