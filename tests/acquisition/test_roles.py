"""Channel and objective groups decided from what the groups do, with the reason; the pixel affine."""

from __future__ import annotations

import numpy as np
import pytest

from acquisition.hardware import DEMO_CONFIG, build_core
from acquisition.roles import (
    PixelSizeUnknownError,
    UndecidableGroupError,
    UnknownGroupError,
    decide_channel_group,
    decide_objective_group,
    decide_roles,
    pixel_affine_for_config_um,
    pixel_affine_um,
    preset_pixel_configs,
)

DEV = "acquisition.demo.devices"

# State devices only (no hub, no camera): loads in milliseconds.
DEVICES = f"""
Property,Core,Initialize,0
#py pyDevice,Wheel,{DEV},DemoFilterWheel
#py pyDevice,Cube,{DEV},DemoFilterWheel
#py pyDevice,Nosepiece,{DEV},DemoObjectiveTurret
#py pyDevice,Shutter,{DEV},DemoShutter
Property,Core,Initialize,1
#py ConfigPixelSize,Low,Nosepiece,State,0
PixelSize_um,Low,1.625
#py ConfigPixelSize,High,Nosepiece,State,2
PixelSize_um,High,0.325
PixelSizeAffine,High,0,-0.325,0,0.325,0,0
"""

OBJECTIVES_BY_LABEL = """
#py ConfigGroup,Lenses,four,Nosepiece,Label,4x
#py ConfigGroup,Lenses,twenty,Nosepiece,Label,20x
"""


def _core(tmp_path, groups: str, *, devices: str = DEVICES):
    cfg = tmp_path / "rig.cfg"
    cfg.write_text(devices + groups)
    return build_core(cfg)


CASES = [
    pytest.param(
        OBJECTIVES_BY_LABEL
        + "#py ConfigGroup,Fluor,DAPI,Wheel,Label,DAPI\n#py ConfigGroup,Fluor,Tom,Wheel,Label,tdTomato\n",
        ("Fluor", "the only group whose presets switch a filter/state device (objective group aside)"),
        ("Lenses", "its presets select the pixel-size configurations (2 of 2)"),
        id="state-device-rule-label-vs-state",
    ),
    pytest.param(
        OBJECTIVES_BY_LABEL
        + "#py ConfigGroup,Channels,DAPI,Wheel,Label,DAPI\n#py ConfigGroup,Light,On,Shutter,State,1\n",
        ("Channels", "guessed by pymmcore-plus from the group name"),
        ("Lenses", "its presets select the pixel-size configurations (2 of 2)"),
        id="guessed-by-name",
    ),
    pytest.param(
        OBJECTIVES_BY_LABEL
        + "#py ConfigGroup,Fluor,DAPI,Wheel,Label,DAPI\n#py ConfigGroup,Cube,A,Cube,State,1\n"
        + "Property,Core,ChannelGroup,Cube\n",
        ("Cube", "core's ChannelGroup"),
        ("Lenses", "its presets select the pixel-size configurations (2 of 2)"),
        id="core-channel-group",
    ),
    pytest.param(
        OBJECTIVES_BY_LABEL
        + "#py ConfigGroup,Filter,DAPI,Wheel,Label,DAPI\n#py ConfigGroup,Channel,Open,Shutter,State,1\n",
        ("Filter", "guessed by pymmcore-plus among Channel, Filter; the only one switching a state device"),
        ("Lenses", "its presets select the pixel-size configurations (2 of 2)"),
        id="two-guesses-narrowed",
    ),
    pytest.param(
        "#py ConfigGroup,Scope,low,Nosepiece,State,0\n#py ConfigGroup,Scope,high,Nosepiece,State,2\n"
        "#py ConfigGroup,Scope,mid,Nosepiece,State,1\n"
        "#py ConfigGroup,Mode,fast,Nosepiece,State,2\n#py ConfigGroup,Mode,fast,Wheel,State,1\n"
        "#py ConfigGroup,Dye,DAPI,Wheel,State,0\n",
        ("Dye", "the only group whose presets switch a filter/state device (objective group aside)"),
        ("Scope", "its presets select the pixel-size configurations (2 of 2)"),
        id="objective-by-most-configs",
    ),
]


@pytest.mark.parametrize(("groups", "channel", "objective"), CASES)
def test_groups_are_decided_from_what_they_do(tmp_path, groups, channel, objective):
    core = _core(tmp_path, groups)
    roles = decide_roles(core)
    assert (roles.channel.group, roles.channel.reason) == channel
    assert (roles.objective.group, roles.objective.reason) == objective
    core.close()


def test_demo_config_decisions():
    core = build_core(DEMO_CONFIG)
    roles = decide_roles(core)
    assert (roles.channel.group, roles.channel.reason) == ("Channel", "core's ChannelGroup")
    assert roles.objective.group == "Objective"
    assert roles.objective.reason == "its presets select the pixel-size configurations (3 of 3)"
    assert preset_pixel_configs(core, "Objective") == {"4x": "Res4x", "10x": "Res10x", "20x": "Res20x"}
    assert preset_pixel_configs(core, "Channel") == {"DAPI": "", "tdTomato": ""}
    core.close()


UNDECIDABLE = [
    pytest.param(
        OBJECTIVES_BY_LABEL
        + "#py ConfigGroup,Fluor,DAPI,Wheel,Label,DAPI\n#py ConfigGroup,Cube,A,Cube,State,1\n",
        "channel",
        "cannot tell which configuration group selects the channel: candidates Cube, Fluor; "
        "name it with --channel-group",
        id="two-wheels",
    ),
    pytest.param(
        OBJECTIVES_BY_LABEL
        + "#py ConfigGroup,Filter,DAPI,Wheel,Label,DAPI\n#py ConfigGroup,Channel,A,Cube,State,1\n",
        "channel",
        "cannot tell which configuration group selects the channel: candidates Channel, Filter; "
        "name it with --channel-group",
        id="two-guesses-both-switching",
    ),
    pytest.param(
        OBJECTIVES_BY_LABEL
        + "#py ConfigGroup,Optics,four,Nosepiece,State,0\n#py ConfigGroup,Optics,hi,Nosepiece,State,2\n",
        "objective",
        "cannot tell which configuration group selects the objective: Lenses, Optics select pixel-size "
        "configurations equally; name it with --objective-group",
        id="two-objective-groups",
    ),
    pytest.param(
        "#py ConfigGroup,Fluor,DAPI,Wheel,Label,DAPI\n",
        "objective",
        "cannot tell which configuration group selects the objective: no group's presets select a pixel-size "
        "configuration (groups: Fluor); name it with --objective-group",
        id="no-objective-group",
    ),
]


@pytest.mark.parametrize(("groups", "role", "message"), UNDECIDABLE)
def test_undecidable_groups_raise_one_line_naming_the_candidates(tmp_path, groups, role, message):
    core = _core(tmp_path, groups)
    decide = decide_channel_group if role == "channel" else decide_objective_group
    with pytest.raises(UndecidableGroupError) as info:
        decide(core)
    assert str(info.value) == message
    core.close()


def test_no_pixel_size_configuration_at_all(tmp_path):
    devices = DEVICES.split("#py ConfigPixelSize")[0]
    core = _core(tmp_path, OBJECTIVES_BY_LABEL, devices=devices)
    with pytest.raises(UndecidableGroupError, match="defines no pixel-size configuration"):
        decide_objective_group(core)
    core.close()


def test_explicit_groups_win_and_are_checked(tmp_path):
    core = _core(
        tmp_path,
        OBJECTIVES_BY_LABEL
        + "#py ConfigGroup,Fluor,DAPI,Wheel,Label,DAPI\n#py ConfigGroup,Cube,A,Cube,State,1\n"
        "ConfigGroup,Empty\n",
    )
    roles = decide_roles(core, channel_group="Cube", objective_group="Lenses")
    assert (roles.channel.group, roles.channel.reason) == ("Cube", "given explicitly")
    assert (roles.objective.group, roles.objective.reason) == ("Lenses", "given explicitly")
    with pytest.raises(UnknownGroupError) as info:
        decide_channel_group(core, "Filters")
    assert str(info.value) == (
        "channel group 'Filters': no such configuration group in this hardware config "
        "(groups: Cube, Empty, Fluor, Lenses)"
    )
    with pytest.raises(UnknownGroupError, match="objective group 'Empty': the group has no presets"):
        decide_objective_group(core, "Empty")
    core.close()


def test_pixel_affine_follows_the_config_and_says_when_unknown(tmp_path):
    core = _core(tmp_path, OBJECTIVES_BY_LABEL)
    core.setConfig("Lenses", "four")
    np.testing.assert_array_equal(pixel_affine_um(core), [[1.625, 0.0], [0.0, 1.625]])  # no affine: p·I
    core.setConfig("Lenses", "twenty")
    np.testing.assert_array_equal(pixel_affine_um(core), [[0.0, -0.325], [0.325, 0.0]])
    np.testing.assert_array_equal(
        pixel_affine_for_config_um(core, "High", binning=2), [[0.0, -0.65], [0.65, 0.0]]
    )
    core.setState("Nosepiece", 1)  # 10x: no pixel-size configuration
    with pytest.raises(PixelSizeUnknownError, match="no pixel-size configuration matches"):
        pixel_affine_um(core)
    core.close()
