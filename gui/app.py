"""CordScope's main window: Microscope, Slide, Scan and Results tabs and a log.

``cordscope gui [--config CFG]`` (or ``make gui``) calls :func:`main`. The
window loads the hardware configuration off the Qt thread, hands the loaded
core to every tab (``core_changed``) and shows every message a tab sends in
the log panel and the status bar; errors also open a non-modal message box.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

from PyQt6.QtCore import QObject, Qt, QThread, pyqtSignal
from PyQt6.QtGui import QAction, QCloseEvent, QKeySequence
from PyQt6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QStatusBar,
    QTabWidget,
)

from acquisition.hardware import DEMO_CONFIG, CordScopeCore, build_core

from .hardware_panel import HardwarePanel
from .log_panel import WATCHED_LOGGERS, LogPanel
from .results_panel import ResultsPanel
from .scan_panel import ScanPanel
from .slide_panel import SlidePanel
from .workers import Job, run_in_thread

__all__ = ["MainWindow", "main"]

logger = logging.getLogger(__name__)

#: Seconds the window waits, when it closes, for the hardware to unload.
CLOSE_TIMEOUT_S = 10.0


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else "; ".join(lines[:3])


def _load_core(path: Path, trust_config: bool, gui_thread: QThread | None) -> CordScopeCore:
    """Build a core in a worker thread and give its Qt signal objects to the Qt thread."""
    core = build_core(path, trust_config=trust_config)
    if gui_thread is not None:
        # With a QApplication running, pymmcore-plus makes its event groups
        # QObjects, owned by the thread that built the core (this one, which is
        # about to end). Only the owning thread may hand them over.
        for signals in (core.events, core.mda.events):
            if isinstance(signals, QObject):
                signals.moveToThread(gui_thread)
    return core


class MainWindow(QMainWindow):
    """The CordScope window.

    Parameters
    ----------
    config : Path, optional
        Hardware configuration to load at start (default: the demo microscope).
    load_on_start : bool
        Start loading ``config`` at once (off the Qt thread).
    trust_config : bool
        Let configurations load Python device code outside ``acquisition.demo``.

    Signals
    -------
    core_changed(object)
        A newly loaded :class:`~acquisition.hardware.CordScopeCore` (or None).
    """

    core_changed = pyqtSignal(object)

    def __init__(
        self, config: Path | None = None, *, load_on_start: bool = True, trust_config: bool = False
    ) -> None:
        super().__init__()
        self.setWindowTitle("CordScope")
        self.core: CordScopeCore | None = None
        self.trust_config = trust_config
        self.config_path: Path | None = None
        self._load_job: Job | None = None
        self._error_box: QMessageBox | None = None
        self._closing_jobs: list[Job] = []

        self.hardware_panel = HardwarePanel()
        self.slide_panel = SlidePanel()
        self.scan_panel = ScanPanel()
        self.results_panel = ResultsPanel()
        self.log_panel = LogPanel()

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.hardware_panel, "Microscope")
        self.tabs.addTab(self.slide_panel, "Slide")
        self.tabs.addTab(self.scan_panel, "Scan")
        self.tabs.addTab(self.results_panel, "Results")
        self.setCentralWidget(self.tabs)

        self.log_dock = QDockWidget("Log", self)
        self.log_dock.setObjectName("log")
        self.log_dock.setWidget(self.log_panel)
        self.log_dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable | QDockWidget.DockWidgetFeature.DockWidgetClosable
        )
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.log_dock)
        self.resizeDocks([self.log_dock], [150], Qt.Orientation.Vertical)

        self._hardware_label = QLabel("no hardware")
        self._status().addPermanentWidget(self._hardware_label)
        self._build_menus()
        self._wire()

        if load_on_start:
            self.load_config(Path(config) if config is not None else DEMO_CONFIG)

    # ------------------------------------------------------------- building

    def _status(self) -> QStatusBar:
        bar = self.statusBar()
        assert bar is not None  # QMainWindow makes one on first use
        return bar

    def _build_menus(self) -> None:
        bar = self.menuBar()
        assert bar is not None
        menu = bar.addMenu("&File")
        assert menu is not None
        self.load_config_action = QAction("Load hardware config…", self)
        self.load_config_action.setShortcut(QKeySequence("Ctrl+L"))
        self.load_config_action.triggered.connect(self._ask_load_config)
        self.open_scan_action = QAction("Open scan file…", self)
        self.open_scan_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_scan_action.triggered.connect(self._ask_open_scan)
        quit_action = QAction("Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        menu.addAction(self.load_config_action)
        menu.addAction(self.open_scan_action)
        menu.addSeparator()
        menu.addAction(quit_action)
        view = bar.addMenu("&View")
        assert view is not None
        view.addAction(self.log_dock.toggleViewAction())

    def _wire(self) -> None:
        for user in (self.hardware_panel, self.slide_panel, self.scan_panel):
            self.core_changed.connect(user.set_core)
        for panel in (self.hardware_panel, self.slide_panel, self.scan_panel, self.results_panel):
            panel.message.connect(self.show_message)
        self.slide_panel.sections_changed.connect(self._send_sections)
        self.scan_panel.scan_finished.connect(self._on_scan_finished)
        self.hardware_panel.load_config_requested.connect(self._ask_load_config)

    def _send_sections(self) -> None:
        self.scan_panel.set_sections(self.slide_panel.sections())

    def _on_scan_finished(self, path: str) -> None:
        self.results_panel.open_scan(Path(path))
        self.tabs.setCurrentWidget(self.results_panel)

    # --------------------------------------------------------------- messages

    def show_message(self, level: str, text: str) -> None:
        """Show a message: log panel and status bar; an error also in a non-modal box.

        Parameters
        ----------
        level : str
            "info", "warning" or "error".
        text : str
            What happened, in one line if possible.
        """
        entry = self.log_panel.add(level, text)
        self._status().showMessage(text, 0 if entry.level == "error" else 10_000)
        if entry.level != "error":
            return
        box = self._error_box
        if box is None:
            box = QMessageBox(QMessageBox.Icon.Warning, "CordScope", "", QMessageBox.StandardButton.Ok, self)
            box.setWindowModality(Qt.WindowModality.NonModal)
            self._error_box = box
        if box.isVisible():
            # several errors in a row: one box, the latest few lines
            lines = [*box.text().split("\n"), text][-5:]
            box.setText("\n".join(lines))
        else:
            box.setText(text)
        box.show()

    @property
    def error_box(self) -> QMessageBox | None:
        """The non-modal box that shows errors (None before the first error)."""
        return self._error_box

    # -------------------------------------------------------------- hardware

    def is_loading(self) -> bool:
        """Whether a configuration is being loaded."""
        return self._load_job is not None

    def load_config(self, path: Path) -> None:
        """Load a hardware configuration off the Qt thread; emits ``core_changed`` when ready.

        A configuration that cannot be loaded is reported (log, status bar,
        message box) and the current core stays in use.
        """
        path = Path(path)
        if self._load_job is not None:
            self.show_message("warning", "a hardware configuration is already loading")
            return
        if self.core is not None and self.core.mda.is_running():
            self.show_message("warning", "a scan is running: load another configuration after it")
            return
        self.show_message("info", f"loading hardware config {path}")
        self.hardware_panel.set_busy(True, f"Loading {path.name}…")
        self.load_config_action.setEnabled(False)
        trust = self.trust_config
        gui_thread = self.thread()
        self._load_job = run_in_thread(
            lambda: _load_core(path, trust, gui_thread),
            on_done=lambda core: self._on_core_loaded(core, path),
            on_error=lambda e: self._on_load_failed(e, path),
            name="load-config",
        )
        self._load_job.finished.connect(self._on_load_finished)

    def _on_core_loaded(self, core: CordScopeCore, path: Path) -> None:
        old = self.core
        self.core = core
        self.config_path = path
        self._hardware_label.setText(f"hardware: {path.name}")
        n_devices = len([d for d in core.getLoadedDevices() if d != "Core"])
        self.core_changed.emit(core)
        self.show_message("info", f"hardware loaded: {path.name} ({n_devices} devices)")
        if old is not None:
            self._close_core(old)

    def _on_load_failed(self, error: BaseException, path: Path) -> None:
        logger.debug("loading %s failed", path, exc_info=error)
        still = (
            f" (still using {self.config_path.name})" if self.core is not None and self.config_path else ""
        )
        self.show_message("error", f"cannot load hardware config {path}: {_first_line(error)}{still}")

    def _on_load_finished(self) -> None:
        self._load_job = None
        self.load_config_action.setEnabled(True)
        self.hardware_panel.set_busy(False)
        if self.core is None:
            self.hardware_panel.set_core(None)

    def _close_core(self, core: CordScopeCore) -> None:
        """Unload a core the panels no longer use, off the Qt thread."""
        # an overview on the old core was cancelled by set_core; let it end first
        pending = self.slide_panel.job

        def unload() -> None:
            if pending is not None:
                pending.wait(CLOSE_TIMEOUT_S)
            core.close()

        job = run_in_thread(
            unload,
            on_error=lambda e: self.show_message(
                "warning", f"unloading the previous hardware: {_first_line(e)}"
            ),
            name="unload-config",
        )
        self._closing_jobs.append(job)
        job.finished.connect(lambda: self._closing_jobs.remove(job))

    def shutdown(self) -> None:
        """Stop live view and unload the hardware (the window calls this when it closes)."""
        if not self.slide_panel.stop(CLOSE_TIMEOUT_S):
            logger.warning("the overview did not stop within %.0f s", CLOSE_TIMEOUT_S)
        core, self.core = self.core, None
        if self._load_job is not None:
            # a core still loading is closed when it arrives
            self._load_job.done.connect(lambda c: c.close())
        if core is not None:
            self.core_changed.emit(None)
            try:
                if core.isSequenceRunning():
                    core.stopSequenceAcquisition()
                if core.mda.is_running():
                    core.mda.cancel()
            except Exception as e:
                logger.warning("stopping the hardware: %s", e)
            closer = run_in_thread(core.close, name="unload-config")
            if not closer.wait(CLOSE_TIMEOUT_S):
                logger.warning("the hardware did not unload within %.0f s", CLOSE_TIMEOUT_S)
        for job in list(self._closing_jobs):
            job.wait(CLOSE_TIMEOUT_S)
        self.log_panel.detach_logging()

    def closeEvent(self, event: QCloseEvent | None) -> None:  # noqa: D102
        self.shutdown()
        super().closeEvent(event)

    # --------------------------------------------------------------- dialogs

    def _ask_load_config(self) -> None:
        start = str(self.config_path.parent if self.config_path else DEMO_CONFIG.parent)
        path, _ = QFileDialog.getOpenFileName(
            self, "Load hardware configuration", start, "Micro-Manager config (*.cfg);;All files (*)"
        )
        if path:
            self.load_config(Path(path))

    def _ask_open_scan(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open scan file", "", "CordScope scan (*.h5);;All files (*)"
        )
        if path:
            self.results_panel.open_scan(Path(path))
            self.tabs.setCurrentWidget(self.results_panel)


def _install_excepthook(window: MainWindow) -> None:
    """Report an unexpected error in a slot in the window instead of aborting (PyQt6's default)."""

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        logger.error("unexpected error:\n%s", "".join(traceback.format_exception(kind, error, tb)))
        try:
            window.show_message("error", f"unexpected error: {type(error).__name__}: {_first_line(error)}")
        except RuntimeError:
            sys.__excepthook__(kind, error, tb)

    sys.excepthook = hook


def main(config: Path | None = None, *, trust_config: bool = False) -> int:
    """Open the CordScope window and run the Qt event loop until it closes.

    Parameters
    ----------
    config : Path, optional
        Hardware configuration (default: the demo microscope).
    trust_config : bool
        Let the configuration load Python device code outside ``acquisition.demo``.

    Returns
    -------
    int
        The event loop's exit code.
    """
    app: Any = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("CordScope")
    from .offline_icons import use_offline_icons

    use_offline_icons()
    for name in WATCHED_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    window = MainWindow(config, trust_config=trust_config)
    _install_excepthook(window)
    window.resize(1400, 900)
    window.show()
    return int(app.exec())
