"""Analysis settings: the plan's ``analysis:`` mapping, validated once.

A plan may carry an ``analysis`` mapping (kept opaque by the acquisition
package); :func:`analysis_settings_from_plan` turns it into an
:class:`AnalysisSettings` with a unit and a default for every field, and
:class:`AnalysisSettingsError` names the offending key. Example::

    analysis:
      threshold_method: fixed      # or auto (noise_k_sigma × the tile's noise σ)
      threshold_adu: 40
      min_axon_area_um2: 3
      heatmap_bin_um: 100
      rc_bin_um: 250
      flat_fields: {tdTomato: flats/tdtomato-blank.tif}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from acquisition.errors import CordScopeError
from analysis.tile import AxonSegmentationSettings, normalise_flat_field

__all__ = ["AnalysisSettings", "AnalysisSettingsError", "analysis_settings_from_plan", "load_flat_fields"]


class AnalysisSettingsError(CordScopeError, ValueError):
    """The plan's ``analysis`` settings are invalid (the message names the key)."""


class AnalysisSettings(BaseModel):
    """How tiles are analysed; every length in µm, intensities in ADU of the camera.

    The defaults are those documented in the README ("What the numbers
    mean") and calibrated on the demo slide at 10x.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold_method: Literal["auto", "fixed"] = Field(
        default="auto",
        description="auto: noise_k_sigma × the tile's robust noise σ above the local background; "
        "fixed: threshold_adu above it.",
    )
    noise_k_sigma: float = Field(default=5.0, gt=0, description="Detection threshold in noise σ (auto).")
    threshold_adu: float = Field(
        default=50.0, gt=0, description="Detection threshold above local background, ADU (fixed)."
    )
    background_scale_um: float = Field(
        default=15.0, gt=0, description="Structures broader than this (µm) count as background."
    )
    edge_fraction: float = Field(
        default=0.6, ge=0, lt=1, description="Object edge at this fraction of its local plateau (0: off)."
    )
    min_axon_area_um2: float = Field(
        default=2.0, ge=0, description="Connected axon pieces smaller than this (µm²) are removed."
    )
    dark_offset_adu: float = Field(
        default=100.0, ge=0, description="Camera dark offset subtracted from every pixel (ADU)."
    )
    flat_fields: dict[str, Path] = Field(
        default_factory=dict,
        description="Channel preset → blank-field image (TIFF or .npy, dark offset included) used "
        "to flat-field that channel.",
    )
    mosaic_pixel_um: float = Field(default=4.0, gt=0, description="Target mosaic / analysis-grid cell (µm).")
    heatmap_bin_um: float = Field(default=50.0, gt=0, description="Heatmap bin size (µm).")
    rc_bin_um: float = Field(
        default=500.0, gt=0, description="Rostro-caudal bin length on horizontal sections (µm)."
    )
    register_tiles: bool = Field(
        default=True,
        description="Measure tile offsets by phase correlation of overlaps and place tiles at the "
        "registered positions.",
    )
    max_registration_correction_um: float = Field(
        default=20.0,
        gt=0,
        description="Registered positions further than this (µm) from the requested ones are not "
        "trusted (the tile stays at its requested position).",
    )

    edge_rule: Literal["object_size", "fixed_fraction"] = Field(
        default="object_size",
        description="object_size: each object's edge from its physical size through the PSF's "
        "object-size model (analysis.object_size); fixed_fraction: the former rule, edge at "
        "edge_fraction of the local plateau for every object.",
    )
    dark_offset_from: Literal["dark_frames", "plan"] = Field(
        default="dark_frames",
        description="dark_frames: the offset measured from the scan's dark frames per channel "
        "(dark_offset_adu only when a file has none, with a warning); plan: dark_offset_adu as given.",
    )
    psf_sigma_um: float | None = Field(
        default=None,
        gt=0,
        description="Gaussian σ (µm) of the tracer channel's optical PSF, when no bead calibration "
        "is at hand; a measured PSF (cordscope calibrate) wins over it.",
    )
    size_offset_um2: float = Field(
        default=0.0,
        description="Area (µm²) subtracted from every object, measured on size-standard beads "
        "(analysis.object_size.measure_size_offset); with psf_sigma_um only.",
    )

    def segmentation(self) -> AxonSegmentationSettings:
        """The per-tile segmentation settings."""
        return AxonSegmentationSettings(
            background_scale_um=self.background_scale_um,
            threshold_method=self.threshold_method,
            noise_k_sigma=self.noise_k_sigma,
            threshold_adu=self.threshold_adu,
            edge_fraction=self.edge_fraction if self.edge_rule == "fixed_fraction" else None,
            min_area_um2=self.min_axon_area_um2,
        )


def analysis_settings_from_plan(plan_analysis: Mapping[str, Any] | str | None) -> AnalysisSettings:
    """Validate a plan's ``analysis`` mapping (or the whole plan's YAML text).

    Raises
    ------
    AnalysisSettingsError
        Naming each bad key, e.g. ``plan analysis.heatmap_bin_um: Input should be greater than 0``.
    """
    data: Any = plan_analysis
    if isinstance(plan_analysis, str):
        data = (yaml.safe_load(plan_analysis) or {}).get("analysis") or {}
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        kind = type(data).__name__
        raise AnalysisSettingsError(f"plan analysis: expected a mapping of settings, got {kind}")
    try:
        return AnalysisSettings.model_validate(dict(data))
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
            parts.append(f"plan analysis.{loc}: {msg}")
        raise AnalysisSettingsError("; ".join(parts)) from None


def load_flat_fields(
    settings: AnalysisSettings,
    channel_names: tuple[str, ...],
    *,
    tile_shape: tuple[int, int],
    base_dir: Path | None = None,
) -> list[NDArray[np.float32] | None]:
    """Read and normalise the flat field of each channel (None where none is given).

    Parameters
    ----------
    settings : AnalysisSettings
    channel_names : channel presets in tile order
    tile_shape : (H, W) of the tiles; every flat field must have it
    base_dir : directory relative flat-field paths are resolved against (the plan's)

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
    out: list[NDArray[np.float32] | None] = []
    for name in channel_names:
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
            out.append(normalise_flat_field(image, dark_offset_adu=settings.dark_offset_adu))
        except ValueError as e:
            raise AnalysisSettingsError(f"plan analysis.flat_fields.{name}: {path}: {e}") from e
    return out
