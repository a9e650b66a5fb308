"""Scan plans: YAML in and out, validation against the demo microscope, compiling to useq."""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import useq
import yaml
from shapely import Polygon

from acquisition.demo.devices import XY_TRAVEL_UM
from acquisition.demo.plans import demo_plan
from acquisition.errors import CordScopeError
from acquisition.hardware import CordScopeCore, build_core
from acquisition.plan import (
    AnalysisSettings,
    PlanError,
    PlannedTile,
    PlanSummary,
    ScanPlan,
    compile_plan,
    load_plan,
    pixel_size_for_objective,
    plan_from_dict,
    plan_from_yaml,
    plan_tiles,
    save_plan,
    section_tiles,
    sequence_for_tiles,
    tile_size_um,
    validate_plan,
)
from acquisition.storage import required_free_bytes

pytestmark = pytest.mark.filterwarnings("error")

SENSOR_PX = 512
PIXEL_UM = {"4x": 1.625, "10x": 0.65, "20x": 0.325}
TILE_10X_UM = SENSOR_PX * PIXEL_UM["10x"]  # 332.8


def plenty_of_disk(folder: Path) -> int:
    return 10**15


# ------------------------------------------------------------------ helpers


def ellipse(cx: float, cy: float, a: float, b: float, n: int = 48) -> list[list[float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [[round(cx + a * math.cos(v), 1), round(cy + b * math.sin(v), 1)] for v in t]


def band(cx: float, cy: float, length: float, width: float, angle_deg: float) -> list[list[float]]:
    """A long rectangle (a horizontal section) turned by ``angle_deg``."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    corners = [
        (-length / 2, -width / 2),
        (length / 2, -width / 2),
        (length / 2, width / 2),
        (-length / 2, width / 2),
    ]
    return [[round(cx + u * c - v * s, 1), round(cy + u * s + v * c, 1)] for u, v in corners]


def plan_data(output: Path | str = "scans/test.h5") -> dict[str, Any]:
    """A valid plan as plain data: an oval coronal and a diagonal horizontal section."""
    return {
        "name": "test-slide",
        "output": str(output),
        "channel_group": "Channel",
        "objective_group": "Objective",
        "channels": [
            {"preset": "DAPI", "exposure_ms": 20.0, "role": "anatomy"},
            {"preset": "tdTomato", "exposure_ms": 80.0, "role": "tracer"},
        ],
        "sections": [
            {
                "id": "cord-A",
                "polygon_um": ellipse(30_000, 10_000, 1_500, 1_200),
                "animal": "rat01",
                "group": "vehicle",
                "level": "C5",
                "orientation": "coronal",
                "injection_side": "left",
            },
            {
                "id": "cord-H",
                "polygon_um": band(50_000, 15_000, 8_000, 1_800, 25.0),
                "animal": "rat01",
                "group": "vehicle",
                "level": "lesion",
                "orientation": "horizontal",
                "injection_side": "left",
                "lesion_epicenter_um": [50_000.0, 15_000.0],
                "rostral_direction_deg": 205.0,
            },
        ],
    }


def make_plan(output: Path | str = "scans/test.h5", **changes: Any) -> ScanPlan:
    data = plan_data(output)
    data.update(changes)
    return plan_from_dict(data)


def full_plan(output: Path | str = "scans/full.h5") -> ScanPlan:
    """A plan with every field away from its default."""
    data = plan_data(output)
    data.update(
        name="full plan: every field",
        hardware_config="hardware_configs/demo.cfg",
        objective="20x",
        overlap_pct=12.5,
        focus={
            "strategy": "focus_map",
            "z_um": 12.5,
            "points_per_section": 7,
            "coarse_range_um": 80.0,
            "coarse_step_um": 4.0,
            "fine_range_um": 6.0,
            "fine_step_um": 0.5,
        },
        z_stack={"range_um": 6.0, "step_um": 2.0},
        reliability={"max_retries": 3, "tile_timeout_s": 12.0},
        analysis={"threshold_method": "fixed", "threshold_adu": 40.0, "heatmap_bin_um": 100.0},
    )
    data["channels"].append({"preset": "Cy5", "exposure_ms": 150.0, "role": "other"})
    data["sections"][0]["region_polygons_um"] = {
        "rst_right": [[30_200.0, 9_000.0], [30_900.0, 9_300.0], [30_500.0, 9_900.0]]
    }
    return plan_from_dict(data)


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def core() -> Iterator[CordScopeCore]:
    """One demo core for the module (512 × 512 sensor, 10x)."""
    c = build_core()
    c.setProperty("Camera", "SensorWidth", SENSOR_PX)
    c.setProperty("Camera", "SensorHeight", SENSOR_PX)
    yield c
    c.close()


@pytest.fixture
def output(tmp_path: Path) -> Path:
    return tmp_path / "scan.h5"


# ==================================================================== YAML


def test_yaml_round_trip_is_exact(tmp_path: Path) -> None:
    plan = full_plan(tmp_path / "full.h5")
    text = plan.to_yaml()
    again = plan_from_yaml(text)
    assert again == plan
    assert again.to_yaml() == text

    path = tmp_path / "plan.yaml"
    save_plan(plan, path)
    # relative paths of a plan file mean files beside it
    assert load_plan(path) == plan.model_copy(
        update={"hardware_config": tmp_path / "hardware_configs/demo.cfg"}
    )
    assert path.read_text(encoding="utf-8") == text


def test_yaml_is_readable() -> None:
    text = make_plan().to_yaml()
    keys = [m.group(1) for m in re.finditer(r"^(\w+):", text, re.MULTILINE)]
    assert keys[:3] == ["format", "version", "name"]
    assert keys.index("channels") < keys.index("sections")
    assert keys[-2:] == ["sections", "analysis"]
    # vertices and the epicenter as [x, y] on one line each, no Python tags
    assert "      - [31500.0, 10000.0]" in text
    assert "lesion_epicenter_um: [50000.0, 15000.0]" in text
    assert "!!" not in text
    data = yaml.safe_load(text)
    assert data["format"] == "cordscope-plan" and data["version"] == 1


def test_defaults_fill_a_minimal_plan() -> None:
    plan = plan_from_yaml(
        "name: minimal\noutput: out.h5\n"
        "channels:\n  - {preset: DAPI, role: anatomy}\n  - {preset: tdTomato, role: tracer}\n"
        "sections:\n  - id: s1\n    polygon_um: [[0, 0], [100, 0], [100, 100]]\n"
    )
    assert plan.objective == "10x" and plan.objective_group is None and plan.channel_group is None
    assert plan.overlap_pct == 10.0
    assert plan.hardware_config == Path("hardware_configs/demo.cfg")
    assert plan.focus.strategy == "fixed" and plan.focus.z_um is None
    assert plan.z_stack is None and plan.n_z_slices == 1
    assert plan.reliability.max_retries == 2 and plan.reliability.tile_timeout_s == 30.0
    assert plan.tracer_channel.preset == "tdTomato" and plan.anatomy_channel.preset == "DAPI"
    section = plan.section("s1")
    assert section.orientation == "coronal" and section.rostral_direction_deg == 180.0
    assert section.injection_side is None and section.region_polygons_um == {}
    assert plan.analysis == AnalysisSettings()


def test_numbers_as_names_are_read_as_text() -> None:
    data = plan_data()
    data["sections"][0].update(id=12, animal=7, level=5)
    section = plan_from_dict(data).sections[0]
    assert (section.id, section.animal, section.level) == ("12", "7", "5")


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = data
    for part in path[:-1]:
        target = target[part]
    if value is DELETE:
        del target[path[-1]]
    elif isinstance(target, list) and path[-1] == len(target):
        target.append(value)
    else:
        target[path[-1]] = value


DELETE = object()
BOWTIE = [[30_000, 10_000], [31_000, 11_000], [30_000, 11_000], [31_000, 10_000]]

# id, where, new value, field named, value named, key on the reported line (None: not checked)
BAD_PLANS = [
    (
        "exposure-negative",
        ("channels", 1, "exposure_ms"),
        -5,
        "channels[1].exposure_ms",
        "(got -5)",
        "exposure_ms",
    ),
    ("exposure-zero", ("channels", 0, "exposure_ms"), 0, "channels[0].exposure_ms", "(got 0)", "exposure_ms"),
    (
        "exposure-not-a-number",
        ("channels", 0, "exposure_ms"),
        "fast",
        "channels[0].exposure_ms",
        "'fast'",
        "exposure_ms",
    ),
    ("overlap-above-50", ("overlap_pct",), 60, "overlap_pct", "(got 60)", "overlap_pct"),
    ("overlap-negative", ("overlap_pct",), -1, "overlap_pct", "(got -1)", "overlap_pct"),
    ("unknown-role", ("channels", 1, "role"), "tracr", "channels[1].role", "'tracr'", "role"),
    ("second-tracer", ("channels", 0, "role"), "tracer", "channels[1].role", "'tracer'", "role"),
    ("duplicate-preset", ("channels", 1, "preset"), "DAPI", "channels[1].preset", "'DAPI'", "preset"),
    ("no-channels", ("channels",), [], "channels", "(got 0)", "channels"),
    ("duplicate-section-id", ("sections", 1, "id"), "cord-A", "sections[1].id", "'cord-A'", "id"),
    ("bad-section-id", ("sections", 0, "id"), "cord A/1", "sections[0].id", "'cord A/1'", "id"),
    ("no-sections", ("sections",), [], "sections", "(got 0)", "sections"),
    (
        "polygon-two-vertices",
        ("sections", 0, "polygon_um"),
        [[0, 0], [1, 1]],
        "sections[0].polygon_um",
        "(got 2)",
        "polygon_um",
    ),
    (
        "polygon-self-intersecting",
        ("sections", 0, "polygon_um"),
        BOWTIE,
        "sections[0].polygon_um",
        "self-intersection at (30500, 10500)",
        "polygon_um",
    ),
    (
        "vertex-not-a-pair",
        ("sections", 0, "polygon_um", 1),
        [1, 2, 3],
        "sections[0].polygon_um[1]",
        "[1, 2, 3]",
        None,
    ),
    (
        "orientation-sagittal",
        ("sections", 0, "orientation"),
        "sagittal",
        "sections[0].orientation",
        "'sagittal'",
        "orientation",
    ),
    (
        "injection-side-up",
        ("sections", 0, "injection_side"),
        "up",
        "sections[0].injection_side",
        "'up'",
        "injection_side",
    ),
    (
        "epicenter-on-coronal",
        ("sections", 0, "lesion_epicenter_um"),
        [30_000, 10_000],
        "sections[0].lesion_epicenter_um",
        "(30000, 10000)",
        "lesion_epicenter_um",
    ),
    (
        "epicenter-not-a-pair",
        ("sections", 1, "lesion_epicenter_um"),
        [1.0],
        "sections[1].lesion_epicenter_um[1]",
        "[x, y]",
        None,
    ),
    (
        "direction-infinite",
        ("sections", 1, "rostral_direction_deg"),
        math.inf,
        "sections[1].rostral_direction_deg",
        "(got inf)",
        "rostral",
    ),
    (
        "region-polygon-two-vertices",
        ("sections", 0, "region_polygons_um"),
        {"dorsal": [[0, 0], [1, 0]]},
        "sections[0].region_polygons_um.dorsal",
        "(got 2)",
        "dorsal",
    ),
    ("focus-strategy", ("focus",), {"strategy": "auto"}, "focus.strategy", "'auto'", "strategy"),
    (
        "coarse-step-over-range",
        ("focus",),
        {"coarse_range_um": 20, "coarse_step_um": 30},
        "focus.coarse_step_um",
        "(got 30)",
        "coarse_step_um",
    ),
    (
        "focus-points-zero",
        ("focus",),
        {"points_per_section": 0},
        "focus.points_per_section",
        "(got 0)",
        "points_per_section",
    ),
    ("z-step-zero", ("z_stack",), {"range_um": 10, "step_um": 0}, "z_stack.step_um", "(got 0)", "step_um"),
    (
        "z-step-over-range",
        ("z_stack",),
        {"range_um": 2, "step_um": 5},
        "z_stack.step_um",
        "(got 5)",
        "step_um",
    ),
    ("z-stack-not-a-mapping", ("z_stack",), 5, "z_stack", "(got 5)", "z_stack"),
    (
        "retries-negative",
        ("reliability",),
        {"max_retries": -1},
        "reliability.max_retries",
        "(got -1)",
        "max_retries",
    ),
    (
        "timeout-zero",
        ("reliability",),
        {"tile_timeout_s": 0},
        "reliability.tile_timeout_s",
        "(got 0)",
        "tile_timeout_s",
    ),
    ("unknown-field", ("colour",), "red", "colour", "'colour'", "colour"),
    (
        "unknown-section-field",
        ("sections", 1, "epicentre"),
        [1, 2],
        "sections[1].epicentre",
        "'epicentre'",
        "epicentre",
    ),
    ("missing-name", ("name",), DELETE, "name", "missing", None),
    ("empty-name", ("name",), "", "name", "(got '')", "name"),
    ("version-2", ("version",), 2, "version", "(got 2)", "version"),
    ("wrong-format", ("format",), "cordscope-scan", "format", "'cordscope-scan'", "format"),
]


@pytest.mark.parametrize(
    ("where", "value", "field", "value_named", "key_on_line"),
    [case[1:] for case in BAD_PLANS],
    ids=[case[0] for case in BAD_PLANS],
)
def test_bad_plan_names_line_field_and_value(
    where: tuple[Any, ...], value: Any, field: str, value_named: str, key_on_line: str | None
) -> None:
    data = plan_data()
    _set(data, where, value)
    text = yaml.safe_dump(data, sort_keys=False)
    with pytest.raises(PlanError) as info:
        plan_from_yaml(text, source="plan.yaml")
    message = str(info.value)
    assert "Traceback" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    for line in message.splitlines():  # one problem per line, each located
        assert re.match(r"^plan\.yaml:\d+: \S", line), line
    hits = re.findall(rf"^plan\.yaml:(\d+): {re.escape(field)}: (.*)$", message, re.MULTILINE)
    assert hits, f"no problem for {field!r} in:\n{message}"
    assert any(value_named in text_ for _, text_ in hits), message
    if key_on_line is not None:
        lines = text.splitlines()
        assert any(key_on_line in lines[int(n) - 1] for n, _ in hits), (message, text)


def test_every_problem_is_reported_at_once() -> None:
    data = plan_data()
    data["channels"][0]["exposure_ms"] = -1
    data["overlap_pct"] = 80
    data["sections"][1]["orientation"] = "sagittal"
    with pytest.raises(PlanError) as info:
        plan_from_yaml(yaml.safe_dump(data, sort_keys=False), source="plan.yaml")
    fields = [p.field for p in info.value.problems]
    # in file order (overlap_pct was added last, after the sections)
    assert fields == ["channels[0].exposure_ms", "sections[1].orientation", "overlap_pct"]
    assert [p.line for p in info.value.problems] == sorted(p.line or 0 for p in info.value.problems)


def test_python_construction_errors_convert_to_plan_error() -> None:
    data = plan_data()
    data["channels"][1]["exposure_ms"] = -5
    with pytest.raises(PlanError, match=r"^channels\[1\]\.exposure_ms: must be > 0 \(got -5\)$"):
        plan_from_dict(data)


YAML_SYNTAX_ERRORS = [
    # found at the end of the file; the message points back to where the list opened
    (
        "unclosed-flow-list",
        "name: x\noutput: a.h5\nchannels: [\n  {preset: DAPI},\nsections: []\n",
        6,
        "starts on line 3",
    ),
    ("tab-indent", "name: x\n\toutput: a.h5\n", 2, "'\\t'"),
    ("unterminated-quote", 'name: "x\noutput: a.h5\n', 3, "starts on line 1"),
    ("bad-indentation", "name: x\nfocus:\n  z_um: 1\n strategy: fixed\n", 4, "block"),
    ("python-tag", "name: x\noutput: !!python/object:os.system a\n", 2, "python/object"),
    ("two-documents", "name: x\n---\nname: y\n", 2, "single document"),
]


@pytest.mark.parametrize(
    ("text", "line", "detail"),
    [case[1:] for case in YAML_SYNTAX_ERRORS],
    ids=[case[0] for case in YAML_SYNTAX_ERRORS],
)
def test_bad_yaml_gives_line_number(text: str, line: int, detail: str) -> None:
    with pytest.raises(PlanError) as info:
        plan_from_yaml(text, source="plan.yaml")
    message = str(info.value)
    assert message.startswith(f"plan.yaml:{line}: invalid YAML"), message
    assert detail in message
    assert len(message.splitlines()) == 1
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", r"^plan\.yaml: a plan must be a mapping.*empty document$"),
        ("- 1\n- 2\n", r"^plan\.yaml:1: a plan must be a mapping.*got a list$"),
        ("name: a\noutput: b\nname: c\n", r"^plan\.yaml:3: duplicate key 'name' \(first on line 1\)$"),
    ],
    ids=["empty", "list", "duplicate-key"],
)
def test_not_a_plan_document(text: str, expected: str) -> None:
    with pytest.raises(PlanError, match=expected):
        plan_from_yaml(text, source="plan.yaml")


def test_load_plan_reports_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PlanError, match=rf"^{re.escape(str(missing))}: plan file not found$"):
        load_plan(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\noverlap_pct: [\n", encoding="utf-8")
    with pytest.raises(PlanError, match=rf"^{re.escape(str(bad))}:\d+: invalid YAML"):
        load_plan(bad)


def test_plan_error_is_a_cordscope_error() -> None:
    with pytest.raises(CordScopeError):
        plan_from_yaml("name: [\n")
    assert issubclass(PlanError, ValueError)


def test_plan_error_pickles() -> None:
    with pytest.raises(PlanError) as info:
        plan_from_yaml("name: [\n", source="p.yaml")
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.problems == info.value.problems


# ============================================================= validation


def test_valid_plan_gives_a_summary(core: CordScopeCore, output: Path) -> None:
    plan = make_plan(output)
    summary = validate_plan(plan, core, disk_free_bytes=plenty_of_disk)
    assert isinstance(summary, PlanSummary)
    tiles = section_tiles(plan, tile_size_um=(TILE_10X_UM, TILE_10X_UM))
    assert summary.tiles_per_section == {sid: len(c) for sid, c in tiles.items()}
    assert summary.total_tiles == sum(summary.tiles_per_section.values())
    assert summary.n_images == summary.total_tiles * 2
    assert summary.tile_size_um == pytest.approx((TILE_10X_UM, TILE_10X_UM))
    assert summary.pixel_size_um == pytest.approx(0.65)
    assert summary.image_size_px == (SENSOR_PX, SENSOR_PX)
    assert summary.estimated_bytes == summary.n_images * SENSOR_PX * SENSOR_PX * 2
    assert not output.parent.joinpath("scan.h5").exists()


def test_z_stack_multiplies_images(core: CordScopeCore, output: Path) -> None:
    plan = make_plan(output, z_stack={"range_um": 4.0, "step_um": 2.0})
    summary = validate_plan(plan, core, disk_free_bytes=plenty_of_disk)
    assert plan.n_z_slices == 3
    assert summary.n_images == summary.total_tiles * 2 * 3


@pytest.mark.parametrize(
    ("changes", "field", "named"),
    [
        (
            {"channels": [{"preset": "DAPI", "role": "anatomy"}, {"preset": "GFP", "role": "tracer"}]},
            "channels[1].preset",
            ["'GFP'", "available: DAPI, tdTomato"],
        ),
        ({"objective": "60x"}, "objective", ["'60x'", "available: ", "4x", "10x", "20x"]),
        ({"channel_group": "Filters"}, "channel_group", ["'Filters'", "Channel", "Objective"]),
        ({"objective_group": "Nosepiece"}, "objective_group", ["'Nosepiece'", "groups: Channel, Objective"]),
    ],
    ids=["unknown-preset", "unknown-objective", "unknown-channel-group", "unknown-objective-group"],
)
def test_unknown_hardware_names(
    core: CordScopeCore, output: Path, changes: dict[str, Any], field: str, named: list[str]
) -> None:
    plan = make_plan(output, **changes)
    with pytest.raises(PlanError) as info:
        validate_plan(plan, core, disk_free_bytes=plenty_of_disk)
    line = next(str(p) for p in info.value.problems if p.field == field)
    for text in named:
        assert text in line, line


def test_polygon_outside_the_stage_travel(core: CordScopeCore, output: Path) -> None:
    data = plan_data(output)
    data["sections"][0]["polygon_um"] = [[74_000, 1_000], [76_000, 1_000], [76_500, 2_000], [74_000, 2_000]]
    plan = plan_from_dict(data)
    with pytest.raises(PlanError) as info:
        validate_plan(plan, core, disk_free_bytes=plenty_of_disk)
    (problem,) = info.value.problems
    assert problem.field == "sections[0].polygon_um[1]"
    assert "(76000, 1000)" in problem.message and "'cord-A'" in problem.message
    assert "x 0..75000" in problem.message and "(and 1 more vertices)" in problem.message

    # the same plan fits a rig with a longer stage
    validate_plan(plan, core, stage_limits_um=((0, 100_000), (0, 50_000)), disk_free_bytes=plenty_of_disk)


def test_default_travel_is_the_demo_stage(core: CordScopeCore, output: Path) -> None:
    (_, x1), (_, y1) = XY_TRAVEL_UM
    corner = [[x1 - 2_000, y1 - 2_000], [x1 - 1_000, y1 - 2_000], [x1 - 1_000, y1 + 10]]
    plan = make_plan(output, sections=[{"id": "corner", "polygon_um": corner}])
    with pytest.raises(PlanError, match=r"sections\[0\]\.polygon_um\[2\]: vertex \(74000, 25010\)"):
        validate_plan(plan, core, disk_free_bytes=plenty_of_disk)


def test_tile_centres_outside_the_travel(core: CordScopeCore, output: Path) -> None:
    # inside the travel, but one tile wider: useq's grid, anchored at the left edge, centres the
    # second column beyond x = 75000 (a minimal cover centres its tiles on the polygon)
    edge = [[75_000 - 340, 10_000], [75_000, 10_000], [75_000, 10_300], [75_000 - 340, 10_300]]
    plan = make_plan(output, sections=[{"id": "edge", "polygon_um": edge}], tiling="grid")
    with pytest.raises(PlanError) as info:
        validate_plan(plan, core, disk_free_bytes=plenty_of_disk)
    (problem,) = info.value.problems
    assert problem.field == "sections[0].polygon_um"
    assert "tile 0001 of section 'edge' is centred at (75125.9," in problem.message


def test_every_hardware_problem_is_listed(core: CordScopeCore, tmp_path: Path) -> None:
    output = tmp_path / "exists.h5"
    output.write_bytes(b"")
    data = plan_data(output)
    data["objective"] = "60x"
    data["channels"][1]["preset"] = "GFP"
    data["sections"][1]["polygon_um"] = [[-100, 100], [500, 100], [500, 600]]
    with pytest.raises(PlanError) as info:
        validate_plan(plan_from_dict(data), core, disk_free_bytes=plenty_of_disk)
    assert [p.field for p in info.value.problems] == [
        "channels[1].preset",
        "objective",
        "sections[1].polygon_um[0]",
        "output",
    ]
    assert len(str(info.value).splitlines()) == 4


def test_output_that_exists(core: CordScopeCore, output: Path) -> None:
    output.write_bytes(b"\0" * 100)
    plan = make_plan(output)
    with pytest.raises(
        PlanError, match=rf"^output: '{re.escape(str(output))}' already exists; .*--overwrite.*--resume"
    ):
        validate_plan(plan, core, disk_free_bytes=plenty_of_disk)
    validate_plan(plan, core, overwrite=True, disk_free_bytes=plenty_of_disk)
    validate_plan(plan, core, resume=True, disk_free_bytes=plenty_of_disk)
    with pytest.raises(PlanError, match="overwrite and resume cannot both"):
        validate_plan(plan, core, overwrite=True, resume=True, disk_free_bytes=plenty_of_disk)


def test_output_that_is_a_folder(core: CordScopeCore, tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"^output: '.*' is a folder; name the scan file"):
        validate_plan(make_plan(tmp_path), core, overwrite=True, disk_free_bytes=plenty_of_disk)


def test_output_folder_is_created_later_not_now(core: CordScopeCore, tmp_path: Path) -> None:
    output = tmp_path / "new" / "deeper" / "scan.h5"
    validate_plan(make_plan(output), core, disk_free_bytes=plenty_of_disk)
    assert not (tmp_path / "new").exists()


def test_output_folder_under_a_file(core: CordScopeCore, tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    output = a_file / "scans" / "scan.h5"
    with pytest.raises(PlanError) as info:
        validate_plan(make_plan(output), core, disk_free_bytes=plenty_of_disk)
    (problem,) = info.value.problems
    assert problem.field == "output"
    assert f"cannot create folder '{a_file / 'scans'}'" in problem.message
    assert f"'{a_file}' is a file, not a folder" in problem.message


def test_output_folder_not_writable(core: CordScopeCore, tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running with permissions that ignore the read-only mode (root)")
        with pytest.raises(PlanError, match=rf"^output: folder '{re.escape(str(folder))}' is not writable"):
            validate_plan(make_plan(folder / "scan.h5"), core, disk_free_bytes=plenty_of_disk)
        with pytest.raises(PlanError, match=r"^output: cannot create folder .* is not writable"):
            validate_plan(make_plan(folder / "sub" / "scan.h5"), core, disk_free_bytes=plenty_of_disk)
    finally:
        folder.chmod(0o700)


def test_output_folder_not_writable_as_seen_by_os_access(
    core: CordScopeCore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the same check where the read-only mode cannot be tested (root): what os.access says counts
    folder = tmp_path / "locked"
    folder.mkdir()
    real_access = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        if Path(path) == folder and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(PlanError, match=rf"^output: folder '{re.escape(str(folder))}' is not writable"):
        validate_plan(make_plan(folder / "scan.h5"), core, disk_free_bytes=plenty_of_disk)
    with pytest.raises(
        PlanError, match=rf"cannot create folder .*: '{re.escape(str(folder))}' is not writable"
    ):
        validate_plan(make_plan(folder / "sub" / "scan.h5"), core, disk_free_bytes=plenty_of_disk)


def test_not_enough_disk(core: CordScopeCore, output: Path) -> None:
    plan = make_plan(output)
    asked: list[Path] = []

    def tiny_disk(folder: Path) -> int:
        asked.append(folder)
        return 5_000_000

    with pytest.raises(PlanError) as info:
        validate_plan(plan, core, disk_free_bytes=tiny_disk)
    assert asked == [output.parent]
    (problem,) = info.value.problems
    summary = validate_plan(plan, core, disk_free_bytes=plenty_of_disk)
    need_mb = required_free_bytes(summary.estimated_bytes) / 1e6  # the writer's own rule
    assert problem.field == "output"
    assert "not enough free disk" in problem.message
    assert f"needs about {need_mb:.1f} MB" in problem.message
    assert f"estimated {summary.estimated_bytes / 1e6:.1f} MB + 10 %" in problem.message
    assert "5.0 MB free" in problem.message

    # exactly enough passes; the real disk is asked when nothing is injected
    exact = required_free_bytes(summary.estimated_bytes)
    validate_plan(plan, core, disk_free_bytes=lambda folder: exact)
    with pytest.raises(PlanError, match="not enough free disk"):
        validate_plan(plan, core, disk_free_bytes=lambda folder: exact - 1)
    validate_plan(
        make_plan(
            output,
            sections=[{"id": "tiny", "polygon_um": [[30_000, 10_000], [30_100, 10_000], [30_000, 10_100]]}],
        ),
        core,
    )


def test_resume_needs_only_the_missing_part(core: CordScopeCore, output: Path) -> None:
    plan = make_plan(output)
    estimated = validate_plan(plan, core, disk_free_bytes=plenty_of_disk).estimated_bytes
    with output.open(
        "wb"
    ) as f:  # a scan file whose tiles are 90 % on disk (its blocks count, not its length)
        f.write(bytes(int(estimated * 0.9)))
    free = required_free_bytes(int(estimated * 0.2))
    validate_plan(plan, core, resume=True, disk_free_bytes=lambda folder: free)
    with pytest.raises(PlanError, match="not enough free disk"):
        validate_plan(plan, core, overwrite=True, disk_free_bytes=lambda folder: free)


# ================================================================ tile size


@pytest.mark.parametrize("objective", ["4x", "10x", "20x"])
def test_tile_size_follows_the_objective(core: CordScopeCore, objective: str) -> None:
    before = (core.getCurrentConfig("Objective"), core.getXYPosition(), core.getPosition())
    plan = make_plan(objective=objective)
    assert pixel_size_for_objective(core, "Objective", objective) == pytest.approx(PIXEL_UM[objective])
    assert tile_size_um(core, plan) == pytest.approx((SENSOR_PX * PIXEL_UM[objective],) * 2)
    # nothing moved
    assert (core.getCurrentConfig("Objective"), core.getXYPosition(), core.getPosition()) == before


def test_tile_size_follows_the_roi(core: CordScopeCore) -> None:
    plan = make_plan()
    core.setROI(0, 0, 256, 128)
    try:
        assert tile_size_um(core, plan) == pytest.approx((256 * 0.65, 128 * 0.65))
        summary = validate_plan(make_plan("scan.h5"), core, disk_free_bytes=plenty_of_disk)
        assert summary.image_size_px == (256, 128)
    finally:
        core.clearROI()
    assert tile_size_um(core, plan) == pytest.approx((TILE_10X_UM, TILE_10X_UM))


def test_pixel_size_of_unknown_objective(core: CordScopeCore) -> None:
    with pytest.raises(PlanError, match=r"^objective: unknown objective '60x'"):
        pixel_size_for_objective(core, "Objective", "60x")


# ================================================================== compile


def tiles_cover(polygon: list[list[float]], centres: np.ndarray, tile: tuple[float, float]) -> np.ndarray:
    """Points of (and on) the polygon that no tile rectangle contains."""
    poly = Polygon(polygon)
    xmin, ymin, xmax, ymax = poly.bounds
    xs, ys = np.meshgrid(np.linspace(xmin, xmax, 150), np.linspace(ymin, ymax, 150))
    inside = shapely.contains_xy(poly, xs.ravel(), ys.ravel())
    grid = np.column_stack([xs.ravel()[inside], ys.ravel()[inside]])
    edge = np.array([poly.exterior.interpolate(t, normalized=True).coords[0] for t in np.linspace(0, 1, 500)])
    pts = np.vstack([grid, edge, np.asarray(polygon, dtype=float)])
    w, h = tile
    hit = (np.abs(pts[:, None, 0] - centres[None, :, 0]) <= w / 2 + 1e-6) & (
        np.abs(pts[:, None, 1] - centres[None, :, 1]) <= h / 2 + 1e-6
    )
    assert len(grid) > 1000
    return pts[~hit.any(axis=1)]


@pytest.mark.parametrize("overlap_pct", [0.0, 10.0, 50.0])
@pytest.mark.parametrize("tile", [(TILE_10X_UM, TILE_10X_UM), (500.0, 300.0)], ids=["square", "wide"])
def test_tiles_cover_every_section(overlap_pct: float, tile: tuple[float, float]) -> None:
    plan = make_plan(overlap_pct=overlap_pct)
    tiles = section_tiles(plan, tile_size_um=tile)
    assert list(tiles) == ["cord-A", "cord-H"]
    for section in plan.sections:
        centres = tiles[section.id]
        assert centres.dtype == np.float64 and centres.shape[1] == 2
        missed = tiles_cover([list(v) for v in section.polygon_um], centres, tile)
        assert len(missed) == 0, f"{section.id}: uncovered points {missed[:5]}"


def test_fewer_tiles_than_the_bounding_box() -> None:
    plan = make_plan()
    tile = (TILE_10X_UM, TILE_10X_UM)
    tiles = section_tiles(plan, tile_size_um=tile)
    for section in plan.sections:
        xmin, ymin, xmax, ymax = Polygon(section.polygon_um).bounds
        bbox = useq.GridFromEdges(
            top=ymax, left=xmin, bottom=ymin, right=xmax, fov_width=tile[0], fov_height=tile[1], overlap=10
        )
        assert len(tiles[section.id]) < bbox.num_positions()
    # the diagonal band saves most of its bounding box
    xmin, ymin, xmax, ymax = Polygon(plan.sections[1].polygon_um).bounds
    bbox_tiles = useq.GridFromEdges(
        top=ymax, left=xmin, bottom=ymin, right=xmax, fov_width=tile[0], fov_height=tile[1], overlap=10
    ).num_positions()
    assert len(tiles["cord-H"]) < 0.6 * bbox_tiles


@pytest.mark.parametrize("tiling", ["minimal", "grid"])
def test_tiles_run_serpentine_within_a_section(tiling: str) -> None:
    plan = make_plan(tiling=tiling)
    w = h = TILE_10X_UM
    pitch = h * (1 - plan.overlap_pct / 100)
    for section_id, centres in section_tiles(plan, tile_size_um=(w, h)).items():
        # rows top to bottom (each a band of y), or columns left to right (minimal cover, when fewer)
        along_x = np.abs(np.diff(centres[:, 1])).sum() < np.abs(np.diff(centres[:, 0])).sum()
        if along_x:
            band = np.rint((centres[:, 1].max() - centres[:, 1]) / pitch).astype(int)
            along, first_step = centres[:, 0], 1
        else:
            assert tiling == "minimal", "useq's grid runs in rows"
            band = np.rint((centres[:, 0] - centres[:, 0].min()) / pitch).astype(int)
            along, first_step = centres[:, 1], -1
        assert np.all(np.diff(band) >= 0), f"{section_id}: rows/columns not visited in order"
        assert len(np.unique(band)) > 3
        for r in np.unique(band):
            steps = np.diff(along[band == r])
            direction = first_step if r % 2 == 0 else -first_step
            assert np.all(steps * direction > 0), f"{section_id}: row/column {r} runs the wrong way"


def _events(seq: useq.MDASequence) -> list[useq.MDAEvent]:
    return list(seq)


@pytest.mark.parametrize("z_stack", [None, {"range_um": 4.0, "step_um": 2.0}], ids=["one-plane", "z-stack"])
def test_compiled_order_all_channels_at_a_tile(z_stack: dict[str, float] | None) -> None:
    plan = make_plan(z_stack=z_stack, focus={"z_um": 100.0})
    tile = (TILE_10X_UM, TILE_10X_UM)
    seq = compile_plan(plan, tile_size_um=tile)
    events = _events(seq)
    n_c, n_z = len(plan.channels), plan.n_z_slices
    n_tiles = sum(len(c) for c in section_tiles(plan, tile_size_um=tile).values())
    assert len(seq.stage_positions) == n_tiles
    assert len(events) == n_tiles * n_c * n_z

    ps = [e.index["p"] for e in events]
    assert ps == sorted(ps), "the stage returned to an earlier tile"
    for p, group in groupby(events, key=lambda e: e.index["p"]):
        at_tile = list(group)
        assert [(e.index.get("c", 0), e.index.get("z", 0)) for e in at_tile] == [
            (c, z) for c in range(n_c) for z in range(n_z)
        ]
        assert {(e.x_pos, e.y_pos) for e in at_tile} == {(seq.stage_positions[p].x, seq.stage_positions[p].y)}
        assert [e.channel.config for e in at_tile if e.channel][::n_z] == ["DAPI", "tdTomato"]
        assert [e.exposure for e in at_tile][::n_z] == [20.0, 80.0]
        assert all(e.channel is not None and e.channel.group == "Channel" for e in at_tile)
        z = sorted({e.z_pos for e in at_tile})
        assert z == ([100.0] if n_z == 1 else [98.0, 100.0, 102.0])


def test_compiled_tile_table_matches_positions() -> None:
    plan = make_plan()
    tile = (TILE_10X_UM, TILE_10X_UM)
    seq = compile_plan(plan, tile_size_um=tile)
    meta = seq.metadata["cordscope"]
    assert meta["plan_name"] == "test-slide"
    assert meta["objective"] == "10x" and meta["tile_size_um"] == [TILE_10X_UM, TILE_10X_UM]
    assert len(meta["tiles"]) == len(seq.stage_positions)
    tiles = section_tiles(plan, tile_size_um=tile)
    for p, (pos, row) in enumerate(zip(seq.stage_positions, meta["tiles"], strict=True)):
        section_id, index, x, y = row
        assert pos.name == f"{section_id}/{index:04d}"
        assert (pos.x, pos.y) == (x, y)
        assert tuple(tiles[section_id][index]) == (x, y)
        assert meta["sections"][section_id]["first_position"] + index == p
        assert pos.z is None  # "current focus"
    assert {sid: s["n_tiles"] for sid, s in meta["sections"].items()} == {
        sid: len(c) for sid, c in tiles.items()
    }
    # sections in plan order
    assert [k for k, _ in groupby(row[0] for row in meta["tiles"])] == ["cord-A", "cord-H"]
    # every event names its tile through the table
    for event in _events(seq):
        section_id, index, x, y = meta["tiles"][event.index["p"]]
        assert event.pos_name == f"{section_id}/{index:04d}" and (event.x_pos, event.y_pos) == (x, y)


def test_compiled_tiles_follow_tile_size() -> None:
    plan = make_plan()
    small = compile_plan(plan, tile_size_um=(166.4, 166.4))
    large = compile_plan(plan, tile_size_um=(665.6, 665.6))
    assert len(small.stage_positions) > 3 * len(large.stage_positions)


def test_focus_map_uses_the_focus_function() -> None:
    plan = make_plan(focus={"strategy": "focus_map"})
    with pytest.raises(PlanError, match=r"^focus\.strategy: is 'focus_map'"):
        compile_plan(plan, tile_size_um=(TILE_10X_UM, TILE_10X_UM))

    calls: list[tuple[str, float, float]] = []

    def surface(section_id: str, x: float, y: float) -> float:
        calls.append((section_id, x, y))
        return 0.001 * x - 0.002 * y

    seq = compile_plan(plan, tile_size_um=(TILE_10X_UM, TILE_10X_UM), focus_z_um=surface)
    assert len(calls) == len(seq.stage_positions)
    for pos, (section_id, x, y) in zip(seq.stage_positions, calls, strict=True):
        assert pos.name is not None and pos.name.startswith(section_id + "/")
        assert (pos.x, pos.y) == (x, y) and pos.z == pytest.approx(0.001 * x - 0.002 * y)


def test_sequence_for_the_tiles_left_to_resume() -> None:
    plan = make_plan(z_stack={"range_um": 2.0, "step_um": 2.0})
    tile = (TILE_10X_UM, TILE_10X_UM)
    every = plan_tiles(plan, tile_size_um=tile, focus_z_um=lambda sid, x, y: 5.0)
    assert every[0] == PlannedTile("cord-A", 0, *section_tiles(plan, tile_size_um=tile)["cord-A"][0], 5.0)
    left = [t for t in every if t.tile_index % 3 == 1]  # e.g. what a crash left pending
    left[0] = left[0]._replace(z_um=None)
    seq = sequence_for_tiles(plan, left)
    meta = seq.metadata["cordscope"]
    assert meta["tiles"] == [[t.section_id, t.tile_index, t.x_um, t.y_um] for t in left]
    assert [p.name for p in seq.stage_positions] == [f"{t.section_id}/{t.tile_index:04d}" for t in left]
    assert [p.z for p in seq.stage_positions] == [t.z_um for t in left]
    n_a = sum(t.section_id == "cord-A" for t in left)
    assert meta["sections"] == {
        "cord-A": {"n_tiles": n_a, "first_position": 0},
        "cord-H": {"n_tiles": len(left) - n_a, "first_position": n_a},
    }
    assert meta["tile_size_um"] is None
    assert len(list(seq)) == len(left) * 2 * 2
    # compiling the whole plan is the same as sequencing all its tiles
    whole = compile_plan(plan, tile_size_um=tile, focus_z_um=lambda sid, x, y: 5.0)
    assert whole.stage_positions == sequence_for_tiles(plan, every).stage_positions


def test_compile_validated_plan_with_the_core_tile_size(core: CordScopeCore, output: Path) -> None:
    plan = make_plan(output)
    summary = validate_plan(plan, core, disk_free_bytes=plenty_of_disk)
    seq = compile_plan(plan, tile_size_um=tile_size_um(core, plan))
    assert len(seq.stage_positions) == summary.total_tiles
    assert len(_events(seq)) == summary.n_images


# ===================================================================== demo


@pytest.fixture(scope="module")
def demo_slide_and_plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, ScanPlan]:
    slide_module = pytest.importorskip("acquisition.demo.slide")
    slide = slide_module.demo_slide()
    output = tmp_path_factory.mktemp("demo") / "demo.h5"
    return slide, demo_plan(output=output, slide=slide)


def test_demo_plan_covers_the_demo_slide(
    demo_slide_and_plan: tuple[Any, ScanPlan], core: CordScopeCore
) -> None:
    slide, plan = demo_slide_and_plan
    truths = {t.section_id: t for t in slide.sections}
    assert [s.id for s in plan.sections] == list(truths)
    assert plan.tracer_channel.preset == "tdTomato" and plan.anatomy_channel.preset == "DAPI"
    for section in plan.sections:
        truth = truths[section.id]
        assert 3 <= len(section.polygon_um) <= 64
        polygon = Polygon(section.polygon_um)
        outline = Polygon(truth.outline)
        assert polygon.contains(outline), section.id
        assert polygon.exterior.distance(outline) >= 30.0, section.id  # a margin round the tissue
        assert section.orientation == truth.spec.orientation
        assert (section.animal, section.group, section.level) == (
            truth.spec.animal,
            truth.spec.group,
            truth.spec.level,
        )
        assert section.injection_side == truth.spec.injection_side
        assert section.lesion_epicenter_um is None  # left for the analysis to find
        if section.orientation == "horizontal":
            assert math.cos(math.radians(section.rostral_direction_deg)) < -0.95  # rostral is -x
    summary = validate_plan(plan, core, disk_free_bytes=plenty_of_disk)
    assert summary.total_tiles == sum(summary.tiles_per_section.values()) > len(plan.sections)
    assert plan_from_yaml(plan.to_yaml()) == plan


def test_demo_plan_objective(
    demo_slide_and_plan: tuple[Any, ScanPlan], core: CordScopeCore, tmp_path: Path
) -> None:
    slide, plan_10x = demo_slide_and_plan
    plan_4x = demo_plan(output=tmp_path / "demo4x.h5", objective="4x", slide=slide)
    assert plan_4x.objective == "4x"
    tiles_4x = validate_plan(plan_4x, core, disk_free_bytes=plenty_of_disk).total_tiles
    tiles_10x = validate_plan(plan_10x, core, disk_free_bytes=plenty_of_disk).total_tiles
    assert tiles_4x < tiles_10x
