"""The log panel: every message the window shows, and CordScope's log records."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from html import escape

from PyQt6.QtCore import QObject, pyqtSignal, pyqtSlot
from PyQt6.QtWidgets import QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

__all__ = ["LEVELS", "LogEntry", "LogPanel"]

#: Message levels the window uses, with the colour each is shown in.
LEVELS: dict[str, str] = {"info": "#404040", "warning": "#a05a00", "error": "#c00000"}

#: Loggers whose records are copied into the panel (at INFO and above).
WATCHED_LOGGERS: tuple[str, ...] = ("acquisition", "analysis", "gui", "cordscope")

_MAX_BLOCKS = 5000


@dataclass(frozen=True)
class LogEntry:
    """One line of the log panel."""

    time_s: float
    level: str  # "info" | "warning" | "error"
    text: str


def _level_of(record: logging.LogRecord) -> str:
    if record.levelno >= logging.ERROR:
        return "error"
    if record.levelno >= logging.WARNING:
        return "warning"
    return "info"


#: The scan controller's warnings and errors reach the log through the scan panel's messages.
_RELAYED_LOGGER = "acquisition.controller"


class _RecordRelay(QObject):
    """Carries log records from any thread to the panel's thread."""

    record = pyqtSignal(str, str)


class _PanelHandler(logging.Handler):
    def __init__(self, relay: _RecordRelay) -> None:
        super().__init__(level=logging.INFO)
        self._relay = relay

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == _RELAYED_LOGGER and record.levelno >= logging.WARNING:
            return  # the scan panel shows these as messages (same text): listed once, not twice
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text = f"{text}: {record.exc_info[1]}"
            self._relay.record.emit(_level_of(record), text)
        except RuntimeError:
            pass  # the panel was deleted while a worker was still logging
        except Exception:
            self.handleError(record)


class LogPanel(QWidget):
    """A read-only, timestamped list of messages (info, warning, error).

    Messages come from :meth:`add` (the window's ``show_message``) and from
    the log records of CordScope's packages (``acquisition``, ``analysis``,
    ``gui``, ``cordscope``) at INFO and above, from any thread. Whether INFO
    records reach it depends on those loggers' levels (the GUI's ``main``
    sets them to INFO).
    """

    entry_added = pyqtSignal(object)  # LogEntry

    def __init__(self, parent: QWidget | None = None, *, watch_logs: bool = True) -> None:
        super().__init__(parent)
        self._entries: list[LogEntry] = []
        self._text = QPlainTextEdit()
        self._text.setReadOnly(True)
        self._text.setMaximumBlockCount(_MAX_BLOCKS)
        self._text.setPlaceholderText("Messages and log records appear here.")
        self._count = QLabel()
        clear = QPushButton("Clear")
        clear.clicked.connect(self.clear)
        bar = QHBoxLayout()
        bar.addWidget(self._count)
        bar.addStretch(1)
        bar.addWidget(clear)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self._text)
        layout.addLayout(bar)
        self._update_count()

        self._relay = _RecordRelay(self)
        self._relay.record.connect(self._on_record)
        self._handler: _PanelHandler | None = None
        if watch_logs:
            handler = _PanelHandler(self._relay)
            self._handler = handler
            for name in WATCHED_LOGGERS:
                logging.getLogger(name).addHandler(handler)
            # a closure without self: it runs after the Python wrapper may be gone
            self.destroyed.connect(lambda *_: _detach(handler))

    def add(self, level: str, text: str) -> LogEntry:
        """Append a message; ``level`` is "info", "warning" or "error"."""
        if level not in LEVELS:
            level = "info"
        entry = LogEntry(time.time(), level, text)
        self._entries.append(entry)
        del self._entries[:-_MAX_BLOCKS]
        stamp = time.strftime("%H:%M:%S", time.localtime(entry.time_s))
        lines = escape(text).replace("\n", "<br>&nbsp;&nbsp;")
        self._text.appendHtml(
            f'<span style="color:#808080">{stamp}</span> '
            f'<span style="color:{LEVELS[level]}"><b>{level.upper()}</b> {lines}</span>'
        )
        self._update_count()
        self.entry_added.emit(entry)
        return entry

    def entries(self, level: str | None = None) -> list[LogEntry]:
        """Messages shown so far (of one level, or all), oldest first."""
        return [e for e in self._entries if level is None or e.level == level]

    def clear(self) -> None:
        """Remove every message."""
        self._entries.clear()
        self._text.clear()
        self._update_count()

    def detach_logging(self) -> None:
        """Stop copying log records into the panel (the window calls this on close)."""
        if self._handler is not None:
            _detach(self._handler)
            self._handler = None

    @pyqtSlot(str, str)
    def _on_record(self, level: str, text: str) -> None:
        self.add(level, text)

    def _update_count(self) -> None:
        n_err = sum(e.level == "error" for e in self._entries)
        n_warn = sum(e.level == "warning" for e in self._entries)
        self._count.setText(f"{len(self._entries)} messages, {n_warn} warnings, {n_err} errors")


def _detach(handler: logging.Handler) -> None:
    for name in WATCHED_LOGGERS:
        logging.getLogger(name).removeHandler(handler)
