"""Using the plan's analysis settings: segmentation settings, the settings of a scan file, flat fields.

The settings themselves are part of the plan model
(:class:`acquisition.plan.AnalysisSettings`), validated with the plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from acquisition.errors import CordScopeError
from acquisition.plan import AnalysisSettings, plan_from_yaml
from analysis.tile import AxonSegmentationSettings, normalise_flat_field

__all__ = [
    "AnalysisSettings",
    "AnalysisSettingsError",
    "load_flat_fields",
    "segmentation_settings",
    "settings_of_scan",
]


class AnalysisSettingsError(CordScopeError, ValueError):
    """Analysis settings cannot be used (e.g. a flat-field image that does not fit the tiles)."""


def segmentation_settings(settings: AnalysisSettings) -> AxonSegmentationSettings:
    """The per-tile segmentation settings of a plan's analysis settings."""
    return AxonSegmentationSettings(
        background_scale_um=settings.background_scale_um,
        threshold_method=settings.threshold_method,
        noise_k_sigma=settings.noise_k_sigma,
        threshold_adu=settings.threshold_adu,
        edge_fraction=settings.edge_fraction if settings.edge_rule == "fixed_fraction" else None,
        min_area_um2=settings.min_axon_area_um2,
    )


def settings_of_scan(plan_yaml: str, *, source: str = "scan file") -> AnalysisSettings:
    """The analysis settings of the plan stored in a scan file (``ScanFile.plan_yaml``)."""
    return plan_from_yaml(plan_yaml, source=source).analysis


def load_flat_fields(
    settings: AnalysisSettings,
    channel_names: tuple[str, ...],
    *,
    tile_shape: tuple[int, int],
    base_dir: Path | None = None,
    dark_offsets_adu: Sequence[float] | None = None,
) -> list[NDArray[np.float32] | None]:
    """Read and normalise the flat field of each channel (None where none is given).

    Parameters
    ----------
    settings : AnalysisSettings
    channel_names : channel presets in tile order
    tile_shape : (H, W) of the tiles; every flat field must have it
    base_dir : directory relative flat-field paths are resolved against (the plan's)
    dark_offsets_adu : offset of each channel to subtract from its image (default: the plan's
        ``dark_offset_adu`` for every channel)

    Raises
    ------
    AnalysisSettingsError
        For a flat field of an unknown channel, a missing or unreadable file, or a wrong shape.
    """
    unknown = sorted(set(settings.flat_fields) - set(channel_names))
    if unknown:
        raise AnalysisSettingsError(
            f"plan analysis.flat_fields: no channel {', '.join(map(repr, unknown))} in the scan "
            f"(channels: {', '.join(channel_names)})"
        )
    offsets = (
        tuple(dark_offsets_adu)
        if dark_offsets_adu is not None
        else (settings.dark_offset_adu,) * len(channel_names)
    )
    out: list[NDArray[np.float32] | None] = []
    for name, offset in zip(channel_names, offsets, strict=True):
        path = settings.flat_fields.get(name)
        if path is None:
            out.append(None)
            continue
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            if path.suffix.lower() == ".npy":
                image = np.load(path)
            else:
                import tifffile

                image = tifffile.imread(path)
        except (OSError, ValueError) as e:
            raise AnalysisSettingsError(f"plan analysis.flat_fields.{name}: cannot read {path}: {e}") from e
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[0] == 1:
            image = image[0]
        if image.shape != tuple(tile_shape):
            raise AnalysisSettingsError(
                f"plan analysis.flat_fields.{name}: {path} is {image.shape[::-1]} px (w × h), "
                f"the tiles are {tile_shape[1]} × {tile_shape[0]}"
            )
        try:
            out.append(normalise_flat_field(image, dark_offset_adu=offset))
        except ValueError as e:
            raise AnalysisSettingsError(f"plan analysis.flat_fields.{name}: {path}: {e}") from e
    return out
