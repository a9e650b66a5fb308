"""The Slide tab's overview settings: region, objective, channel, exposure, and its buttons.

A plain widget: :class:`~gui.slide_panel.SlidePanel` connects its buttons and
runs the work; this box only holds the settings and shows progress.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from PyQt6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QWidget,
)

from acquisition.hardware import CordScopeCore, channel_group, objective_group
from acquisition.overview import DEFAULT_REGION_UM, Overview
from acquisition.rig_profile import RigProfileError, rig_profile_for

__all__ = ["OverviewBox"]

logger = logging.getLogger(__name__)

#: Presets chosen when the configuration has them: the demo's overview objective and channel.
PREFERRED_OBJECTIVE = "4x"
PREFERRED_CHANNEL = "DAPI"


def _presets(core: CordScopeCore | None, group: str) -> list[str]:
    if core is None or not group or not core.isGroupDefined(group):
        return []
    return [str(p) for p in core.getAvailableConfigs(group)]


class OverviewBox(QGroupBox):
    """Where and how to acquire the overview, with Acquire / Cancel / Load / Save and a progress bar."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Overview", parent)
        self.region_boxes: list[QDoubleSpinBox] = []
        region = QGridLayout()
        for i, (label, value) in enumerate(zip(("x0", "y0", "x1", "y1"), DEFAULT_REGION_UM, strict=True)):
            box = QDoubleSpinBox()
            box.setRange(-200.0, 200.0)
            box.setDecimals(1)
            box.setSingleStep(1.0)
            box.setSuffix(" mm")
            box.setValue(value / 1000.0)
            box.setToolTip(f"overview region {label} (stage mm)")
            self.region_boxes.append(box)
            region.addWidget(QLabel(label), i // 2, 2 * (i % 2))
            region.addWidget(box, i // 2, 2 * (i % 2) + 1)
        self.objective_combo = QComboBox()
        self.channel_combo = QComboBox()
        self.exposure_box = QDoubleSpinBox()
        self.exposure_box.setRange(0.0, 10_000.0)
        self.exposure_box.setDecimals(1)
        self.exposure_box.setSuffix(" ms")
        self.exposure_box.setValue(20.0)
        self.acquire_button = QPushButton("Acquire overview")
        self.acquire_button.setToolTip("Tile the region at the overview objective and channel")
        self.cancel_button = QPushButton("Cancel")
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m tiles")
        self.progress.setTextVisible(False)
        self.progress.setValue(0)
        self.load_button = QPushButton("Load overview…")
        self.save_button = QPushButton("Save overview…")
        self.overview_info = QLabel("No overview")
        self.overview_info.setWordWrap(True)

        form = QFormLayout(self)
        form.addRow(QLabel("Region"))
        form.addRow(region)
        form.addRow("Objective", self.objective_combo)
        form.addRow("Channel", self.channel_combo)
        form.addRow("Exposure", self.exposure_box)
        row = QHBoxLayout()
        row.addWidget(self.acquire_button, 1)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        form.addRow(self.progress)
        row = QHBoxLayout()
        row.addWidget(self.load_button)
        row.addWidget(self.save_button)
        form.addRow(row)
        form.addRow(self.overview_info)

    def set_core(self, core: CordScopeCore | None) -> None:
        """Offer the objectives and channels of ``core`` (none without a core); region from its slide frame.

        The default region is the slide beside its label, within the stage
        travel, from the rig profile beside the config
        (:meth:`acquisition.rig_profile.ResolvedRig.overview_region_um`).
        """
        if core is not None:
            try:
                self.set_region_um(rig_profile_for(core).overview_region_um())
            except RigProfileError as e:  # keep the region shown; the user sets it
                logger.warning("overview region: %s", e)
        for combo, presets, preferred in (
            (
                self.objective_combo,
                _presets(core, objective_group(core) if core else ""),
                PREFERRED_OBJECTIVE,
            ),
            (self.channel_combo, _presets(core, channel_group(core) if core else ""), PREFERRED_CHANNEL),
        ):
            combo.clear()
            combo.addItems(presets)
            if preferred in presets:
                combo.setCurrentText(preferred)
            elif presets:
                # the lowest magnification is the likely overview objective
                combo.setCurrentIndex(0)

    def region_um(self) -> tuple[float, float, float, float]:
        """The overview region (x0, y0, x1, y1), stage µm."""
        x0, y0, x1, y1 = (b.value() * 1000.0 for b in self.region_boxes)
        return (x0, y0, x1, y1)

    def set_region_um(self, region_um: Sequence[float]) -> None:
        """Set the overview region (x0, y0, x1, y1), stage µm."""
        for box, value in zip(self.region_boxes, region_um, strict=True):
            box.setValue(float(value) / 1000.0)

    def acquisition_settings(self, core: CordScopeCore) -> dict[str, Any]:
        """Keyword arguments of :func:`acquisition.overview.acquire_overview` for these settings."""
        return {
            "region_um": self.region_um(),
            "objective_group": objective_group(core),
            "objective": self.objective_combo.currentText(),
            "channel_group": channel_group(core),
            "channel": self.channel_combo.currentText(),
            "exposure_ms": float(self.exposure_box.value()),
        }

    def show_busy(self) -> None:
        """A busy bar until the first tile is reported."""
        self.progress.setRange(0, 0)
        self.progress.setValue(0)

    def show_progress(self, done: int, total: int) -> None:
        """Tiles acquired of the overview's total."""
        self.progress.setTextVisible(True)
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    def show_idle(self) -> None:
        """Leave the busy bar (keeping the last count)."""
        self.progress.setRange(0, max(self.progress.maximum(), 1))

    def show_overview(self, overview: Overview | None) -> None:
        """Describe the overview shown (size, pixel size, objective, channel, extent)."""
        if overview is None:
            self.overview_info.setText("No overview")
            return
        x0, y0, x1, y1 = overview.bbox_um
        self.overview_info.setText(
            f"{overview.shape[1]} × {overview.shape[0]} px, {overview.pixel_size_um:.2f} µm/px, "
            f"{overview.objective} {overview.channel}; "
            f"x {x0 / 1000:.1f}–{x1 / 1000:.1f} mm, y {y0 / 1000:.1f}–{y1 / 1000:.1f} mm"
        )

    def set_states(self, *, can_acquire: bool, acquiring: bool, busy: bool, has_overview: bool) -> None:
        """Enable the buttons that can act now."""
        self.acquire_button.setEnabled(can_acquire)
        self.cancel_button.setEnabled(acquiring)
        self.load_button.setEnabled(not busy)
        self.save_button.setEnabled(not busy and has_overview)
