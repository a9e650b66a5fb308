"""The cordscope command: devices, snap, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from cordscope.cli import app

runner = CliRunner()


def test_devices_lists_roles_presets_and_pixel_sizes():
    result = runner.invoke(app, ["devices"])
    assert result.exit_code == 0, result.output
    for needle in (
        "Camera",
        "XYStage",
        "ZStage",
        "DAPI",
        "tdTomato",
        "4x",
        "10x",
        "20x",
        "1.625",
        "0.65",
        "0.325",
    ):
        assert needle in result.output


def test_devices_on_missing_adapters_is_one_line_error():
    from acquisition.hardware import DEMO_CONFIG

    result = runner.invoke(app, ["devices", "--config", str(DEMO_CONFIG.parent / "rig-template.cfg")])
    assert result.exit_code == 2
    assert "error:" in result.output and "HamamatsuHam" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_snap_demo_writes_both_channels(tmp_path, suffix):
    out = tmp_path / f"snap{suffix}"
    result = runner.invoke(app, ["snap", "--demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    if suffix == ".tif":
        with tifffile.TiffFile(out) as tif:
            data = tif.asarray()
            assert tif.imagej_metadata["Labels"] == ["DAPI", "tdTomato"]
        assert data.shape == (2, 2048, 2048) and data.dtype == np.uint16
        assert data[0].mean() > 110 and data[1].max() > 1000  # tissue and labelled axons


def test_snap_rejects_unknown_file_type(tmp_path):
    result = runner.invoke(app, ["snap", "--demo", "--out", str(tmp_path / "x.jpg")])
    assert result.exit_code == 2 and ".tif or .png" in result.output


def test_snap_rejects_unknown_channel(tmp_path):
    result = runner.invoke(app, ["snap", "--demo", "--channel", "GFP", "--out", str(tmp_path / "x.tif")])
    assert result.exit_code == 2 and "GFP" in result.output and "DAPI" in result.output
