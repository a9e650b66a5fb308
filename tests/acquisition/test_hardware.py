"""Building a core from a .cfg: roles, pixel sizes, trust rule, missing adapters."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from acquisition.hardware import (
    DEMO_CONFIG,
    ConfigError,
    MissingDeviceAdaptersError,
    UntrustedConfigError,
    build_core,
    describe_hardware,
    scan_config_text,
)

RIG_TEMPLATE = DEMO_CONFIG.parent / "rig-template.cfg"

DEMO_DEVICES = "acquisition.demo.devices"


def test_demo_config_sets_every_role(demo_core):
    hw = describe_hardware(demo_core)
    assert hw.roles == {"Camera": "Camera", "XYStage": "XYStage", "Focus": "ZStage", "Shutter": "Shutter"}
    assert hw.channel_group == "Channel"
    assert sorted(hw.channel_presets) == ["DAPI", "tdTomato"]
    assert sorted(hw.objective_presets) == ["10x", "20x", "4x"]
    assert hw.pixel_sizes_um == {"Res4x": 1.625, "Res10x": 0.65, "Res20x": 0.325}
    assert demo_core.getAutoShutter()


@pytest.mark.parametrize(
    ("objective", "pixel_um", "config"),
    [("4x", 1.625, "Res4x"), ("10x", 0.65, "Res10x"), ("20x", 0.325, "Res20x")],
    ids=["4x", "10x", "20x"],
)
def test_objective_sets_pixel_size_and_field_of_view(demo_core, objective, pixel_um, config):
    demo_core.setConfig("Objective", objective)
    assert demo_core.getCurrentPixelSizeConfig() == config
    assert demo_core.getPixelSizeUm() == pytest.approx(pixel_um)
    assert demo_core.getPixelSizeAffine()[0] == pytest.approx(pixel_um)
    fov_um = demo_core.getImageWidth() * demo_core.getPixelSizeUm()
    assert fov_um == pytest.approx(512 * pixel_um)


def test_pixel_size_changed_event_follows_objective(demo_core):
    seen: list[float] = []
    demo_core.events.pixelSizeChanged.connect(seen.append)
    demo_core.setConfig("Objective", "20x")
    demo_core.setStateLabel("Objective", "4x")
    demo_core.setState("Objective", 1)
    assert seen == [0.325, 1.625, 0.65]


OTHER_NAMING_CFG = f"""
Property,Core,Initialize,0
#py pyDevice,Controller,{DEMO_DEVICES},DemoHub
#py pyDevice,Orca,{DEMO_DEVICES},DemoCamera
#py pyDevice,Stage,{DEMO_DEVICES},DemoXYStage
#py pyDevice,Nosepiece,{DEMO_DEVICES},DemoObjectiveTurret
#py pyDevice,Cube,{DEMO_DEVICES},DemoFilterWheel
#py Parent,Orca,Controller
#py Parent,Stage,Controller
#py Parent,Nosepiece,Controller
#py Parent,Cube,Controller
Property,Core,Initialize,1
#py Property,Core,Camera,Orca
#py Property,Core,XYStage,Stage
#py Property,Orca,SensorWidth,100
#py Property,Orca,SensorHeight,80
#py ConfigGroup,Objectives,Low,Nosepiece,State,0
#py ConfigGroup,Objectives,High,Nosepiece,State,2
#py ConfigGroup,Fluor,Blue,Cube,Label,DAPI
#py ConfigPixelSize,lowmag,Nosepiece,State,0
PixelSize_um,lowmag,1.625
#py ConfigPixelSize,highmag,Nosepiece,State,2
PixelSize_um,highmag,0.325
"""


def test_pixel_size_resolves_with_other_device_names(tmp_path):
    cfg = tmp_path / "other.cfg"
    cfg.write_text(OTHER_NAMING_CFG)
    core = build_core(cfg)
    core.setConfig("Objectives", "High")
    assert core.getCurrentPixelSizeConfig() == "highmag"
    assert core.getPixelSizeUm() == pytest.approx(0.325)
    core.setConfig("Objectives", "Low")
    assert core.getCurrentPixelSizeConfig() == "lowmag"
    assert core.getPixelSizeUm() == pytest.approx(1.625)
    core.setState("Nosepiece", 1)  # 10x has no pixel-size config here
    assert core.getCurrentPixelSizeConfig() == ""
    assert core.getPixelSizeUm() == 0.0
    assert (core.getImageWidth(), core.getImageHeight()) == (100, 80)


def test_pure_python_config_does_not_complain_about_micromanager(capfd):
    build_core()
    err = capfd.readouterr().err
    assert "Micro-Manager installation" not in err


def test_missing_cpp_adapters_are_named_before_loading(capfd):
    with pytest.raises(MissingDeviceAdaptersError) as info:
        build_core(RIG_TEMPLATE)
    msg = str(info.value)
    for adapter in ("HamamatsuHam", "Marzhauser", "NikonTI", "LudlMainController"):
        assert adapter in msg
    assert "mmcore install" in msg
    assert "\n" not in msg
    assert "Micro-Manager installation for the device interface" not in capfd.readouterr().err


def test_rig_template_declares_the_same_roles_and_groups():
    text = RIG_TEMPLATE.read_text()
    devices = scan_config_text(text)
    assert devices.cpp_adapters and not devices.py_devices
    for needle in (
        "Property,Core,Camera,",
        "Property,Core,XYStage,",
        "Property,Core,Focus,",
        "ConfigGroup,Channel,DAPI,",
        "ConfigGroup,Channel,tdTomato,",
        "ConfigGroup,Objective,4x,",
        "ConfigGroup,Objective,10x,",
        "ConfigGroup,Objective,20x,",
        "PixelSize_um,Res4x,1.625",
        "PixelSize_um,Res10x,0.65",
        "PixelSize_um,Res20x,0.325",
    ):
        assert needle in text


UNTRUSTED_MODULE = """
from pymmcore_plus.experimental.unicore import ShutterDevice

LOADED = []


class ThirdPartyShutter(ShutterDevice):
    def __init__(self):
        super().__init__()
        LOADED.append(self)
        self._open = False

    def get_open(self):
        return self._open

    def set_open(self, open):
        self._open = bool(open)
"""


@pytest.fixture
def untrusted_cfg(tmp_path, monkeypatch):
    module = tmp_path / "third_party_devices.py"
    module.write_text(textwrap.dedent(UNTRUSTED_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tmp_path / "third_party.cfg"
    cfg.write_text(
        "Property,Core,Initialize,0\n"
        "#py pyDevice,Shutter,third_party_devices,ThirdPartyShutter\n"
        "Property,Core,Initialize,1\n"
        "#py Property,Core,Shutter,Shutter\n"
    )
    yield cfg
    sys.modules.pop("third_party_devices", None)


def test_untrusted_python_devices_are_refused_without_running_them(untrusted_cfg):
    with pytest.raises(UntrustedConfigError) as info:
        build_core(untrusted_cfg)
    msg = str(info.value)
    assert "third_party_devices.ThirdPartyShutter" in msg
    assert "--trust-config" in msg
    assert "third_party_devices" not in sys.modules  # the code was never imported


def test_untrusted_python_devices_load_when_trusted(untrusted_cfg):
    core = build_core(untrusted_cfg, trust_config=True)
    assert core.getShutterDevice() == "Shutter"
    assert len(sys.modules["third_party_devices"].LOADED) == 1


def test_trust_rule_is_a_package_prefix_not_a_substring(tmp_path):
    cfg = tmp_path / "sneaky.cfg"
    cfg.write_text("#py pyDevice,X,acquisition.demo_evil,Thing\n")
    with pytest.raises(UntrustedConfigError, match=r"acquisition\.demo_evil\.Thing"):
        build_core(cfg)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Property,Core,Initialize,0\nBogusCommand,a,b\n", "line 2"),
        (f"#py pyDevice,Cam,{DEMO_DEVICES},NoSuchCamera\n", "NoSuchCamera"),
        (f"#py pyDevice,Cam,{DEMO_DEVICES},DemoCamera\nProperty,Cam,NoSuchProp,1\n", "line 2"),
    ],
    ids=["unknown-command", "unknown-class", "unknown-property"],
)
def test_malformed_config_gives_one_line_error(tmp_path, text, expected):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        build_core(cfg)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_core(tmp_path / "nope.cfg")


def test_core_role_properties_accept_python_devices(demo_core):
    demo_core.setProperty("Core", "XYStage", "XYStage")
    assert demo_core.getProperty("Core", "XYStage") == "XYStage"
    assert demo_core.getProperty("Core", "Camera") == "Camera"


def test_cfg_default_is_the_demo_microscope():
    assert Path(DEMO_CONFIG).name == "demo.cfg"
    assert build_core().getCameraDevice() == "Camera"


@pytest.mark.slow
def test_exiting_right_after_unloading_does_not_abort(tmp_path):
    # Without detaching MMCore's callback at exit, this aborted ~1 run in 4 here.
    import subprocess

    script = tmp_path / "exit_after_unload.py"
    script.write_text("from acquisition.hardware import build_core\nbuild_core().unloadAllDevices()\n")
    codes = [
        subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60).returncode
        for _ in range(8)
    ]
    assert codes == [0] * 8


# ------------------------------------------------ trust rule: every form pymmcore-plus executes

EVIL_MODULE = """
from pathlib import Path
Path(__file__).with_name("IMPORTED").write_text("the module ran")

from pymmcore_plus.experimental.unicore import ShutterDevice


class Evil(ShutterDevice):
    def get_open(self):
        return False

    def set_open(self, open):
        pass
"""


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """An importable module that leaves a marker file when it is imported."""
    (tmp_path / "evil_devices.py").write_text(EVIL_MODULE)
    (tmp_path / "evil_pkg").mkdir()
    (tmp_path / "evil_pkg" / "__init__.py").write_text("")
    (tmp_path / "evil_pkg" / "devices.py").write_text(EVIL_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path / "IMPORTED", tmp_path / "evil_pkg" / "IMPORTED"
    for name in ("evil_devices", "evil_pkg", "evil_pkg.devices"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    "line",
    [
        "pyDevice,Evil,evil_devices,Evil",
        "#py pyDevice,Evil,evil_devices,Evil",
        "   pyDevice,Evil,evil_devices,Evil\r",
        "#py   pyDevice,Evil,evil_devices,Evil",
        "Device,Evil,evil_devices,Evil",
        "#py Device,Evil,evil_devices,Evil",
        "Device,Evil,evil_pkg.devices,Evil",
        "pyDevice,Evil,evil_pkg.devices,Evil",
        "#py\tpyDevice,Evil,evil_devices,Evil",  # a comment to pymmcore-plus: refused anyway, to be safe
    ],
    ids=[
        "bare-pyDevice",
        "py-pyDevice",
        "indented-crlf",
        "py-extra-spaces",
        "bare-Device-python-module",
        "py-Device",
        "Device-dotted-module",
        "pyDevice-dotted-module",
        "py-tab-prefix",
    ],
)
def test_every_line_form_that_imports_python_is_refused_untrusted(tmp_path, evil_module, line):
    cfg = tmp_path / "evil.cfg"
    cfg.write_text(f"Property,Core,Initialize,0\n{line}\nProperty,Core,Initialize,1\n")
    with pytest.raises(UntrustedConfigError, match=r"Evil \(evil_(devices|pkg)") as info:
        build_core(cfg)
    assert "--trust-config" in str(info.value) and "\n" not in str(info.value)
    assert not any(marker.exists() for marker in evil_module)
    assert "evil_devices" not in sys.modules and "evil_pkg.devices" not in sys.modules


@pytest.mark.parametrize(
    "line",
    [
        "# pyDevice,Evil,evil_devices,Evil",
        "#pyDevice,Evil,evil_devices,Evil",
        "#py #py pyDevice,Evil,evil_devices,Evil",
    ],
    ids=["comment", "no-space-after-py", "double-prefix"],
)
def test_comments_are_not_device_lines(line):
    assert scan_config_text(line) == scan_config_text("")


@pytest.mark.parametrize(
    ("text", "cpp", "py"),
    [
        ("Device,Cam,DemoCamera,DCam", {"Cam": "DemoCamera"}, {}),
        ("  Device , Cam , DemoCamera , DCam  ", {"Cam": "DemoCamera"}, {}),
        (
            "pyDevice,Cam,acquisition.demo.devices,DemoCamera",
            {},
            {"Cam": ("acquisition.demo.devices", "DemoCamera")},
        ),
        ("#py Device,Cam,acquisition.demo.devices,DemoCamera", {"Cam": "acquisition.demo.devices"}, {}),
        ("Property,Core,Initialize,1\nLabel,Wheel,0,DAPI", {}, {}),
    ],
    ids=["device", "spaces", "bare-pyDevice", "py-Device", "no-devices"],
)
def test_scan_config_text_lists_what_loads(text, cpp, py):
    devices = scan_config_text(text)
    assert devices.cpp_adapters == cpp and devices.py_devices == py


@pytest.mark.parametrize(
    "line",
    [
        f"pyDevice,Shutter,{DEMO_DEVICES},DemoShutter",
        f"Device,Shutter,{DEMO_DEVICES},DemoShutter",
        f"#py Device,Shutter,{DEMO_DEVICES},DemoShutter",
    ],
    ids=["bare-pyDevice", "Device", "py-Device"],
)
def test_trusted_demo_devices_load_from_any_line_form(tmp_path, line):
    cfg = tmp_path / "demo-shutter.cfg"
    cfg.write_text(f"Property,Core,Initialize,0\n{line}\nProperty,Core,Initialize,1\n")
    core = build_core(cfg)
    assert core.isPyDevice("Shutter")
    core.close()


def test_untrusted_bare_device_line_loads_when_trusted(tmp_path, evil_module):
    cfg = tmp_path / "evil.cfg"
    cfg.write_text(
        "Property,Core,Initialize,0\npyDevice,Evil,evil_devices,Evil\nProperty,Core,Initialize,1\n"
    )
    core = build_core(cfg, trust_config=True)
    assert core.isPyDevice("Evil") and evil_module[0].exists()
    core.close()


def test_load_device_applies_the_trust_rule_too(evil_module):
    from acquisition.hardware import CordScopeCore

    core = CordScopeCore()
    with pytest.raises(UntrustedConfigError, match=r"evil_devices\.Evil is Python code"):
        core.loadDevice("Evil", "evil_devices", "Evil")
    assert not evil_module[0].exists()
    core.loadDevice("Shutter", DEMO_DEVICES, "DemoShutter")  # trusted
    assert core.isPyDevice("Shutter")
    core.close()


def test_plan_hardware_config_cannot_bypass_the_trust_rule(tmp_path, evil_module):
    from typer.testing import CliRunner

    from cordscope.cli import app

    cfg = tmp_path / "evil.cfg"
    cfg.write_text(
        "Property,Core,Initialize,0\npyDevice,Evil,evil_devices,Evil\nProperty,Core,Initialize,1\n"
    )
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"name: evil\nhardware_config: {cfg}\noutput: {tmp_path / 'out.h5'}\n"
        "channels:\n  - {preset: DAPI, exposure_ms: 20, role: anatomy}\n"
        "  - {preset: tdTomato, exposure_ms: 50, role: tracer}\n"
        "sections:\n  - id: S1\n    polygon_um: [[30000, 10000], [31000, 10000], [31000, 11000]]\n"
    )
    result = CliRunner().invoke(app, ["validate", str(plan)])
    assert result.exit_code == 2, result.output
    assert "Python device code" in result.output and "Traceback" not in result.output
    assert not evil_module[0].exists()
