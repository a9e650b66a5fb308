"""Run a callable off the Qt thread and get its result back on the Qt thread.

The GUI never waits on hardware or disk (DESIGN.md, Threads). A
:class:`Job` runs one callable in a daemon thread and delivers its outcome
as Qt signals that are emitted on the thread the job was created on (the
Qt thread), so slots may touch widgets::

    job = run_in_thread(lambda: build_core(path), on_done=self._use_core, on_error=self._report)

Work that reports progress or can be cancelled uses the job itself, which
is made before the thread starts::

    job = Job()
    job.progress.connect(bar.update)            # (done, total), on the Qt thread
    job.start(lambda: acquire_overview(core, progress=job.report_progress, should_stop=job.is_cancelled))
    cancel_button.clicked.connect(job.cancel)

A running job is referenced by this module until it has delivered its
outcome, so callers need not keep it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from PyQt6.QtCore import QObject, pyqtSignal, pyqtSlot

__all__ = ["Job", "run_in_thread"]

logger = logging.getLogger(__name__)

_RUNNING: set[Job] = set()


class Job(QObject):
    """One callable run in a worker thread, its outcome signalled on the Qt thread.

    Signals (all emitted on the thread that created the job)
    ---------------------------------------------------------
    done(object)
        The callable's return value.
    failed(object)
        The exception it raised (``BaseException``).
    progress(int, int)
        ``(done, total)`` as passed to :meth:`report_progress`.
    finished()
        After ``done`` or ``failed``.
    """

    done = pyqtSignal(object)
    failed = pyqtSignal(object)
    progress = pyqtSignal(int, int)
    finished = pyqtSignal()

    # emitted from the worker thread; queued to this object's thread
    _result = pyqtSignal(object)
    _error = pyqtSignal(object)
    _progress = pyqtSignal(int, int)

    def __init__(self, name: str = "cordscope-job", parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._result.connect(self._deliver_result)
        self._error.connect(self._deliver_error)
        self._progress.connect(self.progress)

    def start(self, fn: Callable[[], Any]) -> Job:
        """Run ``fn()`` in a new daemon thread; return self."""
        if self._thread is not None:
            raise RuntimeError(f"job {self.name!r} was already started")
        _RUNNING.add(self)
        self._thread = threading.Thread(target=self._run, args=(fn,), name=self.name, daemon=True)
        self._thread.start()
        return self

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            result = fn()
        except BaseException as e:  # delivered to the Qt thread, never lost
            self._error.emit(e)
        else:
            self._result.emit(result)

    @pyqtSlot(object)
    def _deliver_result(self, result: object) -> None:
        try:
            self.done.emit(result)
        finally:
            self._finish()

    @pyqtSlot(object)
    def _deliver_error(self, error: object) -> None:
        logger.debug("job %s failed: %r", self.name, error)
        try:
            self.failed.emit(error)
        finally:
            self._finish()

    def _finish(self) -> None:
        self.finished.emit()
        _RUNNING.discard(self)

    def report_progress(self, done: int, total: int) -> None:
        """Report ``(done, total)``; may be called from any thread."""
        self._progress.emit(int(done), int(total))

    def cancel(self) -> None:
        """Ask the callable to stop; it must poll :meth:`is_cancelled`."""
        self._cancel.set()

    def is_cancelled(self) -> bool:
        """Whether :meth:`cancel` was called; thread-safe."""
        return self._cancel.is_set()

    def is_running(self) -> bool:
        """Whether the thread is still running (its outcome may not be delivered yet)."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the thread ends (tests and shutdown only); True if it did."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def run_in_thread(
    fn: Callable[[], Any],
    *,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    name: str = "cordscope-job",
) -> Job:
    """Run ``fn()`` off the Qt thread; call ``on_done(result)`` or ``on_error(exc)`` on the Qt thread.

    Parameters
    ----------
    fn : callable
        Work without arguments (use a lambda or ``functools.partial``).
    on_done, on_error : callable, optional
        Called on the thread that called ``run_in_thread`` (it must run a Qt
        event loop). An error without ``on_error`` is logged.
    name : str
        Thread name, for logs.

    Returns
    -------
    Job
        The running job (``finished`` is emitted after the callback).
    """
    job = Job(name)
    if on_done is not None:
        job.done.connect(on_done)
    if on_error is not None:
        job.failed.connect(on_error)
    else:
        job.failed.connect(lambda e: logger.error("%s failed: %s", name, e, exc_info=e))
    return job.start(fn)


def run_for_widget(
    widget: QObject,
    fn: Callable[[], Any],
    *,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    name: str = "cordscope-job",
) -> Job:
    """:func:`run_in_thread` for a widget's job: callbacks are dropped if the widget was deleted meanwhile.

    Without ``on_error`` a failure is logged with ``name``.
    """
    from PyQt6 import sip

    def guard(callback: Callable[[Any], None] | None) -> Callable[[Any], None] | None:
        if callback is None:
            return None

        def call(value: Any) -> None:
            if not sip.isdeleted(widget):
                callback(value)

        return call

    if on_error is None:

        def on_error(e: BaseException) -> None:
            logger.error("%s failed: %s", name, e, exc_info=e)

    return run_in_thread(fn, on_done=guard(on_done), on_error=guard(on_error), name=name)
