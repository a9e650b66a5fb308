"""The "Microscope" tab: live view and snap, stage, channel, objective, exposure, properties.

Built from pymmcore-widgets on the core the window hands over (never
``CMMCorePlus.instance()``). A new core gets a new set of widgets: the old
ones are deleted first, so none of them talks to a core that is being
unloaded. :func:`gui.offline_icons.use_offline_icons` must have been called
before :meth:`HardwarePanel.set_core` (the window's ``main`` does).
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from pymmcore_plus import DeviceType
from PyQt6 import sip
from PyQt6.QtCore import Qt, QTimer, pyqtSignal, pyqtSlot
from PyQt6.QtWidgets import (
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from acquisition.hardware import CordScopeCore, describe_hardware, objective_group

from .workers import Job, run_in_thread

__all__ = ["HardwarePanel"]

logger = logging.getLogger(__name__)

#: How often the stage position is read while the panel is shown (ms). Stages
#: that report their moves (core position events) show them at once as well.
POSITION_POLL_MS = 300


@dataclass(frozen=True)
class _Positions:
    core: CordScopeCore
    xy_device: str
    xy_um: tuple[float, float] | None
    focus_device: str
    z_um: float | None


def _read_stage_positions(core: CordScopeCore) -> _Positions:
    xy_device, focus_device = core.getXYStageDevice(), core.getFocusDevice()
    xy = core.getXYPosition() if xy_device else None
    z = core.getPosition() if focus_device else None
    return _Positions(
        core,
        xy_device,
        (float(xy[0]), float(xy[1])) if xy is not None else None,
        focus_device,
        float(z) if z is not None else None,
    )


class HardwarePanel(QWidget):
    """Operate the microscope by hand: the "Microscope" tab of the main window.

    Signals
    -------
    message(str, str)
        ``(level, text)`` for the window's log and status bar.
    load_config_requested()
        The user pressed "Load config…"; the window asks for the file.
    """

    message = pyqtSignal(str, str)
    load_config_requested = pyqtSignal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.core: CordScopeCore | None = None
        #: pymmcore-widgets made for the current core, by role; empty without a core
        self.widgets: dict[str, QWidget] = {}
        self._body: QWidget | None = None
        self._poll_job: Job | None = None
        self._poll_failed = False
        self._poll_timer = QTimer(self)
        self._poll_timer.setInterval(POSITION_POLL_MS)
        self._poll_timer.timeout.connect(self._poll_positions)

        self._config_label = QLabel("No hardware loaded")
        self._config_label.setWordWrap(True)
        self._config_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._load_button = QPushButton("Load config…")
        self._load_button.setToolTip("Load a Micro-Manager hardware configuration (.cfg)")
        self._load_button.clicked.connect(self.load_config_requested)
        top = QHBoxLayout()
        top.addWidget(QLabel("<b>Hardware:</b>"))
        top.addWidget(self._config_label, 1)
        top.addWidget(self._load_button)

        self._layout = QVBoxLayout(self)
        self._layout.addLayout(top)
        self._placeholder = QLabel("Loading the hardware configuration…")
        self._placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._layout.addWidget(self._placeholder, 1)

    # ------------------------------------------------------------------ public

    def set_core(self, core: CordScopeCore | None) -> None:
        """Show controls for ``core`` (None: no hardware); replaces the previous widgets."""
        self._teardown()
        self.core = core
        if core is None:
            self._config_label.setText("No hardware loaded")
            self._placeholder.setText("No hardware loaded: use “Load config…”.")
            self._placeholder.show()
            return
        self._placeholder.hide()
        self._body = self._build(core)
        self._layout.addWidget(self._body, 1)
        self._poll_failed = False
        self._poll_timer.start()

    def set_busy(self, busy: bool, text: str = "") -> None:
        """Disable the controls while a configuration loads (``text`` says why)."""
        self._load_button.setEnabled(not busy)
        if self._body is not None:
            self._body.setEnabled(not busy)
        if busy and text:
            self._placeholder.setText(text)
            if self._body is None:
                self._placeholder.show()

    # ---------------------------------------------------------------- building

    def _teardown(self) -> None:
        self._poll_timer.stop()
        if self._poll_job is not None:
            # a position read in flight must end before its core may be unloaded
            self._poll_job.wait(2.0)
        if self.core is not None:
            for signal, slot in (
                (self.core.events.XYStagePositionChanged, self._on_xy_moved),
                (self.core.events.stagePositionChanged, self._on_stage_moved),
                (self.core.events.pixelSizeChanged, self._on_pixel_size),
            ):
                with suppress(TypeError, RuntimeError):
                    signal.disconnect(slot)
            with suppress(Exception):
                if self.core.isSequenceRunning():
                    self.core.stopSequenceAcquisition()
        if self._body is not None:
            self._layout.removeWidget(self._body)
            # delete now, not later: pymmcore-widgets disconnect from their core when
            # destroyed, and the core may be unloaded next (its unload emits events)
            sip.delete(self._body)
            self._body = None
        self.widgets = {}

    def _build(self, core: CordScopeCore) -> QWidget:
        from pymmcore_widgets import (
            ChannelWidget,
            DefaultCameraExposureWidget,
            ImagePreview,
            LiveButton,
            ObjectivesWidget,
            PresetsWidget,
            PropertyBrowser,
            SnapButton,
            StageWidget,
        )

        hw = describe_hardware(core)
        self._config_label.setText(hw.config_file or "(no file)")
        self._config_label.setToolTip(hw.config_file)
        w: dict[str, QWidget] = {}

        # -- acquisition controls
        w["snap"] = SnapButton(mmcore=core)
        w["live"] = LiveButton(mmcore=core)
        w["exposure"] = DefaultCameraExposureWidget(mmcore=core)
        acquire_box = QGroupBox("Camera")
        form = QFormLayout(acquire_box)
        buttons = QHBoxLayout()
        buttons.addWidget(w["snap"])
        buttons.addWidget(w["live"])
        form.addRow(buttons)
        form.addRow("Exposure", w["exposure"])
        if hw.channel_group:
            w["channel"] = ChannelWidget(mmcore=core)
            form.addRow("Channel", w["channel"])
        objectives = list(core.guessObjectiveDevices())
        if objectives:
            # name the device: with several candidates the widget would open a modal chooser
            w["objective"] = ObjectivesWidget(objectives[0], mmcore=core)
            form.addRow(w["objective"])  # it has its own "Objectives:" label
        elif group := objective_group(core):
            w["objective"] = PresetsWidget(group, mmcore=core)
            form.addRow("Objective", w["objective"])
        self._image_info = QLabel()
        form.addRow("Image", self._image_info)
        self._update_image_info()

        # -- stages
        stage_box = QGroupBox("Stage")
        stage_layout = QVBoxLayout(stage_box)
        self._position_label = QLabel()
        self._position_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        stage_layout.addWidget(self._position_label)
        stages = QGridLayout()
        stage_layout.addLayout(stages)
        xy = core.getXYStageDevice()
        if xy:
            xy_widget = StageWidget(xy, levels=2, mmcore=core)
            xy_widget.setStep(500.0)  # µm; a 4x field of view is 3.3 mm, a 10x one 1.3 mm
            w["xy_stage"] = xy_widget
            stages.addWidget(QLabel(f"XY stage ({xy})"), 0, 0, Qt.AlignmentFlag.AlignHCenter)
            stages.addWidget(w["xy_stage"], 1, 0)
        focus = core.getFocusDevice()
        if focus and core.getDeviceType(focus) == DeviceType.Stage:
            focus_widget = StageWidget(focus, levels=1, mmcore=core)
            focus_widget.setStep(1.0)
            w["focus"] = focus_widget
            stages.addWidget(QLabel(f"Focus ({focus})"), 0, 1, Qt.AlignmentFlag.AlignHCenter)
            stages.addWidget(w["focus"], 1, 1)
        self._xy_um: tuple[float, float] | None = None
        self._z_um: float | None = None
        self._read_positions(core)

        controls = QWidget()
        controls_layout = QVBoxLayout(controls)
        controls_layout.setContentsMargins(0, 0, 0, 0)
        controls_layout.addWidget(acquire_box)
        controls_layout.addWidget(stage_box)
        controls_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(controls)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(controls.sizeHint().width() + 24)
        scroll.setMaximumWidth(controls.sizeHint().width() + 60)
        scroll.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)

        # -- image and properties
        w["preview"] = ImagePreview(mmcore=core, use_with_mda=True)
        w["properties"] = PropertyBrowser(mmcore=core)
        tabs = QTabWidget()
        tabs.addTab(w["preview"], "Image")
        tabs.addTab(w["properties"], "Device properties")
        self.tabs = tabs

        body = QWidget()
        layout = QHBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)
        layout.addWidget(tabs, 1)

        core.events.XYStagePositionChanged.connect(self._on_xy_moved)
        core.events.stagePositionChanged.connect(self._on_stage_moved)
        core.events.pixelSizeChanged.connect(self._on_pixel_size)
        self.widgets = w
        return body

    # ------------------------------------------------------------- positions

    def _read_positions(self, core: CordScopeCore) -> None:
        try:
            if core.getXYStageDevice():
                x, y = core.getXYPosition()
                self._xy_um = (float(x), float(y))
            if core.getFocusDevice():
                self._z_um = float(core.getPosition())
        except RuntimeError as e:
            self.message.emit("warning", f"cannot read the stage position: {e}")
        self._show_position()

    def _show_position(self) -> None:
        parts = []
        if self._xy_um is not None:
            parts.append(f"X {self._xy_um[0]:,.1f} µm   Y {self._xy_um[1]:,.1f} µm")
        if self._z_um is not None:
            parts.append(f"Z {self._z_um:,.2f} µm")
        self._position_label.setText("   ".join(parts) or "no stage")

    def _poll_positions(self) -> None:
        """Read the stage positions off the Qt thread (one read at a time, only while shown)."""
        core = self.core
        if core is None or self._poll_job is not None or not self.isVisible():
            return
        job = run_in_thread(
            lambda: _read_stage_positions(core),
            on_done=self._on_positions_read,
            on_error=self._on_poll_failed,
            name="stage-position",
        )
        job.finished.connect(self._on_poll_finished)
        self._poll_job = job

    def _on_poll_finished(self) -> None:
        self._poll_job = None

    def _on_positions_read(self, pos: _Positions) -> None:
        if pos.core is not self.core:
            return
        self._poll_failed = False
        if pos.xy_um is not None:
            self._on_xy_moved(pos.xy_device, *pos.xy_um)
        if pos.z_um is not None:
            self._on_stage_moved(pos.focus_device, pos.z_um)

    def _on_poll_failed(self, error: BaseException) -> None:
        if not self._poll_failed:  # once, not every 300 ms
            self._poll_failed = True
            self.message.emit("warning", f"cannot read the stage position: {error}")

    def position_text(self) -> str:
        """The stage position as shown (e.g. ``"X 37,500.0 µm   Y 12,500.0 µm   Z 0.00 µm"``)."""
        return self._position_label.text() if self.core is not None else ""

    @pyqtSlot(str, float, float)
    def _on_xy_moved(self, device: str, x: float, y: float) -> None:
        # the position comes with the event: no device call on the Qt thread
        self._xy_um = (float(x), float(y))
        self._show_position()
        _show_in_stage_widget(self.widgets.get("xy_stage"), device, (x, y))

    @pyqtSlot(str, float)
    def _on_stage_moved(self, device: str, z: float) -> None:
        if self.core is not None and device == self.core.getFocusDevice():
            self._z_um = float(z)
            self._show_position()
        _show_in_stage_widget(self.widgets.get("focus"), device, (z,))

    @pyqtSlot(float)
    def _on_pixel_size(self, _pixel_size_um: float) -> None:
        self._update_image_info()

    def _update_image_info(self) -> None:
        core = self.core
        if core is None:
            return
        p = core.getPixelSizeUm()
        w, h = core.getImageWidth(), core.getImageHeight()
        fov = f", field {w * p / 1000:.2f} × {h * p / 1000:.2f} mm" if p else ""
        self._image_info.setText(f"{w} × {h} px, {p:g} µm/px{fov}")


def _show_in_stage_widget(widget: Any, device: str, values: tuple[float, ...]) -> None:
    """Show a position in a pymmcore-widgets StageWidget without asking the device.

    StageWidget 0.12 refreshes its position boxes only after its own moves or
    when polling; moves made by a scan or a script arrive as core events.
    """
    if widget is None or getattr(widget, "_device", None) != device:
        return
    boxes = getattr(widget, "_pos_boxes", [])
    if len(boxes) != len(values):
        return
    for box, value in zip(boxes, values, strict=True):
        if not box.hasFocus():  # never overwrite what the user is typing
            box.setValue(float(value))
