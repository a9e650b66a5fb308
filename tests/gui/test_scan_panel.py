"""The scan panel on the demo microscope: settings, validation, start / pause / resume / abort, live view."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acquisition.demo.plans import demo_plan
from acquisition.storage import ScanFile
from gui.scan_panel import ScanPanel
from tests.conftest import make_demo_core

SCAN_TIMEOUT_MS = 60_000
#: What the state line says about the live analysis while scanning.
LAG_PATTERN = (
    r"Analysis: (up to date \(\d+ of \d+ tiles stored\)"
    r"|\d+ tiles \(\d+\.\d s\) behind the camera \(\d+ of \d+ analysed\))"
)


def demo_sections(*ids: str) -> list[dict[str, Any]]:
    """Section dicts as the slide panel sends them (the demo slide's true outlines)."""
    plan = demo_plan(output=Path("unused.h5"), section_ids=ids)
    return [s.model_dump(mode="json") for s in plan.sections]


@pytest.fixture(scope="module")
def core() -> Iterator[Any]:
    c = make_demo_core(sensor_px=512)
    yield c
    c.close()


@pytest.fixture
def clean_core(core):
    """The shared core with every fault switched off again after the test."""
    yield core
    for device, prop in (("Camera", "FailEveryNthSnap"), ("XYStage", "FailEveryNthMove")):
        core.setProperty(device, prop, 0)


def make_panel(qtbot, core, tmp_path: Path, sections=("rat01-Th7",), name="scan.h5") -> ScanPanel:
    panel = ScanPanel()
    qtbot.addWidget(panel)
    panel.resize(1300, 850)
    panel.show()
    panel.set_core(core)
    panel.set_sections(demo_sections(*sections))
    panel.form.output_edit.setText(str(tmp_path / name))
    panel.form.focus_combo.setCurrentIndex(panel.form.focus_combo.findData("fixed"))
    panel.form.register_check.setChecked(False)  # the demo stage is exact; registration only costs time here
    qtbot.waitUntil(panel.is_ready, timeout=10_000)
    return panel


def collect_messages(panel: ScanPanel) -> list[tuple[str, str]]:
    messages: list[tuple[str, str]] = []
    panel.message.connect(lambda level, text: messages.append((level, text)))
    return messages


# ------------------------------------------------------------------ validation


def _shift_outside(panel: ScanPanel) -> None:
    far = demo_sections("rat01-Th7")
    far[0]["polygon_um"] = [(x + 200_000.0, y) for x, y in far[0]["polygon_um"]]
    panel.set_sections(far)


def _existing_output(panel: ScanPanel) -> None:
    path = Path(panel.form.output_edit.text())
    path.write_bytes(b"an earlier scan")
    panel.form.overwrite_check.setChecked(True)
    panel.form.overwrite_check.setChecked(False)  # an edit, so the form is checked again


BAD_SETTINGS: list[tuple[str, Callable[[ScanPanel], None], str, str]] = [
    (
        "exposure",
        lambda p: p.form.channel_row("tdTomato").exposure_ms.setValue(0.0),
        "tdTomato",
        "must be > 0",
    ),
    ("overlap", lambda p: p.form.overlap_spin.setValue(60.0), "overlap", "must be <= 50"),
    ("name", lambda p: p.form.name_edit.setText(""), "name", "must not be empty"),
    (
        "two-tracers",
        lambda p: p.form.channel_row("DAPI").role.setCurrentText("tracer"),
        "channels",
        "'anatomy'",
    ),
    ("no-sections", lambda p: p.set_sections([]), "sections", "no sections"),
    ("outside-stage", _shift_outside, "sections", "outside the stage travel"),
    ("output-exists", _existing_output, "output", "already exists"),
]


@pytest.mark.parametrize(
    ("change", "field", "text"), [c[1:] for c in BAD_SETTINGS], ids=[c[0] for c in BAD_SETTINGS]
)
def test_a_bad_setting_is_shown_next_to_its_field_and_start_refuses(
    qtbot, clean_core, tmp_path, change, field, text
):
    panel = make_panel(qtbot, clean_core, tmp_path)
    assert panel.start_button.isEnabled()
    change(panel)
    qtbot.waitUntil(lambda: text in panel.form.field_error(field), timeout=10_000)
    assert not panel.start_button.isEnabled()
    assert panel.start_scan() is False  # a click that slips through does not start either
    assert (
        panel.session is None and not Path(panel.form.output_edit.text()).with_suffix(".regions.csv").exists()
    )


def test_fixing_the_setting_clears_the_message(qtbot, clean_core, tmp_path):
    panel = make_panel(qtbot, clean_core, tmp_path)
    panel.form.channel_row("tdTomato").exposure_ms.setValue(0.0)
    qtbot.waitUntil(lambda: "must be > 0" in panel.form.field_error("tdTomato"), timeout=10_000)
    panel.form.channel_row("tdTomato").exposure_ms.setValue(40.0)
    qtbot.waitUntil(panel.is_ready, timeout=10_000)
    assert panel.form.field_error("tdTomato") == ""
    assert "60 tiles" in panel.form.summary_label.text()


# ------------------------------------------------------------------ scanning


@pytest.mark.slow
def test_start_scans_to_the_end_with_live_heatmap_and_region_table(qtbot, clean_core, tmp_path):
    # stage moves take time, as on a rig (the demo stage is instant by default): the scan lasts a
    # few seconds, so the analysis process (started with the scan) draws while it runs
    clean_core.setProperty("XYStage", "Speed_um_per_s", 2000.0)
    panel = make_panel(qtbot, clean_core, tmp_path)
    messages = collect_messages(panel)
    live_captions: list[tuple[str, str]] = []
    show = panel.live.show_picture

    def spy(picture):
        live_captions.append((panel.state, picture.caption))
        show(picture)

    panel.live.show_picture = spy  # type: ignore[method-assign]
    lag_texts: list[tuple[str, str]] = []
    panel.live_follow.tick.connect(lambda: lag_texts.append((panel.state, panel.analysis_label.text())))
    with qtbot.waitSignal(panel.scan_finished, timeout=SCAN_TIMEOUT_MS) as finished:
        qtbot.mouseClick(panel.start_button, qtbot_left())
    path = Path(finished.args[0])
    assert path == tmp_path / "scan.h5"
    assert panel.state == "finished"
    assert panel.section_progress() == {"rat01-Th7": ("60 / 60", "0")}
    assert panel.progress_bar.value() == panel.progress_bar.maximum() == 60
    # the live view was drawn while the scan ran, the mosaic growing
    assert any(state == "scanning" for state, _ in live_captions)
    # the state line said how far the analysis was behind the camera, on the live timer
    scanning = [text for state, text in lag_texts if state == "scanning"]
    assert scanning and all(re.fullmatch(LAG_PATTERN, text) for text in scanning), scanning
    assert panel.analysis_label.text() == "Analysis: all 60 tiles analysed and saved"
    # once saved, the live view shows the final analysis from the file, and its regions can be corrected
    qtbot.waitUntil(lambda: "final analysis saved in scan.h5" in live_captions[-1][1], timeout=10_000)
    qtbot.waitUntil(lambda: panel.live.editable is not None, timeout=10_000)
    assert panel.live.editable.section_id == "rat01-Th7"
    picture = panel.live.picture
    assert picture is not None and picture.heat_rgba is not None
    assert np.count_nonzero(picture.heat_rgba[..., 3]) > 100  # bins with tissue are coloured
    assert panel.live.color_bar.isVisible() and panel.live.color_bar.tick_labels()[0] == "0 %"
    regions = panel.live.table.regions()
    assert {"section", "gray_matter", "white_matter", "rubrospinal_territory"} <= set(regions)
    rst = float(panel.live.table.cell_text("rubrospinal_territory", "% axonal area"))
    whole = float(panel.live.table.cell_text("section", "% axonal area"))
    assert rst > whole > 0  # the tract's territory is where the labelled axons are
    # toggles hide the overlay and the outlines
    panel.live.heatmap_toggle.setChecked(False)
    assert not panel.live.view.heat_item.isVisible() and not panel.live.color_bar.isVisible()
    panel.live.outline_toggle.setChecked(False)
    assert panel.live.view.outline_items and not any(i.isVisible() for i in panel.live.view.outline_items)
    with ScanFile.open(path) as f:
        assert f.summary().complete
    assert path.with_name("scan.regions.csv").is_file()
    assert any("scan finished: 60 of 60 tiles" in t for _, t in messages)
    # the next scan gets a file name of its own
    assert Path(panel.form.output_edit.text()) == tmp_path / "scan-2.h5"


def qtbot_left() -> Any:
    from PyQt6.QtCore import Qt

    return Qt.MouseButton.LeftButton


@pytest.mark.slow
def test_pause_and_resume(qtbot, clean_core, tmp_path):
    panel = make_panel(qtbot, clean_core, tmp_path)
    states: list[str] = []
    panel.state_changed.connect(states.append)
    qtbot.mouseClick(panel.start_button, qtbot_left())
    qtbot.waitUntil(lambda: panel.pause_button.isEnabled(), timeout=SCAN_TIMEOUT_MS)
    qtbot.mouseClick(panel.pause_button, qtbot_left())
    qtbot.waitUntil(lambda: panel.state == "paused", timeout=10_000)
    assert panel.resume_button.isEnabled() and not panel.pause_button.isEnabled()
    assert panel.abort_button.isEnabled() and not panel.start_button.isEnabled()
    assert panel.state_label.text() == "Paused"
    with qtbot.waitSignal(panel.scan_finished, timeout=SCAN_TIMEOUT_MS):
        qtbot.mouseClick(panel.resume_button, qtbot_left())
    assert "paused" in states and states.index("paused") < len(states) - 1
    assert panel.state == "finished"
    assert panel.section_progress() == {"rat01-Th7": ("60 / 60", "0")}


@pytest.mark.slow
def test_abort_leaves_a_resumable_file_that_the_panel_resumes(qtbot, clean_core, tmp_path):
    panel = make_panel(qtbot, clean_core, tmp_path)
    qtbot.mouseClick(panel.start_button, qtbot_left())
    qtbot.waitUntil(lambda: panel.session is not None and panel.session.progress().tiles_done >= 5)
    with qtbot.waitSignal(panel.scan_finished, timeout=SCAN_TIMEOUT_MS) as stopped:
        qtbot.mouseClick(panel.abort_button, qtbot_left())
    path = Path(stopped.args[0])
    assert panel.state == "aborted"
    assert panel.resumable_path == path and panel.resume_last_button.isEnabled()
    with ScanFile.open(path) as f:
        summary = f.summary()
    assert 5 <= summary.done < summary.n_tiles == 60
    with qtbot.waitSignal(panel.scan_finished, timeout=SCAN_TIMEOUT_MS) as finished:
        qtbot.mouseClick(panel.resume_last_button, qtbot_left())
    assert Path(finished.args[0]) == path
    assert panel.state == "finished" and panel.resumable_path is None
    with ScanFile.open(path) as f:
        assert f.summary().complete
    assert panel.section_progress() == {"rat01-Th7": ("60 / 60", "0")}
    # the final analysis of the whole file, shown once the live view's last refresh is in
    qtbot.waitUntil(lambda: bool(panel.live.table.regions()), timeout=10_000)


@pytest.mark.slow
def test_a_device_fault_is_a_message_not_a_crash(qtbot, clean_core, tmp_path):
    # every 2nd stage move fails and no retry is allowed: tiles fail, are reported, the scan goes on
    clean_core.setProperty("XYStage", "FailEveryNthMove", 2)
    panel = make_panel(qtbot, clean_core, tmp_path)
    panel.form.retries_spin.setValue(0)
    qtbot.waitUntil(panel.is_ready, timeout=10_000)
    messages = collect_messages(panel)
    with qtbot.waitSignal(panel.scan_finished, timeout=SCAN_TIMEOUT_MS):
        qtbot.mouseClick(panel.start_button, qtbot_left())
    failed = [t for level, t in messages if level == "warning" and "failed after 0 retries" in t]
    assert len(failed) > 10 and all("XYStage" in t for t in failed)
    done, n_failed = panel.section_progress()["rat01-Th7"]
    assert int(n_failed) == len(failed) and done != "60 / 60"
    assert panel.state == "finished"
    assert any(level == "warning" and f"{len(failed)} failed" in t for level, t in messages)
    # the failed tiles can be acquired again once the stage behaves
    assert panel.resumable_path == tmp_path / "scan.h5" and panel.resume_last_button.isEnabled()


def test_resume_of_a_file_that_is_not_a_scan_is_an_error_message(qtbot, clean_core, tmp_path):
    panel = make_panel(qtbot, clean_core, tmp_path)
    messages = collect_messages(panel)
    bogus = tmp_path / "notes.h5"
    bogus.write_text("not HDF5")
    panel.resume_scan(bogus)
    qtbot.waitUntil(lambda: any(level == "error" for level, _ in messages), timeout=10_000)
    assert any("cannot resume notes.h5" in t for _, t in messages)
    assert panel.state == "idle" and panel.is_ready()


def test_save_plan_writes_the_form_as_yaml(qtbot, clean_core, tmp_path):
    from acquisition.plan import load_plan

    panel = make_panel(qtbot, clean_core, tmp_path)
    panel.form.channel_row("tdTomato").exposure_ms.setValue(35.0)
    qtbot.waitUntil(panel.is_ready, timeout=10_000)
    out = tmp_path / "plan.yaml"
    messages = collect_messages(panel)
    panel.save_plan(out)
    qtbot.waitUntil(lambda: ("info", f"plan saved: {out}") in messages, timeout=10_000)
    plan = load_plan(out)
    assert plan.tracer_channel.exposure_ms == 35.0 and [s.id for s in plan.sections] == ["rat01-Th7"]
    assert plan.focus.strategy == "fixed" and plan.analysis.register_tiles is False


@pytest.mark.parametrize(
    ("progress", "state", "text"),
    [
        (None, "scanning", ""),
        ((10, 10, 0, 0.0), "scanning", "Analysis: up to date (10 of 10 tiles stored)"),
        ((12, 9, 3, 1.26), "scanning", "Analysis: 3 tiles (1.3 s) behind the camera (9 of 12 analysed)"),
        ((12, 9, 3, 1.26), "paused", "Analysis: 3 tiles (1.3 s) behind the camera (9 of 12 analysed)"),
        ((12, 9, 3, 1.2), "finalizing", "Analysis: 3 of 12 tiles still to analyse"),
        ((12, 12, 0, 0.0), "finalizing", "Analysis: writing results"),
    ],
    ids=["no-analysis", "caught-up", "behind", "paused", "finalizing", "writing"],
)
def test_the_state_line_says_how_far_the_analysis_is_behind(progress, state, text) -> None:
    from analysis.live import AnalysisProgress
    from gui.scan_run import describe_analysis_progress

    given = None if progress is None else AnalysisProgress(*progress)
    assert describe_analysis_progress(given, state) == text


def test_the_second_pass_checkbox_puts_an_adaptive_pass_in_the_plan(qtbot, clean_core, tmp_path):
    panel = make_panel(qtbot, clean_core, tmp_path)
    form = panel.form
    qtbot.waitUntil(panel.is_ready, timeout=10_000)
    assert form.plan().adaptive is None and not form.adaptive_objective_combo.isEnabled()
    form.adaptive_check.setChecked(True)
    assert form.adaptive_objective_combo.isEnabled() and form.adaptive_objective_combo.currentText() == "20x"
    qtbot.waitUntil(panel.is_ready, timeout=10_000)
    plan = form.plan()
    assert plan.adaptive is not None and plan.adaptive.objective == "20x"
    assert plan.adaptive.region == "rubrospinal_territory"
    # a plan read back (e.g. to resume) fills the checkbox and keeps its other pass settings
    custom = plan.model_copy(
        update={"adaptive": plan.adaptive.model_copy(update={"objective": "4x", "min_pct_axonal_area": 2.0})}
    )
    form.adaptive_check.setChecked(False)
    form.set_plan(custom)
    assert form.adaptive_check.isChecked() and form.adaptive_objective_combo.currentText() == "4x"
    qtbot.waitUntil(panel.is_ready, timeout=10_000)
    again = form.plan()
    assert again.adaptive is not None and again.adaptive.min_pct_axonal_area == 2.0
