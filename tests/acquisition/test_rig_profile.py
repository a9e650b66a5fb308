"""Rig profile (slide frame, travel) beside a .cfg, its sources, and the description of a rig."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from acquisition.hardware import DEMO_CONFIG, build_core
from acquisition.rig_profile import (
    RigProfileError,
    SlideFrame,
    XYTravel,
    describe_rig,
    load_rig_profile,
    rig_profile_for,
    rig_profile_path,
)

ROTATED = DEMO_CONFIG.parent / "demo-rotated-90.cfg"


@pytest.fixture
def rotated_core():
    core = build_core(ROTATED)  # no rig profile beside it: travel from the stage adapter
    yield core
    core.close()


def test_demo_profile_gives_travel_slide_and_label_end():
    profile = load_rig_profile(DEMO_CONFIG.parent / "demo.rig.yaml")
    assert profile.xy_travel == XYTravel(x_min_um=0, x_max_um=75_000, y_min_um=0, y_max_um=25_000)
    assert (profile.focus_travel.z_min_um, profile.focus_travel.z_max_um) == (-2000, 2000)
    assert profile.slide == SlideFrame()  # the defaults are the demo slide's
    assert rig_profile_path(DEMO_CONFIG).name == "demo.rig.yaml"


def test_demo_rig_resolves_from_its_profile(demo_core):
    rig = rig_profile_for(demo_core)
    assert rig.profile_path == DEMO_CONFIG.parent / "demo.rig.yaml"
    assert rig.xy_travel_source == rig.slide_source == rig.focus_travel_source == "rig profile demo.rig.yaml"
    assert rig.travel_known
    assert rig.overview_region_um() == (20_000.0, 0.0, 75_000.0, 25_000.0)
    limits, what = rig.xy_limits_um()
    assert limits.bounds_um() == (0.0, 0.0, 75_000.0, 25_000.0) and what.startswith("stage travel")


def test_stage_adapter_limits_are_used_without_a_profile(rotated_core):
    rig = rig_profile_for(rotated_core)
    assert rig.profile_path is None
    assert rig.xy_travel.bounds_um() == (0.0, 0.0, 75_000.0, 25_000.0)
    assert rig.xy_travel_source.startswith("XY stage 'XYStage' reports it (TravelXMin_um")
    assert rig.focus_travel_source.startswith("focus drive 'ZStage' reports it")
    assert rig.slide_source.startswith("default: a 75 × 25 mm slide")


def test_slide_outside_the_reported_travel_is_named(rotated_core, tmp_path):
    # a stage whose coordinates put the slide at negative positions
    rotated_core.setXYPosition(75_000.0, 25_000.0)
    rotated_core.setOriginXY()
    rig = rig_profile_for(rotated_core)
    assert rig.xy_travel.bounds_um() == (-75_000.0, -25_000.0, 0.0, 0.0)
    with pytest.raises(RigProfileError) as info:
        rig.overview_region_um()
    msg = str(info.value)
    assert "lies outside the stage travel (X -75000..0, Y -25000..0 µm" in msg and "rig profile" in msg
    assert "\n" not in msg
    # the lab describes the slide's position beside its .cfg
    cfg = tmp_path / "negative.cfg"
    shutil.copy(ROTATED, cfg)
    cfg.with_name("negative.rig.yaml").write_text("slide: {corner_um: [-75000, -25000]}\n")
    rig = rig_profile_for(rotated_core, cfg)
    assert rig.slide_source == "rig profile negative.rig.yaml"
    assert rig.overview_region_um() == (-55_000.0, -25_000.0, 0.0, 0.0)
    assert rig.xy_travel_source.startswith("XY stage")  # the profile gave no travel: the adapter's


@pytest.mark.parametrize(
    ("label_end", "region"),
    [
        ("x_min", (20_000.0, 0.0, 75_000.0, 25_000.0)),
        ("x_max", (0.0, 0.0, 55_000.0, 25_000.0)),
        ("none", (0.0, 0.0, 75_000.0, 25_000.0)),
    ],
    ids=["x_min", "x_max", "none"],
)
def test_overview_region_leaves_out_the_label_end(label_end, region):
    assert SlideFrame(label_end=label_end).region_beside_label_um() == region


def test_label_at_y_end_of_a_slide_lying_along_y():
    frame = SlideFrame(corner_um=(1000.0, 2000.0), width_um=25_000, height_um=75_000, label_end="y_max")
    assert frame.region_beside_label_um() == (1000.0, 2000.0, 26_000.0, 57_000.0)


BAD_PROFILES = [
    ("sliide: {}\n", "bad.rig.yaml: sliide: unknown field"),
    (
        "xy_travel: {x_min_um: 5, x_max_um: 1, y_min_um: 0, y_max_um: 1}\n",
        "xy_travel: needs x_min_um < x_max_um",
    ),
    ("xy_travel: {x_min_um: 0, x_max_um: 1, y_min_um: 0}\n", "xy_travel.y_max_um: required field is missing"),
    ("slide: {width_um: -5}\n", "slide.width_um: must be > 0 (got -5)"),
    ("slide: {label_length_um: 80000}\n", "slide: label_length_um 80000 leaves no slide beside the label"),
    ("slide: {label_end: left}\n", "slide.label_end: must be 'x_min', 'x_max', 'y_min', 'y_max' or 'none'"),
    ("focus_travel: {z_min_um: .nan, z_max_um: 1}\n", "focus_travel.z_min_um: must be a finite number"),
    ("slide: {corner_um: [1, 2, 3]}\n", "slide.corner_um"),
    ("- just\n- a list\n", "must be a mapping of fields"),
    ("slide: {width_um: [\n", "not valid YAML at line"),
    ('a: &a ["x","x"]\nb: &b [*a,*a]\nc: [*b,*b]\n', "YAML anchors and aliases are not allowed"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    BAD_PROFILES,
    ids=[
        "unknown-field",
        "travel-reversed",
        "travel-missing",
        "negative-width",
        "label-too-long",
        "label-end",
        "nan",
        "corner-3d",
        "not-mapping",
        "bad-yaml",
        "alias-bomb",
    ],
)
def test_bad_profiles_give_one_line_naming_file_and_field(tmp_path, text, expected):
    path = tmp_path / "bad.rig.yaml"
    path.write_text(text)
    with pytest.raises(RigProfileError) as info:
        load_rig_profile(path)
    assert expected in str(info.value)
    assert str(info.value).startswith("bad.rig.yaml: ") and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"\xff\xfe not utf8", "not UTF-8 text"), (b"# pad\n" * 20_000, "bytes is not a rig profile")],
    ids=["not-utf8", "too-big"],
)
def test_unreadable_profiles_are_refused(tmp_path, content, expected):
    path = tmp_path / "bad.rig.yaml"
    path.write_bytes(content)
    with pytest.raises(RigProfileError, match=expected):
        load_rig_profile(path)


def test_empty_profile_means_all_defaults(tmp_path, rotated_core):
    cfg = tmp_path / "empty.cfg"
    shutil.copy(ROTATED, cfg)
    cfg.with_name("empty.rig.yaml").write_text("# nothing yet\n")
    rig = rig_profile_for(rotated_core, cfg)
    assert rig.profile_path == cfg.with_name("empty.rig.yaml")
    assert rig.xy_travel_source.startswith("XY stage") and rig.slide == SlideFrame()


def test_focus_travel_from_the_position_property_limits():
    from pymmcore_plus.experimental.unicore import StageDevice

    from acquisition.hardware import CordScopeCore

    class LimitedFocus(StageDevice):
        def __init__(self):
            super().__init__()
            self._z = 0.0
            self.register_property("Position", default_value=0.0, limits=(-500.0, 1500.0))

        def set_position_um(self, val):
            self._z = float(val)

        def get_position_um(self):
            return self._z

        def home(self):
            self._z = 0.0

        def stop(self):
            pass

        def set_origin(self):
            pass

    core = CordScopeCore()
    core.loadPyDevice("Focus", LimitedFocus())
    core.initializeAllDevices()
    core.setFocusDevice("Focus")
    rig = rig_profile_for(core)
    assert (rig.focus_travel.z_min_um, rig.focus_travel.z_max_um) == (-500.0, 1500.0)
    assert rig.focus_travel_source == "focus drive 'Focus' reports it (limits of its Position property)"
    assert rig.xy_travel is None and rig.xy_travel_source == "unknown: no rig profile and no XY stage"
    core.close()


def test_cpp_stage_without_limits_checks_against_the_slide_only(mm_demo_config, tmp_path):
    config = mm_demo_config("8bit")
    core = config.build()
    try:
        rig = rig_profile_for(core, config.path)
        assert not rig.travel_known
        assert rig.xy_travel_source == (
            "unknown: no rig profile (dcam-8bit.rig.yaml) and XY stage 'XY' reports no travel limits"
        )
        limits, what = rig.xy_limits_um()
        assert limits.bounds_um() == (0.0, 0.0, 75_000.0, 25_000.0)
        assert what.startswith("the slide frame only (default: a 75 × 25 mm slide")
        assert "stage travel unknown" in what
        # the lab adds a profile beside its .cfg
        cfg = tmp_path / config.path.name
        shutil.copy(config.path, cfg)
        rig_profile_path(cfg).write_text(
            "xy_travel: {x_min_um: -50000, x_max_um: 50000, y_min_um: -20000, y_max_um: 20000}\n"
        )
        rig = rig_profile_for(core, cfg)
        assert rig.xy_travel_source == "rig profile dcam-8bit.rig.yaml"
        assert rig.overview_region_um() == (20_000.0, 0.0, 50_000.0, 20_000.0)  # slide clipped to travel
    finally:
        core.close()


def test_describe_rig_on_the_cpp_demo_adapters(mm_demo_config):
    config = mm_demo_config("16bit-bin2")
    core = config.build()
    try:
        rig = describe_rig(core, config.path)
        assert (rig.channel.group, rig.objective.group) == ("Fluorophore", "Turret")
        assert rig.channel_presets == ("DAPI", "tdTomato")
        assert [o.preset for o in rig.objectives] == ["4x", "10x", "20x"]
        by = {o.preset: o for o in rig.objectives}
        assert by["10x"].pixel_size_um == pytest.approx(1.3)  # binning 2
        np.testing.assert_allclose(by["20x"].affine_um, [[0.0, -0.65], [0.65, 0.0]], atol=1e-12)
        assert by["20x"].affine_source == "PixelSizeAffine in the .cfg"
        assert by["10x"].scale_mismatch_pct < 1e-6
        assert (
            rig.camera.bit_depth == 16 and rig.camera.binning == 2 and rig.camera.image_size_px == (256, 256)
        )
        text = "\n".join(rig.lines())
        assert "Fluorophore (the only group whose presets switch a filter/state device" in text
        assert "10x: Res10x, 1.3 µm/px (now)" in text
        assert "XY travel: unknown: no rig profile" in text
    finally:
        core.close()


def test_describe_rig_reports_problems_instead_of_raising(tmp_path):
    cfg = tmp_path / "odd.cfg"
    dev = "acquisition.demo.devices"
    cfg.write_text(
        f"#py pyDevice,Wheel,{dev},DemoFilterWheel\n#py pyDevice,Cube,{dev},DemoFilterWheel\n"
        f"#py pyDevice,Nosepiece,{dev},DemoObjectiveTurret\nProperty,Core,Initialize,1\n"
        "#py ConfigGroup,Fluor,DAPI,Wheel,State,0\n#py ConfigGroup,Cube,A,Cube,State,1\n"
        "#py ConfigGroup,Lens,low,Nosepiece,State,0\n"
        "#py ConfigPixelSize,Low,Nosepiece,State,0\nPixelSize_um,Low,1.6\n"
        "PixelSizeAffine,Low,1.7,0,0,0,1.7,0\n"
    )
    cfg.with_name("odd.rig.yaml").write_text("slide: {width_um: 0}\n")
    core = build_core(cfg)
    try:
        rig = describe_rig(core, cfg)
        assert rig.channel is None and "candidates Cube, Fluor" in rig.channel_problem
        assert rig.objective.group == "Lens"
        assert rig.objectives[0].scale_mismatch_pct == pytest.approx(6.25)
        assert rig.rig is None and rig.rig_problem.startswith("odd.rig.yaml: slide.width_um: must be > 0")
        text = "\n".join(rig.lines())
        assert "Channel group: undecided: cannot tell" in text
        assert "its scale differs from PixelSize_um by 6.2 %" in text
        assert "Rig profile: odd.rig.yaml" in text
    finally:
        core.close()


def test_cordscope_devices_shows_decisions_and_reasons():
    from typer.testing import CliRunner

    from cordscope.cli import app

    result = CliRunner().invoke(app, ["devices"])
    assert result.exit_code == 0, result.output
    for needle in (
        "Channel group: Channel (core's ChannelGroup): DAPI, tdTomato",
        "Objective group: Objective (its presets select the pixel-size configurations (3 of 3))",
        "10x: Res10x, 0.65 µm/px (now), affine [[0.65, 0], [0, 0.65]]",
        "Camera Camera: 16-bit (16bit), binning 1",
        "XY travel: X 0..75000, Y 0..25000 µm (rig profile demo.rig.yaml)",
        "Overview default region: X 20000..75000, Y 0..25000 µm",
    ):
        assert needle in result.output, needle
    result = CliRunner().invoke(app, ["devices", "--config", str(ROTATED), "--objective-group", "Channel"])
    assert result.exit_code == 0, result.output
    assert "Objective group: Channel (given explicitly)" in result.output
    assert "DAPI: selects no pixel-size configuration" in result.output
