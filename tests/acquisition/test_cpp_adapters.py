"""Micro-Manager's own C++ demo adapters: configs of the Wizard's kind load, snap and decide right."""

from __future__ import annotations

import numpy as np
import pytest

from acquisition.roles import decide_roles, pixel_affine_um
from tests.acquisition.mm_adapters import MM_DEMO_KINDS


@pytest.fixture(params=MM_DEMO_KINDS)
def mm_core(request, mm_demo_config):
    config = mm_demo_config(request.param)
    core = config.build()
    yield config, core
    core.close()


def test_build_core_loads_cpp_devices(mm_core):
    _, core = mm_core
    assert core.getCameraDevice() == "Camera" and not core.isPyDevice("Camera")
    assert core.getDeviceLibrary("Camera") == "DemoCamera" and core.getDeviceName("Camera") == "DCam"
    assert core.getXYStageDevice() == "XY" and core.getFocusDevice() == "Z"
    assert core.getChannelGroup() == ""  # the Wizard's configs here have no Core,ChannelGroup line


def test_snap_gives_the_configured_shape_dtype_and_bit_depth(mm_core):
    config, core = mm_core
    core.setProperty("Camera", "SaturatePixels", 1)  # the adapter saturates a few pixels at full scale
    core.snapImage()
    img = core.getImage()
    if config.roi is not None:
        expected_shape = (config.roi[3], config.roi[2])
    else:
        expected_shape = (512 // config.binning, 512 // config.binning)
    assert img.shape == expected_shape
    assert img.dtype == (np.uint8 if config.bit_depth == 8 else np.uint16)
    assert core.getImageBitDepth() == config.bit_depth
    assert int(img.max()) == 2**config.bit_depth - 1


def test_roles_are_decided_from_the_config(mm_core):
    config, core = mm_core
    roles = decide_roles(core)
    assert roles.channel.group == config.channel_group
    assert roles.channel.reason == config.channel_reason
    assert roles.objective.group == config.objective_group
    assert roles.objective.reason == "its presets select the pixel-size configurations (3 of 3)"
    assert sorted(core.getAvailableConfigs(roles.channel.group)) == ["DAPI", "tdTomato"]


@pytest.mark.parametrize("objective", ["4x", "10x", "20x"])
def test_pixel_size_and_affine_follow_objective_and_binning(mm_core, objective):
    config, core = mm_core
    core.setConfig(config.objective_group, objective)
    res = f"Res{objective}"
    assert core.getCurrentPixelSizeConfig() == res
    expected = np.array(config.affines_um[res]) * config.binning
    np.testing.assert_allclose(pixel_affine_um(core), expected, atol=1e-9)
    a, b, _, d, e, _ = core.getPixelSizeAffine()
    np.testing.assert_allclose([[a, b], [d, e]], expected, atol=1e-9)
    assert core.getPixelSizeUm() == pytest.approx(np.sqrt(abs(np.linalg.det(expected))), rel=1e-6)


def test_pixel_affine_helper_agrees_with_a_stock_core(mm_demo_config):
    """pixel_affine_um works on any core whose pixel size resolves, not only CordScope's."""
    import pymmcore
    from pymmcore_plus import CMMCorePlus

    config = mm_demo_config("16bit-bin2")
    stock = CMMCorePlus(mm_path=str(config.adapters))
    try:
        stock.loadSystemConfiguration(config.path)
        stock.setConfig("Turret", "10x")
        np.testing.assert_allclose(
            pixel_affine_um(stock), np.array(config.affines_um["Res10x"]) * 2, atol=1e-9
        )
    finally:
        stock.unloadAllDevices()
        pymmcore.CMMCore.registerCallback(stock, None)


def test_binning_changed_at_run_time_rescales_the_affine(mm_demo_config):
    config = mm_demo_config("8bit")
    core = config.build()
    try:
        core.setConfig("Nosepiece", "20x")
        core.setProperty("Camera", "Binning", 4)
        np.testing.assert_allclose(pixel_affine_um(core), [[1.3, 0.0], [0.0, 1.3]])
        core.snapImage()
        assert core.getImage().shape == (128, 128)
    finally:
        core.close()


def test_adapters_are_found_beside_any_parent_of_the_repository(tmp_path, monkeypatch):
    from tests.acquisition import mm_adapters

    repo = tmp_path / "work" / "wt" / "my-branch"
    repo.mkdir(parents=True)
    monkeypatch.setattr(mm_adapters, "REPO", repo)
    monkeypatch.delenv("MICROMANAGER_PATH", raising=False)
    assert mm_adapters.find_mm_adapters() is None
    lib = tmp_path / "work" / "shared" / "mm-adapters" / "lib"  # beside the main checkout, two levels up
    lib.mkdir(parents=True)
    (lib / "libmmgr_dal_DemoCamera.so.0").write_bytes(b"")
    assert mm_adapters.find_mm_adapters() == lib
    env_lib = tmp_path / "mm"
    env_lib.mkdir()
    (env_lib / "libmmgr_dal_DemoCamera.so.0").write_bytes(b"")
    monkeypatch.setenv("MICROMANAGER_PATH", str(env_lib))
    assert mm_adapters.find_mm_adapters() == env_lib
