"""Single multi-channel snaps at the current or a given stage position."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pymmcore_plus import CMMCorePlus

__all__ = ["ChannelSnap", "snap_channels"]


@dataclass(frozen=True)
class ChannelSnap:
    """Images of one field of view, one per channel.

    Attributes
    ----------
    images : np.ndarray
        uint16, shape (n_channels, H, W).
    channel_names : tuple of str
        Channel preset of each image.
    exposures_ms : tuple of float
        Exposure used for each image.
    center_xy_um : tuple of float
        Stage position (µm) the images were taken at, as the stage reports it.
    z_um : float
        Focus position (µm).
    pixel_size_um : float
        Image pixel size (µm) with the current objective.
    """

    images: np.ndarray
    channel_names: tuple[str, ...]
    exposures_ms: tuple[float, ...]
    center_xy_um: tuple[float, float]
    z_um: float
    pixel_size_um: float


def snap_channels(
    core: CMMCorePlus,
    channels: Sequence[str],
    *,
    exposures_ms: Sequence[float] | None = None,
    xy_um: tuple[float, float] | None = None,
    z_um: float | None = None,
) -> ChannelSnap:
    """Move (optionally), then snap one image per channel preset.

    Parameters
    ----------
    core : CMMCorePlus
        A loaded core with a channel group.
    channels : sequence of str
        Presets of the core's channel group, in order.
    exposures_ms : sequence of float, optional
        Exposure per channel (ms); default: the camera's current exposure.
    xy_um, z_um : optional
        Stage position (µm) to move to first; default: stay.

    Returns
    -------
    ChannelSnap
    """
    group = core.getChannelGroup()
    if not group:
        raise ValueError("the hardware config defines no channel group (Core, ChannelGroup)")
    available = core.getAvailableConfigs(group)
    for name in channels:
        if name not in available:
            raise ValueError(f"unknown channel {name!r}: {group} presets are {', '.join(available)}")
    if xy_um is not None:
        core.setXYPosition(*xy_um)
        core.waitForDevice(core.getXYStageDevice())
    if z_um is not None:
        core.setPosition(z_um)
        core.waitForDevice(core.getFocusDevice())
    exposures = list(exposures_ms) if exposures_ms is not None else [core.getExposure()] * len(channels)
    images = []
    for name, exposure in zip(channels, exposures, strict=True):
        core.setConfig(group, name)
        core.waitForConfig(group, name)
        core.setExposure(exposure)
        core.snapImage()
        images.append(np.array(core.getImage(), copy=True))
    x, y = core.getXYPosition()
    return ChannelSnap(
        images=np.stack(images),
        channel_names=tuple(channels),
        exposures_ms=tuple(float(e) for e in exposures),
        center_xy_um=(float(x), float(y)),
        z_um=float(core.getPosition()),
        pixel_size_um=float(core.getPixelSizeUm()),
    )
