"""Bad plans: every one refused by ``validate`` and by ``scan`` with exit code 2, one line, nothing moved.

Each case edits a working plan (a small square of the demo slide, a 128²
camera) as a user could: a value, a missing or unknown field, broken YAML,
a path that cannot be used, an outline off the stage. The same file is
given to ``cordscope validate`` and to ``cordscope scan``; both must refuse
it before anything moves or is written, naming the problem in one line.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from acquisition.storage import ScanWriter
from tests.reliability.helpers import assert_refused, fault_config, run_cli, write_plan

Edit = Callable[[dict[str, Any], Path], Any]


@dataclass(frozen=True)
class PlanCase:
    """A plan made bad by ``edit`` (the YAML data, or the text if it returns a str); what the error names."""

    id: str
    edit: Edit
    needles: tuple[str, ...]
    text: bool = False


def _set(path: str, value: Any) -> Edit:
    """Set ``a.b[0].c`` to ``value`` in the plan's data."""

    def edit(data: dict[str, Any], _folder: Path) -> None:
        parts: list[str | int] = []
        for token in path.replace("]", "").replace("[", ".").split("."):
            parts.append(int(token) if token.isdigit() else token)
        node: Any = data
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value

    return edit


def _drop(path: str) -> Edit:
    def edit(data: dict[str, Any], _folder: Path) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]

    return edit


def _text(replace: Callable[[str, Path], str]) -> Edit:
    return lambda text, folder: replace(text, folder)  # type: ignore[arg-type]


def _section(**fields: Any) -> Edit:
    def edit(data: dict[str, Any], _folder: Path) -> None:
        data["sections"][0].update(fields)

    return edit


def _second_section(**fields: Any) -> Edit:
    def edit(data: dict[str, Any], _folder: Path) -> None:
        extra = copy.deepcopy(data["sections"][0])
        extra.update(fields)
        data["sections"].append(extra)

    return edit


def _polygon(vertices: list[Any]) -> Edit:
    return _section(polygon_um=vertices)


def _shifted_polygon(dx: float, dy: float) -> Edit:
    def edit(data: dict[str, Any], _folder: Path) -> None:
        data["sections"][0]["polygon_um"] = [[x + dx, y + dy] for x, y in data["sections"][0]["polygon_um"]]

    return edit


def _both(*edits: Edit) -> Edit:
    def edit(data: dict[str, Any], folder: Path) -> None:
        for e in edits:
            e(data, folder)

    return edit


def _output(make: Callable[[Path], Path]) -> Edit:
    def edit(data: dict[str, Any], folder: Path) -> None:
        data["output"] = str(make(folder))

    return edit


def _config(make: Callable[[Path], Path]) -> Edit:
    def edit(data: dict[str, Any], folder: Path) -> None:
        data["hardware_config"] = str(make(folder))

    return edit


def _a_folder(folder: Path) -> Path:
    (folder / "a-folder.h5").mkdir()
    return folder / "a-folder.h5"


def _existing(folder: Path) -> Path:
    (folder / "old.h5").write_bytes(b"an earlier scan")
    return folder / "old.h5"


def _under_a_file(folder: Path) -> Path:
    (folder / "notes.txt").write_text("x")
    return folder / "notes.txt" / "scan.h5"


def _the_plan_itself(folder: Path) -> Path:
    return folder / "plan.yaml"


def _the_config(folder: Path) -> Path:
    return folder / "rig.cfg"


def _missing_config(folder: Path) -> Path:
    return folder / "no-such.cfg"


def _config_folder(folder: Path) -> Path:
    (folder / "cfgs").mkdir()
    return folder / "cfgs"


def _garbage_config(folder: Path) -> Path:
    (folder / "garbage.cfg").write_bytes(os.urandom(512))
    return folder / "garbage.cfg"


def _untrusted_config(folder: Path) -> Path:
    return fault_config(folder, name="evil.cfg").with_name("evil.cfg")


def _flat(make: Callable[[Path], Path]) -> Edit:
    def edit(data: dict[str, Any], folder: Path) -> None:
        data["analysis"]["flat_fields"] = {"tdTomato": str(make(folder))}

    return edit


def _tiny_flat(folder: Path) -> Path:
    import numpy as np

    np.save(folder / "flat.npy", np.ones((16, 16), dtype=np.float32) * 1000)
    return folder / "flat.npy"


BOMB = "\n".join(
    ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    + ["name: *a8"]
)

CASES = [
    # ---- fields and values
    PlanCase("name-empty", _set("name", ""), ("name",)),
    PlanCase("name-missing", _drop("name"), ("name", "required")),
    PlanCase("name-a-list", _set("name", ["a", "b"]), ("name", "text")),
    PlanCase("output-missing", _drop("output"), ("output", "required")),
    PlanCase("format-other", _set("format", "other-plan"), ("format",)),
    PlanCase("version-2", _set("version", 2), ("version",)),
    PlanCase("unknown-top-key", _set("colour", "red"), ("unknown field 'colour'",)),
    PlanCase("objective-unknown", _set("objective", "60x"), ("unknown objective '60x'",)),
    PlanCase("objective-group-unknown", _set("objective_group", "Turret"), ("'Turret'", "no such config")),
    PlanCase("channel-group-unknown", _set("channel_group", "Filters"), ("'Filters'", "no such config")),
    PlanCase("channel-preset-unknown", _set("channels[1].preset", "GFP"), ("unknown channel preset 'GFP'",)),
    PlanCase("channels-one", lambda d, f: d.update(channels=d["channels"][:1]), ("channels", "at least 2")),
    PlanCase("channels-a-mapping", _set("channels", {"DAPI": 20}), ("channels", "list")),
    PlanCase(
        "two-tracers",
        lambda d, f: d["channels"].append({"preset": "GFP", "exposure_ms": 10.0, "role": "tracer"}),
        ("a second 'tracer'",),
    ),
    PlanCase("no-anatomy", _set("channels[0].role", "other"), ("role 'anatomy'",)),
    PlanCase("role-unknown", _set("channels[1].role", "signal"), ("channels[1].role",)),
    PlanCase("duplicate-preset", _set("channels[1].preset", "DAPI"), ("duplicate channel preset 'DAPI'",)),
    PlanCase("exposure-zero", _set("channels[1].exposure_ms", 0), ("channels[1].exposure_ms", "> 0")),
    PlanCase("exposure-negative", _set("channels[0].exposure_ms", -5), ("channels[0].exposure_ms", "-5")),
    PlanCase("exposure-nan", _set("channels[1].exposure_ms", float("nan")), ("exposure_ms", "finite")),
    PlanCase("exposure-inf", _set("channels[1].exposure_ms", float("inf")), ("exposure_ms", "finite")),
    PlanCase("exposure-text", _set("channels[1].exposure_ms", "fast"), ("exposure_ms", "number")),
    PlanCase("channel-unknown-key", _set("channels[0].gain", 2), ("unknown field 'gain'",)),
    PlanCase("overlap-too-big", _set("overlap_pct", 60), ("overlap_pct", "<= 50")),
    PlanCase("overlap-negative", _set("overlap_pct", -1), ("overlap_pct", ">= 0")),
    PlanCase("focus-strategy-unknown", _set("focus.strategy", "auto"), ("focus.strategy",)),
    PlanCase("focus-a-string", _set("focus", "auto"), ("focus", "mapping")),
    PlanCase("focus-points-zero", _set("focus.points_per_section", 0), ("points_per_section", ">= 1")),
    PlanCase("focus-points-101", _set("focus.points_per_section", 101), ("points_per_section", "<= 100")),
    PlanCase("focus-coarse-step", _set("focus.coarse_step_um", 100), ("coarse_step_um", "coarse_range_um")),
    PlanCase("focus-fine-step-zero", _set("focus.fine_step_um", 0), ("fine_step_um", "> 0")),
    PlanCase("focus-z-far", _set("focus.z_um", 50_000), ("focus.z_um", "outside the focus travel")),
    PlanCase(
        "focus-map-z-far",
        lambda d, f: d.update(focus={**d["focus"], "strategy": "focus_map", "z_um": -50_000}),
        ("focus.z_um", "travel"),
    ),
    PlanCase("focus-z-nan", _set("focus.z_um", float("nan")), ("focus.z_um", "finite")),
    PlanCase(
        "z-stack-beyond-travel",
        lambda d, f: d.update(focus={**d["focus"], "z_um": 1998}, z_stack={"range_um": 10, "step_um": 2}),
        ("focus.z_um", "z-stack", "travel"),
    ),
    PlanCase("z-stack-range-zero", _set("z_stack", {"range_um": 0, "step_um": 1}), ("z_stack.range_um",)),
    PlanCase("z-stack-step-too-big", _set("z_stack", {"range_um": 4, "step_um": 6}), ("z_stack.step_um",)),
    PlanCase("retries-11", _set("reliability.max_retries", 11), ("max_retries", "<= 10")),
    PlanCase("retries-negative", _set("reliability.max_retries", -1), ("max_retries", ">= 0")),
    PlanCase("timeout-zero", _set("reliability.tile_timeout_s", 0), ("tile_timeout_s", "> 0")),
    PlanCase("timeout-huge", _set("reliability.tile_timeout_s", 1e9), ("tile_timeout_s", "<= 3600")),
    PlanCase("fsync-unknown", _set("reliability.fsync", "always"), ("reliability.fsync",)),
    # ---- sections
    PlanCase("sections-empty", _set("sections", []), ("sections", "at least 1")),
    PlanCase("section-id-space", _section(id="rat 01"), ("sections[0].id", "letters, digits")),
    PlanCase("section-id-slash", _section(id="rat01/Th7"), ("sections[0].id",)),
    PlanCase("section-id-long", _section(id="s" * 65), ("sections[0].id",)),
    PlanCase("section-id-duplicate", _second_section(), ("duplicate section id",)),
    PlanCase("section-unknown-key", _section(stain="DAPI"), ("unknown field 'stain'",)),
    PlanCase("polygon-two-vertices", _polygon([[30000, 5000], [30100, 5000]]), ("polygon_um", "at least 3")),
    PlanCase(
        "polygon-bowtie",
        _polygon([[30000, 5000], [30400, 5400], [30400, 5000], [30000, 5400]]),
        ("polygon_um", "not a valid polygon"),
    ),
    PlanCase(
        "polygon-flat",
        _polygon([[30000, 5000], [30100, 5000], [30200, 5000]]),
        ("polygon_um", "valid polygon"),
    ),
    PlanCase(
        "polygon-three-numbers",
        _polygon([[30000, 5000, 1], [30400, 5000], [30400, 5400]]),
        ("polygon_um[0]", "a position is [x, y]"),
    ),
    PlanCase(
        "polygon-text", _polygon([["a", 5000], [30400, 5000], [30400, 5400]]), ("polygon_um[0]", "number")
    ),
    PlanCase("polygon-off-stage", _shifted_polygon(80_000, 0), ("outside the stage travel",)),
    PlanCase("polygon-negative", _shifted_polygon(-40_000, -20_000), ("outside the stage travel",)),
    PlanCase("orientation-unknown", _section(orientation="sagittal"), ("orientation",)),
    PlanCase("injection-side-both", _section(injection_side="both"), ("injection_side",)),
    PlanCase(
        "epicenter-on-coronal", _section(lesion_epicenter_um=[30000, 5000]), ("only allowed for horizontal",)
    ),
    PlanCase(
        "rostral-nan", _section(rostral_direction_deg=float("nan")), ("rostral_direction_deg", "finite")
    ),
    PlanCase("animal-a-list", _section(animal=["rat01"]), ("animal", "text")),
    PlanCase(
        "region-polygon-bad",
        _section(region_polygons_um={"gray_matter": [[1, 1], [2, 2]]}),
        ("region_polygons_um.gray_matter", "at least 3"),
    ),
    PlanCase(
        "section-beyond-memory",
        # 20 x 20 mm on an analysis grid of the camera's pixels: ~140 GB of grids, ~4 GB of tiles
        _both(
            _polygon([[20_000, 2_000], [40_000, 2_000], [40_000, 22_000], [20_000, 22_000]]),
            _set("analysis.mosaic_pixel_um", 0.5),
        ),
        ("memory",),
    ),
    # ---- analysis settings
    PlanCase(
        "analysis-unknown-key", _set("analysis.threshold", 5), ("analysis", "unknown field 'threshold'")
    ),
    PlanCase("analysis-bin-zero", _set("analysis.heatmap_bin_um", 0), ("heatmap_bin_um", "> 0")),
    PlanCase("analysis-bin-inf", _set("analysis.heatmap_bin_um", float("inf")), ("heatmap_bin_um", "finite")),
    PlanCase("analysis-dark-1e12", _set("analysis.dark_offset_adu", 1e12), ("dark_offset_adu", "< 65536")),
    PlanCase("analysis-edge-one", _set("analysis.edge_fraction", 1.0), ("edge_fraction", "< 1")),
    PlanCase("analysis-method-otsu", _set("analysis.threshold_method", "otsu"), ("threshold_method",)),
    PlanCase("analysis-mosaic-nan", _set("analysis.mosaic_pixel_um", float("nan")), ("mosaic_pixel_um",)),
    PlanCase("flat-field-missing", _flat(lambda f: f / "no-such-flat.tif"), ("flat",)),
    PlanCase("flat-field-wrong-size", _flat(_tiny_flat), ("flat", "16")),
    # ---- paths
    PlanCase("output-a-folder", _output(_a_folder), ("output", "is a folder")),
    PlanCase("output-exists", _output(_existing), ("output", "already exists")),
    PlanCase("output-under-a-file", _output(_under_a_file), ("output", "is a file")),
    PlanCase("output-is-the-plan", _output(_the_plan_itself), ("plan",)),
    PlanCase("output-is-the-config", _output(_the_config), ("config",)),
    PlanCase("config-missing", _config(_missing_config), ("no-such.cfg", "not found")),
    PlanCase("config-a-folder", _config(_config_folder), ("cfgs", "not found")),
    PlanCase("config-garbage", _config(_garbage_config), ("garbage.cfg", "not a text file")),
    # ---- broken YAML
    PlanCase(
        "yaml-unclosed",
        _text(lambda t, f: t.replace("overlap_pct: 10.0", "overlap_pct: [10.0")),
        ("invalid YAML",),
        text=True,
    ),
    PlanCase("yaml-tab", _text(lambda t, f: t.replace("  strategy:", "\tstrategy:")), ("YAML",), text=True),
    PlanCase(
        "yaml-duplicate-key",
        _text(lambda t, f: t.replace("name: demo-slide", "name: demo-slide\nname: again")),
        ("duplicate key 'name'",),
        text=True,
    ),
    PlanCase("yaml-alias-bomb", _text(lambda t, f: BOMB), ("alias",), text=True),
    PlanCase("yaml-recursive-alias", _text(lambda t, f: "a: &a [*a]\n" + t), ("alias",), text=True),
    PlanCase("yaml-empty", _text(lambda t, f: ""), ("empty document",), text=True),
    PlanCase(
        "yaml-a-list", _text(lambda t, f: "- name: x\n- output: y\n"), ("must be a mapping",), text=True
    ),
    PlanCase("yaml-a-number", _text(lambda t, f: "42\n"), ("must be a mapping",), text=True),
    PlanCase("yaml-python-tag", _text(lambda t, f: "!!python/object:os.system {}\n"), ("YAML",), text=True),
]


@pytest.fixture(scope="module")
def plan_text(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The working plan's YAML (naming its folder's config and scan file) and that folder."""
    folder = tmp_path_factory.mktemp("base")
    return write_plan(folder).read_text(), folder


def _bad_plan(case: PlanCase, plan_text: tuple[str, Path], folder: Path) -> Path:
    text, base = plan_text
    fault_config(folder)
    text = text.replace(str(base), str(folder))
    if case.text:
        text = case.edit(text, folder)  # type: ignore[arg-type]
    else:
        data = yaml.safe_load(text)
        case.edit(data, folder)
        text = yaml.safe_dump(data, sort_keys=False)
    plan = folder / "plan.yaml"
    plan.write_text(text)
    return plan


@pytest.mark.parametrize("command", ["validate", "scan"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_plan_is_refused_before_anything_moves(
    case: PlanCase, command: str, plan_text: tuple[str, Path], tmp_path: Path, monkeypatch
) -> None:
    plan = _bad_plan(case, plan_text, tmp_path)
    run = run_cli([command, plan], monkeypatch, inputs=[tmp_path])
    assert_refused(run, *case.needles)
    assert not run.motion.snaps
    assert not (tmp_path / "scan.h5").exists()


def test_cases_are_distinct() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 85


@pytest.mark.parametrize("command", ["validate", "scan"])
def test_output_in_use_is_refused(tmp_path: Path, monkeypatch, command: str) -> None:
    plan = write_plan(tmp_path)
    scan = tmp_path / "scan.h5"
    with pytest.MonkeyPatch.context() as mp:
        assert run_cli(["scan", plan, "--no-analysis"], mp).exit_code == 0
    writer = ScanWriter.open_for_resume(scan)  # a scan holds it
    try:
        assert_refused(run_cli([command, plan, "--overwrite"], monkeypatch, inputs=[scan]), "in use")
    finally:
        writer.close()


@pytest.mark.parametrize("command", ["validate", "scan"])
def test_not_enough_disk_is_refused(tmp_path: Path, monkeypatch, command: str) -> None:
    import shutil
    from collections import namedtuple

    plan = write_plan(tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**9, 10**9, 10 * 2**20))
    assert_refused(run_cli([command, plan], monkeypatch, inputs=[tmp_path]), "not enough free disk")


def test_untrusted_config_is_refused_before_it_loads(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "rig.cfg"
    plan = write_plan(tmp_path)
    config.write_text(config.read_text() + "pyDevice,Evil,os.path,join\n")
    for command in ("validate", "scan"):
        assert_refused(run_cli([command, plan], monkeypatch, inputs=[tmp_path]), "os.path", "--trust-config")
