"""The plan's ``analysis:`` settings: how tiles are analysed, typed and validated with the plan.

Part of the plan model (:class:`acquisition.plan.ScanPlan` field ``analysis``),
so a bad key or value is reported once, with its line number, by
:func:`acquisition.plan.load_plan` and ``cordscope validate``. The analysis
package reads these settings; nothing here touches the hardware or images.
Example::

    analysis:
      threshold_method: fixed      # or auto (noise_k_sigma × the tile's noise σ)
      threshold_adu: 40
      min_axon_area_um2: 3
      heatmap_bin_um: 100
      rc_bin_um: 250
      flat_fields: {tdTomato: flats/tdtomato-blank.tif}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AnalysisSettings"]


class _SettingsModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class AnalysisSettings(_SettingsModel):
    """How tiles are analysed; every length in µm, intensities in ADU of the camera.

    The defaults are those documented in the README ("What the numbers
    mean") and calibrated on the demo slide at 10x.
    """

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
        default=1.0,
        ge=0,
        description="Connected axon pieces smaller than this (µm²) are removed (1.0: 2.0 dropped 11 % of "
        "model B's puncta, its gray matter then 13-17 % low).",
    )
    dark_offset_adu: float = Field(
        default=100.0,
        ge=0,
        lt=65536,
        description="Camera dark offset subtracted from every pixel (ADU; below 65536, the 16-bit range).",
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
