"""``make screenshots``: run the demo in the real window and save pictures of its main states.

Usage::

    python -m gui.screenshots docs/screenshots      # under a display, e.g. xvfb-run

The real :class:`~gui.app.MainWindow` is driven on the demo config the way
the README tells a person to: acquire the whole-slide overview, find the
sections, label them, keep three Th7 sections (one animal per group), scan
them with the scan tab's defaults, read the results and correct a region.
Four PNGs are written:

- ``1-slide.png``: the Slide tab with the overview, the found sections and their labels;
- ``2-scanning.png``: the Scan tab mid-scan, with the live mosaic, heatmap and region table;
- ``3-results.png``: the Results tab on the finished scan file;
- ``4-regions.png``: the region editor in the Results tab, the rubrospinal territory's medial
  boundary dragged 40 µm toward the cord's centre and re-analysed (its kind now ``edited``).

The overview is taken with the demo camera's default 2048 × 2048 pixels;
for the scan the camera is set to 512 × 512 pixels, so that the mosaic
visibly grows tile by tile in the mid-scan picture.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PyQt6.QtCore import QEventLoop
from PyQt6.QtWidgets import QApplication, QWidget

__all__ = ["SCAN_SECTIONS", "main"]

logger = logging.getLogger(__name__)

#: The sections scanned for the pictures: one animal per group at Th7.
SCAN_SECTIONS = ("rat01-Th7", "rat03-Th7", "rat05-Th7")
WINDOW_SIZE = (1500, 950)
SENSOR_PX = 512


class ScreenshotError(RuntimeError):
    """The demo did not reach a state to photograph."""


def _wait(
    app: QApplication,
    condition: Callable[[], bool],
    what: str,
    timeout_s: float = 600.0,
    state: Callable[[], str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            where = f" ({state()})" if state is not None else ""
            raise ScreenshotError(f"timed out after {timeout_s:.0f} s waiting for {what}{where}")
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)


def _settle(app: QApplication, seconds: float = 0.5) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)


def _save(app: QApplication, widget: QWidget, path: Path) -> None:
    _settle(app)
    if not widget.grab().save(str(path)):
        raise ScreenshotError(f"could not write {path}")
    print(f"wrote {path}", flush=True)


def _label_found_sections(window: object, app: QApplication) -> None:
    """Give the found sections the demo slide's names and labels (what a person types in the table)."""
    from acquisition.demo.plans import demo_plan
    from gui.slide_panel import COLUMNS

    col = {attr: i for i, (_, attr) in enumerate(COLUMNS)}
    slide = window.slide_panel  # type: ignore[attr-defined]
    truth = demo_plan(output=Path("unused.h5")).sections
    model = slide.model
    for row, found in enumerate(slide.sections()):
        xs = [x for x, _ in found["polygon_um"]]
        ys = [y for _, y in found["polygon_um"]]
        cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
        best = min(
            truth,
            key=lambda s: (
                (sum(x for x, _ in s.polygon_um) / len(s.polygon_um) - cx) ** 2
                + (sum(y for _, y in s.polygon_um) / len(s.polygon_um) - cy) ** 2
            ),
        )
        for attr in ("id", "animal", "group", "level", "orientation", "injection_side"):
            value = getattr(best, attr)
            if value is not None:
                model.setData(model.index(row, col[attr]), value)
    _settle(app, 0.3)


#: How far the screenshot moves the territory's medial boundary toward the cord's centre (µm).
TERRITORY_MOVE_UM = 40.0


def _drag_territory(app: QApplication, results: Any) -> None:
    """Select the rubrospinal territory, drag its medial vertices inward, re-analyse, select it again."""
    import numpy as np
    from PyQt6.QtCore import QPointF

    editor = results.display
    _wait(app, lambda: editor.editable is not None, "the section to be editable")
    table = editor.table
    table.selectRow(table.regions().index("rubrospinal_territory"))
    _settle(app, 0.3)
    editable = editor.editable
    section = editable.regions.masks["section"]
    rows, cols = np.nonzero(section)
    centre = editable.grid.origin_um + (np.array([cols.mean(), rows.mean()]) + 0.5) * editable.grid.cell_um
    (ring,) = editor.outline_items()
    points = np.array(ring.vertices_um())
    distance = np.hypot(*(points - centre).T)
    for handle, (x, y), d in zip(ring.handles, points, distance, strict=True):
        if d < np.median(distance):
            step = (centre - (x, y)) / d * TERRITORY_MOVE_UM
            handle.setPos(handle.pos() + QPointF(*step))
    ring.drag_finished()
    written: list[object] = []
    editor.regions_written.connect(written.append)
    editor.reanalyse_button.click()
    _wait(app, lambda: bool(written), "the re-analysis")
    table.selectRow(table.regions().index("rubrospinal_territory"))


def run(out_dir: Path, *, scan_dir: Path) -> list[Path]:
    """Drive the window through the demo and write the four pictures into ``out_dir``."""
    from acquisition.demo import find_demo_hub
    from gui.app import MainWindow
    from gui.offline_icons import use_offline_icons

    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    use_offline_icons()
    out_dir.mkdir(parents=True, exist_ok=True)
    window = MainWindow()
    window.resize(*WINDOW_SIZE)
    window.show()
    written: list[Path] = []
    try:
        _wait(app, lambda: window.core is not None and not window.is_loading(), "the demo config to load")
        core = window.core
        assert core is not None and find_demo_hub(core) is not None

        # 1. Slide: whole-slide overview, sections found and labelled
        slide = window.slide_panel
        window.tabs.setCurrentWidget(slide)
        slide.overview_box.acquire_button.click()
        _wait(app, lambda: slide.overview() is not None and not slide.busy(), "the overview")
        slide.find_button.click()
        _wait(app, lambda: bool(slide.sections()) and not slide.busy(), "the sections to be found")
        _label_found_sections(window, app)
        slide.fit_view()
        written.append(out_dir / "1-slide.png")
        _save(app, window, written[-1])

        # 2. Scan: keep three sections, scan with the defaults, photograph mid-scan. A small camera
        # gives many tiles (a mosaic that visibly grows); the overview is quicker with the large one.
        core.setProperty("Camera", "SensorWidth", SENSOR_PX)
        core.setProperty("Camera", "SensorHeight", SENSOR_PX)
        keep = [i for i, s in enumerate(slide.sections()) if s["id"] in SCAN_SECTIONS]
        slide.model.remove_rows([i for i in range(len(slide.sections())) if i not in keep])
        scan = window.scan_panel
        window.tabs.setCurrentWidget(scan)
        _wait(app, lambda: len(scan.sections()) == len(SCAN_SECTIONS), "the sections to reach the scan tab")
        scan.form.name_edit.setText("demo Th7")
        scan.form.output_edit.setText(str(scan_dir / "demo-Th7.h5"))
        _wait(app, scan.is_ready, "the plan to validate", timeout_s=60)
        scan.start_button.click()
        second = SCAN_SECTIONS[1]

        def acquired(section_id: str) -> int:
            c = scan.session
            p = None if c is None else c.progress().sections.get(section_id)
            return 0 if p is None else p.done

        def total(section_id: str) -> int:
            c = scan.session
            p = None if c is None else c.progress().sections.get(section_id)
            return 0 if p is None else p.total

        _wait(
            app,
            lambda: total(second) > 0 and acquired(second) >= 0.6 * total(second),
            f"{second} 60 % acquired",
        )
        # The live analysis runs behind acquisition (tile registration is the slow part). Pause so it
        # catches up, then resume and take the picture while the scan goes on.
        scan.pause_button.click()
        _wait(app, lambda: scan.state == "paused", "the pause")
        n_acquired = acquired(second)

        def caught_up() -> bool:
            picture = scan.live.picture
            return (
                picture is not None
                and picture.section_id == second
                and picture.n_tiles_analysed >= n_acquired
                and bool(picture.table)
            )

        _wait(
            app,
            caught_up,
            f"the live analysis of {second} to catch up",
            state=lambda: f"live {scan.live.caption.text()!r}, {n_acquired} tiles acquired",
        )
        scan.resume_button.click()
        _wait(app, lambda: scan.state == "scanning", "the scan to go on")
        written.append(out_dir / "2-scanning.png")
        _save(app, window, written[-1])

        # 3. Results: the finished file opens in the Results tab
        results = window.results_panel
        _wait(app, lambda: window.tabs.currentWidget() is results and results.scan is not None, "the results")
        _wait(app, lambda: results.display.picture is not None, "the first section's results")
        shown = list(results.section_ids())
        if second in shown:
            results.select_section(second)
            _wait(
                app,
                lambda: results.display.picture is not None and results.display.picture.section_id == second,
                f"{second} in the results",
            )
        written.append(out_dir / "3-results.png")
        _save(app, window, written[-1])

        # 4. Correcting a region: drag the territory's medial vertices, re-analyse
        _drag_territory(app, results)
        written.append(out_dir / "4-regions.png")
        _save(app, window, written[-1])
    finally:
        window.close()
        _settle(app, 0.5)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Write the screenshots into the folder given (default ``docs/screenshots``); return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    out_dir = Path(args[0]) if args else Path("docs/screenshots")
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="cordscope-screenshots-") as scans:
        try:
            run(out_dir, scan_dir=Path(scans))
        except ScreenshotError as e:
            print(f"screenshots: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
