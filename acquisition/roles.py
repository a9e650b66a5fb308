"""Which configuration groups select the channel and the objective, and the pixel affine.

A lab's ``.cfg`` names its groups as it likes (``Channel``, ``Fluor``,
``Filter``; ``Objective``, ``Nosepiece``, ``Turret``) and often has no
``Core,ChannelGroup`` line. CordScope decides from what the groups *do*:

- the **objective group** is the group whose presets select the
  pixel-size configurations (a preset's settings include a pixel-size
  configuration's settings);
- the **channel group** is the core's ``ChannelGroup``, else the one
  pymmcore-plus guesses from the group names
  (``CMMCorePlus.getOrGuessChannelGroup``), else the only group whose
  presets switch a state device (a filter wheel or cube turret), the
  objective group aside.

Every decision comes with its reason. Explicit names (``--channel-group``,
``--objective-group``) win, and are checked. When no rule decides, one
typed error names the candidate groups.

The pixel affine follows Micro-Manager: ``getPixelSizeAffine()`` gives
``(a, b, c, d, e, f)`` and a pixel offset ``(u, v)`` (columns, rows from the
image centre) is the stage displacement ``(a·u + b·v, d·u + e·v)`` µm. An
identity affine in a ``.cfg`` means "not set": then ``A = pixel size · I``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from .hardware import ConfigError
from .pixel_geometry import affine_from_core

if TYPE_CHECKING:
    from numpy.typing import NDArray
    from pymmcore_plus import CMMCorePlus

__all__ = [
    "GroupDecision",
    "PixelSizeUnknownError",
    "RigRoles",
    "RoleError",
    "UndecidableGroupError",
    "UnknownGroupError",
    "camera_binning",
    "decide_channel_group",
    "decide_objective_group",
    "decide_roles",
    "pixel_affine_for_config_um",
    "pixel_affine_um",
    "preset_pixel_configs",
]

#: Micro-Manager's own group of start-up/shut-down presets: never a channel or objective group.
SYSTEM_GROUP = "System"


class RoleError(ConfigError):
    """CordScope cannot tell which configuration group plays a role."""


class UndecidableGroupError(RoleError):
    """No rule picks exactly one group; the message names the candidates."""


class UnknownGroupError(RoleError):
    """A group named explicitly (or by the core) is not defined in the config."""


class PixelSizeUnknownError(ConfigError):
    """No pixel-size configuration matches the microscope's current state."""


@dataclass(frozen=True)
class GroupDecision:
    """Which configuration group plays a role, and why.

    Attributes
    ----------
    role : {"channel", "objective"}
    group : str
        The configuration group.
    reason : str
        Why this group, in a user's words (e.g. ``"core's ChannelGroup"``).
    candidates : tuple of str
        The groups the deciding rule chose among.
    """

    role: Literal["channel", "objective"]
    group: str
    reason: str
    candidates: tuple[str, ...] = ()


@dataclass(frozen=True)
class RigRoles:
    """The channel and objective groups of a loaded configuration."""

    channel: GroupDecision
    objective: GroupDecision


# ------------------------------------------------------------------ settings

_Setting = tuple[str, str, str]


def _device_type_name(core: CMMCorePlus, device: str) -> str:
    try:
        return str(getattr(core.getDeviceType(device), "name", core.getDeviceType(device)))
    except RuntimeError:  # a device the config names but did not load
        return ""


def _is_state_device(core: CMMCorePlus, device: str) -> bool:
    return _device_type_name(core, device) in ("StateDevice", "State")


def _canonical(core: CMMCorePlus, setting: Iterable[str]) -> _Setting:
    """A state device's ``Label`` setting as its ``State``, so either spelling matches."""
    device, prop, value = (str(s) for s in setting)
    if not _is_state_device(core, device):
        return (device, prop, value)
    if prop == "Label":
        try:
            return (device, "State", str(int(core.getStateFromLabel(device, value))))
        except (RuntimeError, KeyError, ValueError):  # a label the device does not define
            return (device, prop, value)
    if prop == "State":
        try:
            return (device, "State", str(int(float(value))))
        except ValueError:
            return (device, prop, value)
    return (device, prop, value)


def _preset_settings(core: CMMCorePlus, group: str, preset: str) -> set[_Setting]:
    return {_canonical(core, s) for s in core.getConfigData(group, preset)}


def _pixel_config_settings(core: CMMCorePlus) -> dict[str, set[_Setting]]:
    return {
        str(cfg): {_canonical(core, s) for s in core.getPixelSizeConfigData(cfg)}
        for cfg in core.getAvailablePixelSizeConfigs()
    }


def _groups(core: CMMCorePlus) -> list[str]:
    return [str(g) for g in core.getAvailableConfigGroups() if str(g) != SYSTEM_GROUP]


def preset_pixel_configs(core: CMMCorePlus, group: str) -> dict[str, str]:
    """The pixel-size configuration each preset of ``group`` selects.

    A preset selects a configuration when its settings include all of the
    configuration's settings (a state device's ``Label`` and ``State``
    count as the same setting). When several match, the one with the most
    settings wins.

    Returns
    -------
    dict
        Preset name → pixel-size configuration ("" when it selects none).
    """
    configs = _pixel_config_settings(core)
    out: dict[str, str] = {}
    for preset in core.getAvailableConfigs(group):
        settings = _preset_settings(core, group, preset)
        matches = [(len(s), cfg) for cfg, s in configs.items() if s and s <= settings]
        out[str(preset)] = max(matches)[1] if matches else ""
    return out


def _switches_state_device(core: CMMCorePlus, group: str) -> bool:
    presets = core.getAvailableConfigs(group)
    return bool(presets) and all(
        any(_is_state_device(core, str(s[0])) for s in core.getConfigData(group, p)) for p in presets
    )


# ------------------------------------------------------------------ decisions


def _check_named(core: CMMCorePlus, group: str, role: str, option: str) -> None:
    groups = _groups(core)
    if group not in groups:
        raise UnknownGroupError(
            f"{option} {group!r}: no such configuration group in this hardware config "
            f"(groups: {', '.join(groups) or 'none'})"
        )
    if not core.getAvailableConfigs(group):
        raise UnknownGroupError(
            f"{option} {group!r}: the group has no presets, so it cannot select the {role}"
        )


def decide_objective_group(core: CMMCorePlus, objective_group: str | None = None) -> GroupDecision:
    """Decide which configuration group selects the objective.

    Parameters
    ----------
    core : CMMCorePlus
        A core with the configuration loaded.
    objective_group : str, optional
        The group, named by the user; wins when it exists and has presets.

    Returns
    -------
    GroupDecision

    Raises
    ------
    UnknownGroupError
        If ``objective_group`` is not a group with presets.
    UndecidableGroupError
        If no group, or several equally, select the pixel-size configurations.
    """
    if objective_group:
        _check_named(core, objective_group, "objective", "objective group")
        return GroupDecision("objective", objective_group, "given explicitly", (objective_group,))
    n_configs = len(core.getAvailablePixelSizeConfigs())
    if n_configs == 0:
        raise UndecidableGroupError(
            "cannot tell which configuration group selects the objective: the hardware config "
            "defines no pixel-size configuration (add one ConfigPixelSize and PixelSize_um per objective)"
        )
    scores: dict[str, tuple[int, float]] = {}
    for group in _groups(core):
        selected = preset_pixel_configs(core, group)
        distinct = {cfg for cfg in selected.values() if cfg}
        if distinct:
            scores[group] = (len(distinct), sum(1 for c in selected.values() if c) / len(selected))
    if not scores:
        raise UndecidableGroupError(
            "cannot tell which configuration group selects the objective: no group's presets select "
            f"a pixel-size configuration (groups: {', '.join(_groups(core)) or 'none'}); "
            "name it with --objective-group"
        )
    best = max(scores.values())
    winners = sorted(g for g, s in scores.items() if s == best)
    if len(winners) > 1:
        raise UndecidableGroupError(
            "cannot tell which configuration group selects the objective: "
            f"{', '.join(winners)} select pixel-size configurations equally; name it with --objective-group"
        )
    n_selected = best[0]
    return GroupDecision(
        "objective",
        winners[0],
        f"its presets select the pixel-size configurations ({n_selected} of {n_configs})",
        tuple(sorted(scores)),
    )


def decide_channel_group(
    core: CMMCorePlus, channel_group: str | None = None, *, objective_group: str | None = None
) -> GroupDecision:
    """Decide which configuration group selects the fluorescence channel.

    Parameters
    ----------
    core : CMMCorePlus
        A core with the configuration loaded.
    channel_group : str, optional
        The group, named by the user; wins when it exists and has presets.
    objective_group : str, optional
        The objective group, if the user named it: never a channel candidate
        (groups that select pixel-size configurations never are).

    Returns
    -------
    GroupDecision

    Raises
    ------
    UnknownGroupError
        If ``channel_group``, or the core's ``ChannelGroup``, is not a group.
    UndecidableGroupError
        If neither the core, the group names nor the devices decide.
    """
    if channel_group:
        _check_named(core, channel_group, "channel", "channel group")
        return GroupDecision("channel", channel_group, "given explicitly", (channel_group,))
    groups = _groups(core)
    if core_group := str(core.getChannelGroup()):
        if core_group not in groups:
            raise UnknownGroupError(
                f"the core's ChannelGroup {core_group!r} is not a configuration group "
                f"(groups: {', '.join(groups) or 'none'})"
            )
        return GroupDecision("channel", core_group, "core's ChannelGroup", (core_group,))
    objective_like = {g for g in groups if any(preset_pixel_configs(core, g).values())}
    if objective_group:
        objective_like.add(objective_group)
    switching = [g for g in groups if g not in objective_like and _switches_state_device(core, g)]
    guessed = [str(g) for g in core.getOrGuessChannelGroup() if str(g) in groups and g not in objective_like]
    if len(guessed) == 1:
        return GroupDecision(
            "channel", guessed[0], "guessed by pymmcore-plus from the group name", tuple(guessed)
        )
    if len(guessed) > 1:
        narrowed = [g for g in guessed if g in switching]
        if len(narrowed) == 1:
            return GroupDecision(
                "channel",
                narrowed[0],
                f"guessed by pymmcore-plus among {', '.join(guessed)}; the only one switching a state device",
                tuple(guessed),
            )
        raise UndecidableGroupError(
            "cannot tell which configuration group selects the channel: candidates "
            f"{', '.join(guessed)}; name it with --channel-group"
        )
    if len(switching) == 1:
        return GroupDecision(
            "channel",
            switching[0],
            "the only group whose presets switch a filter/state device (objective group aside)",
            tuple(switching),
        )
    candidates = switching or [g for g in groups if g not in objective_like]
    raise UndecidableGroupError(
        "cannot tell which configuration group selects the channel: candidates "
        f"{', '.join(candidates) or 'none'}; name it with --channel-group"
    )


def decide_roles(
    core: CMMCorePlus, *, channel_group: str | None = None, objective_group: str | None = None
) -> RigRoles:
    """Decide both groups (see :func:`decide_objective_group`, :func:`decide_channel_group`)."""
    objective = decide_objective_group(core, objective_group)
    channel = decide_channel_group(core, channel_group, objective_group=objective.group)
    return RigRoles(channel=channel, objective=objective)


# ------------------------------------------------------------------ pixel affine


def camera_binning(core: CMMCorePlus) -> int:
    """The current camera's binning (1 when it has no ``Binning`` property)."""
    cam = core.getCameraDevice()
    if not cam or not core.hasProperty(cam, "Binning"):
        return 1
    text = str(core.getProperty(cam, "Binning"))
    return int(float(text.split("x")[0]))  # some C++ cameras say "2x2"


def pixel_affine_for_config_um(core: CMMCorePlus, config: str, *, binning: int = 1) -> NDArray[np.float64]:
    """The 2×2 pixel affine (µm per pixel) of one pixel-size configuration.

    Parameters
    ----------
    core : CMMCorePlus
    config : str
        A pixel-size configuration.
    binning : int
        Camera binning to apply (the ``.cfg`` stores unbinned values).

    Returns
    -------
    (2, 2) float64 array
        ``[[a, b], [d, e]]`` of ``PixelSizeAffine`` times ``binning``; the
        pixel size times the identity when the ``.cfg`` gives no affine.
    """
    affine6 = [float(v) for v in core.getPixelSizeAffineByID(config)]
    return affine_from_core(affine6, float(core.getPixelSizeUmByID(config))) * float(binning)


def pixel_affine_um(core: CMMCorePlus) -> NDArray[np.float64]:
    """The current 2×2 pixel affine: stage µm per pixel step, binning applied.

    Column ``j`` is the stage displacement of one pixel step along image
    axis ``j`` (0: columns, 1: rows).

    Parameters
    ----------
    core : CMMCorePlus
        Any core whose ``getPixelSizeUm`` resolves (CordScope's core, or a
        stock core on C++ devices).

    Returns
    -------
    (2, 2) float64 array

    Raises
    ------
    PixelSizeUnknownError
        If no pixel-size configuration matches the current state.
    """
    config = str(core.getCurrentPixelSizeConfig())
    if not config:
        raise PixelSizeUnknownError(
            "no pixel-size configuration matches the microscope's current state: select an objective "
            "that has one (ConfigPixelSize in the .cfg)"
        )
    px_config = float(core.getPixelSizeUmByID(config))
    if not (math.isfinite(px_config) and px_config > 0):
        raise PixelSizeUnknownError(f"pixel-size configuration {config!r} has no pixel size (PixelSize_um)")
    scale = float(core.getPixelSizeUm()) / px_config  # binning and magnifiers, as the core applies them
    return pixel_affine_for_config_um(core, config) * scale
