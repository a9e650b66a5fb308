"""Bad hardware configurations: ``devices`` and ``validate`` refuse each in one line, nothing moved.

Each case is the demo ``.cfg`` (128² camera) with one line added, changed
or removed, or a file that is not a config at all; a ``.rig.yaml`` beside
it that cannot be used is a case too. Untrusted Python device code must be
refused before anything loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.helpers import assert_refused, fault_config, run_cli, write_plan


@dataclass(frozen=True)
class ConfigCase:
    """A config made bad by ``edit`` (its text → new text); what the error names."""

    id: str
    edit: Callable[[str], str]
    needles: tuple[str, ...]
    rig_yaml: str | None = None
    raw: bytes | None = None
    commands: tuple[str, ...] = ("devices", "validate")


def _add(line: str) -> Callable[[str], str]:
    return lambda text: text + line + "\n"


def _remove(*prefixes: str) -> Callable[[str], str]:
    return lambda text: "\n".join(ln for ln in text.splitlines() if not ln.startswith(prefixes)) + "\n"


def _keep(text: str) -> str:
    return text


CASES = [
    ConfigCase("untrusted-py-device", _add("#py pyDevice,Evil,os.path,join"), ("os.path", "--trust-config")),
    ConfigCase("untrusted-bare-py-device", _add("pyDevice,Evil,shutil,rmtree"), ("shutil", "--trust-config")),
    ConfigCase("untrusted-device-module", _add("Device,Evil,json.decoder,JSONDecoder"), ("json.decoder",)),
    ConfigCase("missing-cpp-adapter", _add("Device,Cam2,NoSuchAdapterLib,Cam"), ("NoSuchAdapterLib",)),
    ConfigCase(
        "unknown-demo-class",
        _add("#py pyDevice,Cam2,acquisition.demo.devices,NoSuchCamera"),
        ("NoSuchCamera",),
    ),
    ConfigCase("property-unknown-device", _add("#py Property,Nothing,Exposure,10"), ("Nothing",)),
    ConfigCase("property-not-a-number", _add("#py Property,Camera,SensorWidth,wide"), ("SensorWidth",)),
    ConfigCase("property-beyond-limits", _add("#py Property,Camera,SensorWidth,100000"), ("SensorWidth",)),
    ConfigCase("property-read-only", _add("#py Property,XYStage,TrueX_um,5"), ("TrueX_um",)),
    ConfigCase("parent-unknown-hub", _add("#py Parent,Camera,NoHub"), ("NoHub",)),
    ConfigCase(
        "duplicate-label", _add("#py pyDevice,Camera,acquisition.demo.devices,DemoCamera"), ("Camera",)
    ),
    ConfigCase("too-few-fields", _add("#py pyDevice,Camera2"), ("line",)),
    # a config without what a scan needs is described by `devices` and refused by `validate`
    ConfigCase(
        "no-objective-group",
        _remove("#py ConfigGroup,Objective"),
        ("selects the objective", "--objective-group"),
        commands=("validate",),
    ),
    ConfigCase(
        "no-pixel-sizes",
        _remove("#py ConfigPixelSize", "PixelSize_um"),
        ("pixel-size",),
        commands=("validate",),
    ),
    ConfigCase("no-channel-group", _remove("#py ConfigGroup,Channel"), ("Channel",), commands=("validate",)),
    ConfigCase("binary", _keep, ("rig.cfg", "not a text file"), raw=b"\x89PNG\r\n\x1a\n\x00\xff\xfe"),
    ConfigCase(
        "rig-profile-not-yaml", _keep, ("rig.rig.yaml",), rig_yaml="xy_travel: [\n", commands=("validate",)
    ),
    ConfigCase(
        "rig-profile-unknown-key",
        _keep,
        ("rig.rig.yaml", "colour"),
        rig_yaml="colour: blue\n",
        commands=("validate",),
    ),
    ConfigCase(
        "rig-profile-inverted-travel",
        _keep,
        ("rig.rig.yaml", "focus_travel"),
        rig_yaml="focus_travel: {z_min_um: 100, z_max_um: -100}\n",
        commands=("validate",),
    ),
]


def _bad_config(case: ConfigCase, folder: Path) -> Path:
    config = fault_config(folder)
    if case.raw is not None:
        config.write_bytes(case.raw)
    else:
        config.write_text(case.edit(config.read_text()))
    if case.rig_yaml is not None:
        (folder / "rig.rig.yaml").write_text(case.rig_yaml)
    return config


PAIRS = [(case, command) for case in CASES for command in case.commands]


@pytest.mark.parametrize(("case", "command"), PAIRS, ids=[f"{c.id}-{cmd}" for c, cmd in PAIRS])
def test_bad_config_is_refused(case: ConfigCase, command: str, tmp_path: Path, monkeypatch) -> None:
    config = _bad_config(case, tmp_path)
    if command == "devices":
        argv: list[object] = ["devices", "--config", config]
    else:
        plan = tmp_path / "plan.yaml"
        (tmp_path / "p").mkdir()
        text = write_plan(tmp_path / "p", config=config).read_text()
        plan.write_text(text.replace(str(tmp_path / "p"), str(tmp_path)))
        argv = ["validate", plan]
    run = run_cli(argv, monkeypatch, inputs=[tmp_path])
    assert_refused(run, *case.needles)


def test_cases_are_distinct() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 19


def test_trusted_config_is_not_refused_for_its_python_devices(tmp_path: Path, monkeypatch) -> None:
    """The control case: the same untrusted line loads with --trust-config (then fails as a device)."""
    config = _bad_config(CASES[0], tmp_path)
    run = run_cli(["devices", "--config", config, "--trust-config"], monkeypatch)
    assert "--trust-config" not in run.stderr
