"""Scan plans: what a scan does, saved as YAML, validated, compiled to useq.

A :class:`ScanPlan` is the single source of truth for a scan: the hardware
configuration, the output file, the objective, the channels (with the tracer
and the anatomy channel named), the tile overlap, the focus strategy, an
optional z-stack and the sections to tile, each with its polygon in stage µm
and its experimental metadata. It is a frozen pydantic model, validated once
at the boundary:

- :func:`load_plan` / :func:`plan_from_yaml` turn YAML into a plan or raise
  :class:`PlanError`, whose message has one line per problem, each naming
  the source line, the field and the value
  (``plan.yaml:12: channels[1].exposure_ms: must be > 0 (got -5)``).
- :func:`validate_plan` checks the plan against a loaded core and the disk
  before anything moves (presets, objective, stage travel, output file,
  folder, free space) and returns a :class:`PlanSummary`.
- :func:`compile_plan` turns the plan into a ``useq.MDASequence``: one
  explicit stage position per tile (tiles from useq's polygon grid, in
  serpentine order per section), every channel (and z-slice) at a tile
  before the stage moves on, and a tile table in
  ``sequence.metadata["cordscope"]``.

Tile size is never a constant: it is the camera's current ROI times the
pixel size of the plan's objective (:func:`tile_size_um`).

Relative paths in a plan (``hardware_config``, ``output``) are kept as
written and resolved by whoever opens them (relative to the working
directory).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

import numpy as np
import useq
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from shapely import Polygon
from shapely.validation import explain_validity

from .errors import CordScopeError
from .hardware import DEMO_CONFIG

if TYPE_CHECKING:
    from numpy.typing import NDArray
    from pymmcore_plus import CMMCorePlus

__all__ = [
    "DEFAULT_HARDWARE_CONFIG",
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "ChannelSetting",
    "FocusSettings",
    "PlanError",
    "PlanProblem",
    "PlanSummary",
    "PlannedTile",
    "ReliabilitySettings",
    "ScanPlan",
    "SectionPlan",
    "ZStack",
    "compile_plan",
    "demo_plan",
    "load_plan",
    "pixel_size_for_objective",
    "plan_from_dict",
    "plan_from_yaml",
    "plan_tiles",
    "save_plan",
    "section_tiles",
    "sequence_for_tiles",
    "tile_size_um",
    "validate_plan",
]

PLAN_FORMAT: Final = "cordscope-plan"
PLAN_VERSION: Final = 1
DEFAULT_HARDWARE_CONFIG = Path("hardware_configs/demo.cfg")

#: Free disk needed, as a multiple of the estimated file size (HDF5 overhead,
#: analysis results written next to the tiles).
DISK_MARGIN = 1.1
#: Tiles are stored as uint16 (see DESIGN.md, HDF5 scan file).
_STORED_BYTES_PER_PIXEL = 2

_SECTION_ID_PATTERN = r"^[A-Za-z0-9_.-]+$"

Vertex = tuple[float, float]
Loc = tuple[str | int, ...]


# ===================================================================== errors


@dataclass(frozen=True)
class PlanProblem:
    """One problem with a plan.

    Attributes
    ----------
    field : str
        Path of the field, e.g. ``"channels[1].exposure_ms"`` ("" for the plan
        as a whole).
    message : str
        What is wrong, naming the offending value.
    source : str or None
        File (or ``"<string>"``) the plan came from, if any.
    line : int or None
        1-based line in ``source``, if known.
    """

    field: str
    message: str
    source: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = ""
        if self.source is not None:
            where = f"{self.source}:{self.line}: " if self.line is not None else f"{self.source}: "
        return f"{where}{self.field}: {self.message}" if self.field else f"{where}{self.message}"


class PlanError(CordScopeError, ValueError):
    """A plan cannot be used; ``str()`` gives one line per problem.

    Attributes
    ----------
    problems : list of PlanProblem
        Every problem found, in plan order.
    """

    def __init__(self, problems: Sequence[PlanProblem] | str):
        if isinstance(problems, str):
            problems = [PlanProblem("", problems)]
        self.problems: list[PlanProblem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


class _FieldProblems(ValueError):
    """Raised inside validators to report problems *below* the validated value.

    pydantic keeps the exception in the error's ``ctx``, so the YAML error
    report can give each problem its own field path and line.
    """

    def __init__(self, problems: Sequence[tuple[Loc, str]]):
        self.problems = list(problems)
        super().__init__("; ".join(f"{_loc_path(loc)}: {msg}" if loc else msg for loc, msg in self.problems))


def _loc_path(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _show(value: Any) -> str:
    """Show a value as a user wrote it, shortened."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (int, str)):
        return repr(value) if isinstance(value, str) else str(value)
    if isinstance(value, Path):
        return repr(str(value))
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _xy(x: float, y: float) -> str:
    return f"({x:g}, {y:g})"


# ===================================================================== models


class _PlanModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=True)


def _polygon_problem(vertices: Sequence[Vertex]) -> str | None:
    """Why ``vertices`` is not a usable polygon, or None."""
    if len(vertices) < 3:
        return f"a polygon needs at least 3 vertices (got {len(vertices)})"
    poly = Polygon(vertices)
    if not poly.is_valid:
        reason = explain_validity(poly)
        m = re.match(r"^(.*?)\[\s*(\S+)\s+(\S+)\s*\]$", reason)
        where = f" at {_xy(float(m.group(2)), float(m.group(3)))}" if m else ""
        what = (m.group(1) if m else reason).strip().lower()
        return f"not a valid polygon: {what}{where}"
    if poly.area <= 0:
        return "polygon has zero area"
    return None


def _int_to_str(value: Any) -> Any:
    # YAML reads `animal: 12` as an int; a name is meant.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class ChannelSetting(_PlanModel):
    """One channel of the scan: a preset of the plan's channel group."""

    preset: str = Field(min_length=1, description="Preset of the channel config group, e.g. 'tdTomato'.")
    exposure_ms: float = Field(default=50.0, gt=0, description="Camera exposure (ms).")
    role: Literal["tracer", "anatomy", "other"] = Field(
        default="other",
        description="'tracer': the labelled-axon channel analysed; 'anatomy': the counterstain "
        "(e.g. DAPI) used for outlines and focus; 'other': acquired only.",
    )


class FocusSettings(_PlanModel):
    """How each tile's focus is chosen."""

    strategy: Literal["fixed", "focus_map"] = Field(
        default="fixed",
        description="'fixed': every tile at z_um; 'focus_map': autofocus at points_per_section "
        "points per section (anatomy channel) and interpolate a focus surface.",
    )
    z_um: float | None = Field(
        default=None,
        description="Focus drive position (µm). 'fixed': the scan plane; 'focus_map': centre of "
        "the coarse search. null: the current focus when the scan starts.",
    )
    points_per_section: int = Field(
        default=5, ge=1, le=100, description="Focus points per section (focus_map)."
    )
    coarse_range_um: float = Field(
        default=60.0, gt=0, description="Full range of the coarse focus search (µm)."
    )
    coarse_step_um: float = Field(default=5.0, gt=0, description="Step of the coarse focus search (µm).")
    fine_range_um: float = Field(default=8.0, gt=0, description="Full range of the fine focus search (µm).")
    fine_step_um: float = Field(default=1.0, gt=0, description="Step of the fine focus search (µm).")

    @model_validator(mode="after")
    def _steps_fit_ranges(self) -> FocusSettings:
        problems: list[tuple[Loc, str]] = []
        for kind in ("coarse", "fine"):
            step, full = getattr(self, f"{kind}_step_um"), getattr(self, f"{kind}_range_um")
            if step > full:
                problems.append(
                    ((f"{kind}_step_um",), f"must be <= {kind}_range_um ({full:g}) (got {step:g})")
                )
        if problems:
            raise _FieldProblems(problems)
        return self


class ZStack(_PlanModel):
    """A z-stack at every tile, centred on the tile's focus."""

    range_um: float = Field(
        default=10.0, gt=0, description="Full height of the stack (µm), centred on the focus."
    )
    step_um: float = Field(default=2.0, gt=0, description="Distance between slices (µm).")

    @model_validator(mode="after")
    def _step_fits_range(self) -> ZStack:
        if self.step_um > self.range_um:
            raise _FieldProblems(
                [(("step_um",), f"must be <= range_um ({self.range_um:g}) (got {self.step_um:g})")]
            )
        return self

    def to_useq(self) -> useq.ZRangeAround:
        """Return the stack as a useq z plan, relative to each position's z."""
        return useq.ZRangeAround(range=self.range_um, step=self.step_um)

    @property
    def n_slices(self) -> int:
        """Number of slices per tile."""
        return int(self.to_useq().num_positions())


class ReliabilitySettings(_PlanModel):
    """How the controller handles hardware faults during a scan."""

    max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries of a failed tile before it is marked failed."
    )
    tile_timeout_s: float = Field(
        default=30.0, gt=0, description="Time allowed for one tile (move, focus, all images) (s)."
    )


class SectionPlan(_PlanModel):
    """One tissue section on the slide: where it is and what it is."""

    id: str = Field(
        pattern=_SECTION_ID_PATTERN,
        max_length=64,
        description="Unique section name (letters, digits, '_', '.', '-'), e.g. 'rat03-L2'.",
    )
    polygon_um: list[Vertex] = Field(
        min_length=3,
        description="Outline to tile, as (x, y) stage positions (µm); every part of it is imaged.",
    )
    animal: str = Field(default="", description="Animal the section comes from, e.g. 'rat03'.")
    group: str = Field(default="", description="Experimental group, e.g. 'vehicle'.")
    level: str = Field(default="", description="Spinal level, e.g. 'C5', 'Th7', 'L2' or 'lesion'.")
    orientation: Literal["coronal", "horizontal"] = Field(default="coronal", description="Cutting plane.")
    injection_side: Literal["left", "right"] | None = Field(
        default=None, description="Side of the tracer injection (the rubrospinal tract runs contralateral)."
    )
    lesion_epicenter_um: Vertex | None = Field(
        default=None,
        description="Horizontal sections: stage position (µm) of the lesion epicenter, if known.",
    )
    rostral_direction_deg: float = Field(
        default=180.0,
        description="Horizontal sections: direction from the epicenter toward rostral in stage "
        "coordinates (degrees, 0 = +x, 90 = +y; 180 = -x).",
    )
    region_polygons_um: dict[str, list[Vertex]] = Field(
        default_factory=dict,
        description="User-drawn region outlines (stage µm) by region name, overriding the "
        "automatic regions in the analysis.",
    )

    _to_str = field_validator("id", "animal", "group", "level", mode="before")(_int_to_str)

    @field_validator("polygon_um")
    @classmethod
    def _valid_polygon(cls, value: list[Vertex]) -> list[Vertex]:
        if problem := _polygon_problem(value):
            raise ValueError(problem)
        return value

    @field_validator("region_polygons_um")
    @classmethod
    def _valid_regions(cls, value: dict[str, list[Vertex]]) -> dict[str, list[Vertex]]:
        problems: list[tuple[Loc, str]] = []
        for name, vertices in value.items():
            if problem := _polygon_problem(vertices):
                problems.append(((name,), problem))
        if problems:
            raise _FieldProblems(problems)
        return value

    @model_validator(mode="after")
    def _epicenter_only_horizontal(self) -> SectionPlan:
        if self.lesion_epicenter_um is not None and self.orientation != "horizontal":
            x, y = self.lesion_epicenter_um
            raise _FieldProblems(
                [
                    (
                        ("lesion_epicenter_um",),
                        f"only allowed for horizontal sections (orientation is "
                        f"{self.orientation!r}; got {_xy(x, y)})",
                    )
                ]
            )
        return self


class ScanPlan(_PlanModel):
    """Everything a scan does; saved as YAML and into every scan file.

    Lengths are in µm, times in ms (exposure) or s (timeouts), overlap in
    percent of the tile size. Build one from YAML with :func:`load_plan`,
    check it against the hardware with :func:`validate_plan`, and turn it
    into a ``useq.MDASequence`` with :func:`compile_plan`.
    """

    format: Literal["cordscope-plan"] = Field(default=PLAN_FORMAT, description="File format marker.")
    version: Literal[1] = Field(default=PLAN_VERSION, description="Plan format version.")
    name: str = Field(min_length=1, description="Name of the scan, e.g. 'slide-07 tdTomato'.")
    hardware_config: Path = Field(
        default=DEFAULT_HARDWARE_CONFIG, description="Micro-Manager .cfg of the microscope."
    )
    output: Path = Field(description="HDF5 scan file to write (.h5).")
    objective_group: str = Field(
        default="Objective", min_length=1, description="Config group that selects the objective."
    )
    objective: str = Field(default="10x", min_length=1, description="Preset of objective_group to scan with.")
    channel_group: str = Field(
        default="Channel", min_length=1, description="Config group of the channel presets."
    )
    channels: list[ChannelSetting] = Field(
        min_length=2,
        description="Channels imaged at every tile, in this order; exactly one tracer and one "
        "anatomy channel.",
    )
    overlap_pct: float = Field(
        default=10.0, ge=0, le=50, description="Overlap of neighbouring tiles (% of tile size)."
    )
    focus: FocusSettings = Field(default=FocusSettings(), description="Focus strategy.")
    z_stack: ZStack | None = Field(
        default=None, description="Optional z-stack at every tile (null: one plane)."
    )
    reliability: ReliabilitySettings = Field(
        default=ReliabilitySettings(), description="Retries and timeouts."
    )
    sections: list[SectionPlan] = Field(min_length=1, description="Sections to tile, in scan order.")
    analysis: dict[str, Any] = Field(
        default_factory=dict,
        description="Analysis settings, reserved for the analysis package; kept as an opaque "
        "mapping here and validated by the analysis when it reads the plan.",
    )

    @field_validator("channels")
    @classmethod
    def _one_tracer_one_anatomy(cls, value: list[ChannelSetting]) -> list[ChannelSetting]:
        problems: list[tuple[Loc, str]] = []
        first_with_preset: dict[str, int] = {}
        for i, ch in enumerate(value):
            if ch.preset in first_with_preset:
                problems.append(
                    (
                        (i, "preset"),
                        f"duplicate channel preset {ch.preset!r} "
                        f"(also channels[{first_with_preset[ch.preset]}])",
                    )
                )
            else:
                first_with_preset[ch.preset] = i
        for role in ("tracer", "anatomy"):
            having = [i for i, ch in enumerate(value) if ch.role == role]
            if not having:
                problems.append(((), f"needs exactly one channel with role {role!r} (found none)"))
            for i in having[1:]:
                problems.append(
                    (
                        (i, "role"),
                        f"a second {role!r} channel (channels[{having[0]}] is the {role}); "
                        "exactly one is allowed",
                    )
                )
        if problems:
            raise _FieldProblems(problems)
        return value

    @field_validator("sections")
    @classmethod
    def _unique_ids(cls, value: list[SectionPlan]) -> list[SectionPlan]:
        first_with_id: dict[str, int] = {}
        problems: list[tuple[Loc, str]] = []
        for i, section in enumerate(value):
            if section.id in first_with_id:
                problems.append(
                    (
                        (i, "id"),
                        f"duplicate section id {section.id!r} (also sections[{first_with_id[section.id]}])",
                    )
                )
            else:
                first_with_id[section.id] = i
        if problems:
            raise _FieldProblems(problems)
        return value

    # ----------------------------------------------------------- conveniences

    @property
    def tracer_channel(self) -> ChannelSetting:
        """The channel whose signal is analysed (labelled axons)."""
        return next(ch for ch in self.channels if ch.role == "tracer")

    @property
    def anatomy_channel(self) -> ChannelSetting:
        """The counterstain channel (outlines, focus)."""
        return next(ch for ch in self.channels if ch.role == "anatomy")

    @property
    def n_z_slices(self) -> int:
        """Images per channel at each tile (1 without a z-stack)."""
        return self.z_stack.n_slices if self.z_stack is not None else 1

    def section(self, section_id: str) -> SectionPlan:
        """Return the section with this id (KeyError if none)."""
        for s in self.sections:
            if s.id == section_id:
                return s
        raise KeyError(section_id)

    def to_yaml(self) -> str:
        """Return the plan as YAML text; :func:`plan_from_yaml` reads it back to an equal plan."""
        data = self.model_dump(mode="json")
        header = f"# CordScope scan plan ({PLAN_FORMAT} v{PLAN_VERSION}); lengths in um, exposure in ms\n"
        return header + yaml.dump(
            data, Dumper=_PlanDumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
        )


# ======================================================================= YAML


class _PlanDumper(yaml.SafeDumper):
    """Readable plan YAML: indented block lists, vertices as ``[x, y]``."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.SequenceNode:
    short_numbers = 0 < len(data) <= 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in data
    )
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=short_numbers)


_PlanDumper.add_representer(list, _represent_list)


#: Which model a (index-free) field path leads to, for naming allowed fields.
_MODEL_AT: dict[tuple[str, ...], type[BaseModel]] = {
    (): ScanPlan,
    ("channels",): ChannelSetting,
    ("focus",): FocusSettings,
    ("z_stack",): ZStack,
    ("reliability",): ReliabilitySettings,
    ("sections",): SectionPlan,
}


def _line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """1-based line of the deepest YAML node that ``loc`` reaches."""
    if root is None:
        return None
    node: yaml.Node = root
    line = root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            found = None
            for key, value in node.value:  # the last duplicate wins, as in PyYAML
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    found = (key, value)
            if found is None:
                break
            line = found[0].start_mark.line + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _describe_error(err: Mapping[str, Any]) -> str:
    """Word one pydantic error as a one-line message for the user."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    loc = tuple(err["loc"])
    value = err.get("input")
    got = f" (got {_show(value)})"
    if kind == "missing":
        # the only tuples in a plan are (x, y) positions
        return "missing y: a position is [x, y]" if loc and loc[-1] == 1 else "required field is missing"
    if kind == "too_long" and isinstance(value, (list, tuple)) and len(value) > 2:
        return f"a position is [x, y]{got}"
    if kind == "extra_forbidden":
        model = _MODEL_AT.get(tuple(p for p in loc[:-1] if isinstance(p, str)))
        allowed = f" (allowed: {', '.join(model.model_fields)})" if model is not None else ""
        return f"unknown field {_show(loc[-1])}{allowed}"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    if kind == "greater_than":
        return f"must be > {_show(ctx['gt'])}{got}"
    if kind == "greater_than_equal":
        return f"must be >= {_show(ctx['ge'])}{got}"
    if kind == "less_than":
        return f"must be < {_show(ctx['lt'])}{got}"
    if kind == "less_than_equal":
        return f"must be <= {_show(ctx['le'])}{got}"
    if kind == "literal_error":
        return f"must be {ctx['expected']}{got}"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == _SECTION_ID_PATTERN:
        return f"may contain only letters, digits, '_', '.' and '-'{got}"
    if kind == "too_short":
        n = ctx.get("actual_length", len(value) if isinstance(value, (list, tuple)) else 0)
        what = {"polygon_um": "vertices", "channels": "channels (a tracer and an anatomy channel)"}
        return f"needs at least {ctx['min_length']} {what.get(str(loc[-1]), 'items')} (got {n})"
    if kind == "tuple_type":
        return f"must be a position [x, y]{got}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping of fields{got}"
    if kind == "list_type":
        return f"must be a list{got}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number{got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number{got}"
    if kind == "string_type":
        return f"must be text (quote it){got}"
    if kind == "string_too_short":
        return f"must not be empty{got}"
    if kind == "finite_number":
        return f"must be a finite number{got}"
    msg = str(err["msg"])
    msg = msg.replace("Input should be", "must be").replace("Input ", "")
    return f"{msg[:1].lower()}{msg[1:]}{got}"


def _problems_from_validation_error(
    error: ValidationError, *, source: str | None, root: yaml.Node | None
) -> list[PlanProblem]:
    problems: list[PlanProblem] = []
    for err in error.errors():
        loc: Loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if err["type"] == "value_error" and isinstance(cause, _FieldProblems):
            for sub_loc, message in cause.problems:
                full = loc + tuple(sub_loc)
                problems.append(PlanProblem(_loc_path(full), message, source, _line_of(root, full)))
            continue
        line = _line_of(root, loc) if root is not None else None
        problems.append(PlanProblem(_loc_path(loc), _describe_error(err), source, line))
    problems.sort(key=lambda p: p.line if p.line is not None else 0)
    return problems


def plan_from_dict(data: Any, *, source: str | None = None) -> ScanPlan:
    """Validate plain data (e.g. from the GUI or JSON) into a plan.

    Raises
    ------
    PlanError
        One problem per invalid field, naming the field and the value.
    """
    return _validate(data, source=source, root=None)


def _validate(data: Any, *, source: str | None, root: yaml.Node | None) -> ScanPlan:
    if not isinstance(data, Mapping):
        kind = "an empty document" if data is None else f"a {type(data).__name__}"
        line = _line_of(root, ()) if root is not None else None
        raise PlanError(
            [
                PlanProblem(
                    "",
                    f"a plan must be a mapping of fields (name, output, channels, sections, ...), got {kind}",
                    source,
                    line,
                )
            ]
        )
    try:
        return ScanPlan.model_validate(data)
    except ValidationError as e:
        raise PlanError(_problems_from_validation_error(e, source=source, root=root)) from None


def _duplicate_keys(node: yaml.Node | None, source: str) -> list[PlanProblem]:
    problems: list[PlanProblem] = []
    stack = [node] if node is not None else []
    seen_nodes: set[int] = set()
    while stack:
        n = stack.pop()
        if id(n) in seen_nodes:  # aliases share nodes
            continue
        seen_nodes.add(id(n))
        if isinstance(n, yaml.MappingNode):
            keys: dict[str, int] = {}
            for key, value in n.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in keys:
                        problems.append(
                            PlanProblem(
                                "",
                                f"duplicate key {key.value!r} (first on line {keys[key.value]})",
                                source,
                                key.start_mark.line + 1,
                            )
                        )
                    else:
                        keys[key.value] = key.start_mark.line + 1
                stack.append(value)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
    return sorted(problems, key=lambda p: p.line or 0)


def plan_from_yaml(text: str, source: str = "<string>") -> ScanPlan:
    """Read a plan from YAML text.

    Parameters
    ----------
    text : str
        The YAML document.
    source : str
        Name used in error messages (usually the file's path).

    Raises
    ------
    PlanError
        For YAML syntax errors (with the line and column), duplicate keys,
        and every invalid field (with the line of the field, its path and the
        value). Never a raw traceback.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = str(e.problem or e.context or "cannot parse")
        if e.problem and e.context:
            ctx_mark = e.context_mark
            started = f", which starts on line {ctx_mark.line + 1}" if ctx_mark is not None else ""
            what += f" ({e.context}{started})"
        if mark is None:
            raise PlanError([PlanProblem("", f"invalid YAML: {what}", source)]) from None
        raise PlanError(
            [PlanProblem("", f"invalid YAML (column {mark.column + 1}): {what}", source, mark.line + 1)]
        ) from None
    except yaml.YAMLError as e:
        raise PlanError([PlanProblem("", f"invalid YAML: {e}", source)]) from None
    finally:
        loader.dispose()
    if duplicates := _duplicate_keys(root, source):
        raise PlanError(duplicates)
    return _validate(data, source=source, root=root)


def load_plan(path: str | Path) -> ScanPlan:
    """Read a plan from a YAML file.

    Raises
    ------
    PlanError
        If the file cannot be read or the plan is invalid; the message names
        ``path`` and the line of each problem.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError([PlanProblem("", "plan file not found", str(p))]) from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise PlanError([PlanProblem("", f"cannot read plan file: {reason}", str(p))]) from None
    return plan_from_yaml(text, source=str(p))


def save_plan(plan: ScanPlan, path: str | Path) -> None:
    """Write a plan as YAML (atomically: a reader never sees half a file).

    Raises
    ------
    PlanError
        If the file cannot be written.
    """
    p = Path(path)
    text = plan.to_yaml()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise PlanError([PlanProblem("", f"cannot write plan file: {e.strerror or e}", str(p))]) from None


# ============================================================ hardware checks


def _binning(core: CMMCorePlus) -> float:
    cam = core.getCameraDevice()
    if not cam or not core.hasProperty(cam, "Binning"):
        return 1.0
    value = str(core.getProperty(cam, "Binning"))
    try:
        return float(value.split("x")[0])  # "2" or "2x2"
    except ValueError:
        return 1.0


def pixel_size_for_objective(core: CMMCorePlus, objective_group: str, objective: str) -> float:
    """Image pixel size (µm) the camera will have with ``objective``, without moving anything.

    The pixel-size configuration used is the one whose settings agree with
    the objective preset's settings (settings the preset does not touch, e.g.
    a magnifier, must agree with the devices' current state). The result is
    scaled by the camera's binning and the magnification factor, as
    ``getPixelSizeUm`` does for the current configuration.

    Raises
    ------
    PlanError
        If the group or preset does not exist, or no pixel-size
        configuration matches the preset.
    """
    if objective_group not in core.getAvailableConfigGroups():
        raise PlanError(
            [
                PlanProblem(
                    "objective_group",
                    f"no config group {objective_group!r} in this hardware config "
                    f"(available: {', '.join(core.getAvailableConfigGroups())})",
                )
            ]
        )
    if objective not in core.getAvailableConfigs(objective_group):
        raise PlanError(
            [
                PlanProblem(
                    "objective",
                    f"unknown objective {objective!r} in config group {objective_group!r} "
                    f"(available: {', '.join(core.getAvailableConfigs(objective_group))})",
                )
            ]
        )
    preset = {(str(d), str(p)): str(v) for d, p, v in core.getConfigData(objective_group, objective)}
    best: tuple[int, str] | None = None
    for config in core.getAvailablePixelSizeConfigs():
        settings = [(str(d), str(p), str(v)) for d, p, v in core.getPixelSizeConfigData(config)]
        if not settings:
            continue
        shared = 0
        agrees = True
        for dev, prop, value in settings:
            if (dev, prop) in preset:
                shared += 1
                agrees = preset[(dev, prop)] == value
            else:
                try:
                    agrees = str(core.getPropertyFromCache(dev, prop)) == value
                except Exception:  # a device the config names but did not load
                    agrees = False
            if not agrees:
                break
        if agrees and (best is None or shared > best[0]):
            best = (shared, str(config))
    if best is None:
        raise PlanError(
            [
                PlanProblem(
                    "objective",
                    f"no pixel-size configuration matches objective {objective!r} (group "
                    f"{objective_group!r}); add a ConfigPixelSize for it to the hardware config",
                )
            ]
        )
    size = float(core.getPixelSizeUmByID(best[1])) * _binning(core) / float(core.getMagnificationFactor())
    if not size > 0:
        raise PlanError(
            [
                PlanProblem(
                    "objective",
                    f"pixel-size configuration {best[1]!r} of objective {objective!r} has "
                    f"pixel size {size:g} µm",
                )
            ]
        )
    return size


def tile_size_um(core: CMMCorePlus, plan: ScanPlan) -> tuple[float, float]:
    """Field of view (width, height) in µm: the camera's current ROI × the objective's pixel size.

    Raises
    ------
    PlanError
        If the plan's objective has no pixel size on this core.
    """
    _, _, width_px, height_px = core.getROI()
    px = pixel_size_for_objective(core, plan.objective_group, plan.objective)
    return (float(width_px) * px, float(height_px) * px)


def _demo_stage_limits() -> tuple[tuple[float, float], tuple[float, float]]:
    from acquisition.demo.devices import XY_TRAVEL_UM

    (x0, x1), (y0, y1) = XY_TRAVEL_UM
    return ((float(x0), float(x1)), (float(y0), float(y1)))


@dataclass(frozen=True)
class PlanSummary:
    """What a validated plan will do on this microscope.

    Attributes
    ----------
    tiles_per_section : dict of str to int
        Tiles of each section, in plan order.
    total_tiles : int
    n_images : int
        Images in the scan (tiles × channels × z-slices).
    tile_size_um : (float, float)
        Field of view (width, height), µm.
    pixel_size_um : float
        Image pixel size with the plan's objective, µm.
    image_size_px : (int, int)
        Camera ROI (width, height), pixels.
    estimated_bytes : int
        Size of the tile data in the scan file (uint16).
    """

    tiles_per_section: dict[str, int]
    total_tiles: int
    n_images: int
    tile_size_um: tuple[float, float]
    pixel_size_um: float
    image_size_px: tuple[int, int]
    estimated_bytes: int


def _format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _output_problems(
    output: Path,
    *,
    overwrite: bool,
    resume: bool,
    estimated_bytes: int | None,
    disk_free_bytes: Callable[[Path], int],
) -> list[PlanProblem]:
    problems: list[PlanProblem] = []
    out = Path(output).expanduser()
    shown = _show(str(output))
    if overwrite and resume:
        problems.append(PlanProblem("output", "overwrite and resume cannot both be asked for"))
    existing_bytes = 0
    if out.is_dir():
        problems.append(
            PlanProblem(
                "output", f"{shown} is a folder; name the scan file, e.g. {_show(str(out / 'scan.h5'))}"
            )
        )
    elif out.exists():
        if not (overwrite or resume):
            problems.append(
                PlanProblem(
                    "output",
                    f"{shown} already exists; ask to overwrite it (--overwrite) or to resume "
                    "that scan (--resume)",
                )
            )
        elif not os.access(out, os.W_OK):
            problems.append(PlanProblem("output", f"{shown} exists and is not writable"))
        if resume:
            existing_bytes = out.stat().st_size
    folder = out.parent
    anchor = _nearest_existing(folder)
    if not anchor.is_dir():
        problems.append(
            PlanProblem(
                "output",
                f"cannot create folder {_show(str(folder))} for {shown}: "
                f"{_show(str(anchor))} is a file, not a folder",
            )
        )
        return problems
    if not os.access(anchor, os.W_OK | os.X_OK):
        if anchor == folder:
            problems.append(
                PlanProblem("output", f"folder {_show(str(folder))} is not writable (for {shown})")
            )
        else:
            problems.append(
                PlanProblem(
                    "output",
                    f"cannot create folder {_show(str(folder))} for {shown}: "
                    f"{_show(str(anchor))} is not writable",
                )
            )
        return problems
    if estimated_bytes is not None:
        needed = max(estimated_bytes * DISK_MARGIN - existing_bytes, 0.0)
        try:
            free = int(disk_free_bytes(anchor))
        except OSError as e:
            problems.append(
                PlanProblem(
                    "output", f"cannot read the free disk space at {_show(str(anchor))}: {e.strerror or e}"
                )
            )
        else:
            if free < needed:
                problems.append(
                    PlanProblem(
                        "output",
                        f"not enough free disk for {shown}: the scan needs about {_format_bytes(needed)} "
                        f"(estimated {_format_bytes(estimated_bytes)} + {round((DISK_MARGIN - 1) * 100)} %), "
                        f"{_format_bytes(free)} free at {_show(str(anchor))}",
                    )
                )
    return problems


def _disk_free(path: Path) -> int:
    return int(shutil.disk_usage(path).free)


def _outside(x: float, y: float, limits: tuple[tuple[float, float], tuple[float, float]]) -> bool:
    (x0, x1), (y0, y1) = limits
    return not (x0 <= x <= x1 and y0 <= y <= y1)


def validate_plan(
    plan: ScanPlan,
    core: CMMCorePlus,
    *,
    stage_limits_um: tuple[tuple[float, float], tuple[float, float]] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    disk_free_bytes: Callable[[Path], int] | None = None,
) -> PlanSummary:
    """Check a plan against the loaded hardware and the disk, before anything moves.

    Nothing is moved or written: presets are read from the core, the folder
    is not created.

    Parameters
    ----------
    plan : ScanPlan
    core : CMMCorePlus
        The loaded microscope.
    stage_limits_um : ((xmin, xmax), (ymin, ymax)), optional
        XY stage travel in µm. Default: the demo stage's travel (a 75 × 25 mm
        slide); pass a real rig's travel.
    overwrite, resume : bool
        Whether an existing output file may be replaced / continued.
    disk_free_bytes : callable, optional
        ``f(folder) -> free bytes``; default ``shutil.disk_usage(folder).free``.

    Returns
    -------
    PlanSummary
        Tiles, images and file size the scan will have.

    Raises
    ------
    PlanError
        Listing every problem found: unknown channel group or preset, unknown
        objective or objective without pixel size, section polygons (or tile
        centres) outside the stage travel, output file that exists, output
        folder not writable or not creatable, not enough free disk
        (estimated size × 1.1).
    """
    problems: list[PlanProblem] = []
    groups = list(core.getAvailableConfigGroups())

    if plan.channel_group not in groups:
        problems.append(
            PlanProblem(
                "channel_group",
                f"no config group {plan.channel_group!r} in this hardware config "
                f"(available: {', '.join(groups)})",
            )
        )
    else:
        presets = list(core.getAvailableConfigs(plan.channel_group))
        for i, ch in enumerate(plan.channels):
            if ch.preset not in presets:
                problems.append(
                    PlanProblem(
                        f"channels[{i}].preset",
                        f"unknown channel preset {ch.preset!r} in config group "
                        f"{plan.channel_group!r} (available: {', '.join(presets)})",
                    )
                )

    pixel_size: float | None = None
    try:
        pixel_size = pixel_size_for_objective(core, plan.objective_group, plan.objective)
    except PlanError as e:
        problems.extend(e.problems)

    limits = stage_limits_um if stage_limits_um is not None else _demo_stage_limits()
    (x0, x1), (y0, y1) = limits
    travel = f"the stage travel (x {x0:g}..{x1:g}, y {y0:g}..{y1:g} µm)"
    polygon_inside: dict[str, bool] = {}
    for i, section in enumerate(plan.sections):
        bad = [(j, v) for j, v in enumerate(section.polygon_um) if _outside(v[0], v[1], limits)]
        polygon_inside[section.id] = not bad
        if bad:
            j, (x, y) = bad[0]
            more = f" (and {len(bad) - 1} more vertices)" if len(bad) > 1 else ""
            problems.append(
                PlanProblem(
                    f"sections[{i}].polygon_um[{j}]",
                    f"vertex {_xy(x, y)} of section {section.id!r} is outside {travel}{more}",
                )
            )

    summary: PlanSummary | None = None
    if pixel_size is not None:
        _, _, width_px, height_px = (int(v) for v in core.getROI())
        tile = (width_px * pixel_size, height_px * pixel_size)
        tiles = section_tiles(plan, tile_size_um=tile)
        for i, section in enumerate(plan.sections):
            if not polygon_inside[section.id]:
                continue
            centres = tiles[section.id]
            bad_tiles = [k for k, (x, y) in enumerate(centres) if _outside(float(x), float(y), limits)]
            if bad_tiles:
                k = bad_tiles[0]
                more = f" (and {len(bad_tiles) - 1} more tiles)" if len(bad_tiles) > 1 else ""
                problems.append(
                    PlanProblem(
                        f"sections[{i}].polygon_um",
                        f"tile {k:04d} of section {section.id!r} is centred at "
                        f"{_xy(float(centres[k][0]), float(centres[k][1]))}, outside {travel}{more}; "
                        "keep the polygon farther from the edge of travel",
                    )
                )
        per_section = {sid: len(c) for sid, c in tiles.items()}
        total = sum(per_section.values())
        n_images = total * len(plan.channels) * plan.n_z_slices
        bytes_per_pixel = max(_STORED_BYTES_PER_PIXEL, int(core.getBytesPerPixel()))
        summary = PlanSummary(
            tiles_per_section=per_section,
            total_tiles=total,
            n_images=n_images,
            tile_size_um=tile,
            pixel_size_um=pixel_size,
            image_size_px=(width_px, height_px),
            estimated_bytes=n_images * width_px * height_px * bytes_per_pixel,
        )

    problems.extend(
        _output_problems(
            plan.output,
            overwrite=overwrite,
            resume=resume,
            estimated_bytes=summary.estimated_bytes if summary is not None else None,
            disk_free_bytes=disk_free_bytes or _disk_free,
        )
    )
    if problems or summary is None:
        raise PlanError(problems)
    return summary


# ================================================================== compiling


def section_tiles(plan: ScanPlan, *, tile_size_um: tuple[float, float]) -> dict[str, NDArray[np.float64]]:
    """Tile centres covering each section's polygon, in scan order.

    Tiles come from useq's polygon grid (``GridFromPolygon``): a grid
    anchored at the polygon's bounding box, keeping only tiles that touch
    the polygon, visited row by row in serpentine order. Every point of the
    polygon lies in at least one tile.

    Parameters
    ----------
    plan : ScanPlan
    tile_size_um : (float, float)
        Field of view (width, height) in µm, see :func:`tile_size_um`.

    Returns
    -------
    dict of str to (n_tiles, 2) float64 array
        Stage (x, y) of each tile centre (µm), per section id in plan order.
    """
    width, height = (float(v) for v in tile_size_um)
    if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
        raise ValueError(f"tile_size_um must be two positive numbers, got {tile_size_um!r}")
    out: dict[str, NDArray[np.float64]] = {}
    for section in plan.sections:
        grid = useq.GridFromPolygon(
            vertices=section.polygon_um,
            fov_width=width,
            fov_height=height,
            overlap=(plan.overlap_pct, plan.overlap_pct),
            mode=useq.OrderMode.row_wise_snake,
        )
        centres = np.array([(p.x, p.y) for p in grid.iter_grid_positions()], dtype=np.float64).reshape(-1, 2)
        if len(centres) == 0:  # cannot happen for a valid polygon; never scan nothing silently
            raise ValueError(f"section {section.id!r}: the polygon grid has no tiles")
        out[section.id] = centres
    return out


class PlannedTile(NamedTuple):
    """One tile to acquire: which section, which tile, where and at what focus."""

    section_id: str
    tile_index: int
    x_um: float
    y_um: float
    z_um: float | None  # None: the current focus


def plan_tiles(
    plan: ScanPlan,
    *,
    tile_size_um: tuple[float, float],
    focus_z_um: Callable[[str, float, float], float] | None = None,
) -> list[PlannedTile]:
    """Every tile of the plan in scan order, with its focus.

    Parameters
    ----------
    plan : ScanPlan
    tile_size_um : (float, float)
        Field of view (width, height) in µm, see :func:`tile_size_um`.
    focus_z_um : callable, optional
        ``f(section_id, x_um, y_um) -> z_um``: the focus of each tile (e.g.
        from a focus map). Without it, tiles use ``plan.focus.z_um`` (None:
        the current focus).

    Raises
    ------
    PlanError
        If the plan asks for a focus map and no ``focus_z_um`` is given.
    """
    if plan.focus.strategy == "focus_map" and focus_z_um is None:
        raise PlanError(
            [
                PlanProblem(
                    "focus.strategy",
                    "is 'focus_map': the focus of each tile (focus_z_um) must be given to compile the plan",
                )
            ]
        )
    tiles: list[PlannedTile] = []
    for section_id, centres in section_tiles(plan, tile_size_um=tile_size_um).items():
        for k, (x, y) in enumerate(centres):
            xf, yf = float(x), float(y)
            z = float(focus_z_um(section_id, xf, yf)) if focus_z_um is not None else plan.focus.z_um
            tiles.append(PlannedTile(section_id, k, xf, yf, z))
    return tiles


def sequence_for_tiles(
    plan: ScanPlan,
    tiles: Sequence[PlannedTile],
    *,
    tile_size_um: tuple[float, float] | None = None,
) -> useq.MDASequence:
    """Build the ``useq.MDASequence`` that acquires ``tiles`` (a whole plan, or what is left to resume).

    One stage position per tile, in the given order, named
    ``"<section id>/<tile index:04d>"``. The axis order ``"pcz"`` images
    every channel (and, per channel, every z-slice) at a tile before the
    stage moves on, changing the filter once per channel and tile. A z-stack
    is relative to each tile's z.

    Returns
    -------
    useq.MDASequence
        With ``metadata["cordscope"]`` = ``{"plan_name", "objective",
        "objective_group", "tile_size_um" (None if not given), "overlap_pct",
        "sections": {id: {"n_tiles", "first_position"}}, "tiles":
        [[section_id, tile_index, x_um, y_um], ...]}``: ``tiles[event.index
        ["p"]]`` names the tile of an event; ``n_tiles`` counts the section's
        tiles in this sequence.
    """
    positions: list[useq.Position] = []
    tile_table: list[list[Any]] = []
    sections_meta: dict[str, dict[str, int]] = {}
    for p, tile in enumerate(tiles):
        sid, k = str(tile.section_id), int(tile.tile_index)
        x, y = float(tile.x_um), float(tile.y_um)
        z = float(tile.z_um) if tile.z_um is not None else None
        positions.append(useq.Position(x=x, y=y, z=z, name=f"{sid}/{k:04d}"))
        tile_table.append([sid, k, x, y])
        meta = sections_meta.setdefault(sid, {"n_tiles": 0, "first_position": p})
        meta["n_tiles"] += 1
    channels = [
        useq.Channel(config=ch.preset, group=plan.channel_group, exposure=ch.exposure_ms)
        for ch in plan.channels
    ]
    metadata = {
        "cordscope": {
            "plan_name": plan.name,
            "objective": plan.objective,
            "objective_group": plan.objective_group,
            "tile_size_um": [float(v) for v in tile_size_um] if tile_size_um is not None else None,
            "overlap_pct": plan.overlap_pct,
            "sections": sections_meta,
            "tiles": tile_table,
        }
    }
    return useq.MDASequence(
        stage_positions=tuple(positions),
        channels=tuple(channels),
        z_plan=plan.z_stack.to_useq() if plan.z_stack is not None else None,
        axis_order=("p", "c", "z"),
        metadata=metadata,
    )


def compile_plan(
    plan: ScanPlan,
    *,
    tile_size_um: tuple[float, float],
    focus_z_um: Callable[[str, float, float], float] | None = None,
) -> useq.MDASequence:
    """Turn a plan into the ``useq.MDASequence`` the MDA runner executes.

    Every tile of every section (:func:`section_tiles`), sections in plan
    order, tiles in serpentine order within a section, all channels (and
    z-slices) at a tile before the stage moves on; see
    :func:`sequence_for_tiles` for the positions, names and the tile table
    in ``metadata["cordscope"]``.

    Parameters
    ----------
    plan : ScanPlan
        A validated plan (see :func:`validate_plan`).
    tile_size_um : (float, float)
        Field of view (width, height) in µm, see :func:`tile_size_um`.
    focus_z_um : callable, optional
        ``f(section_id, x_um, y_um) -> z_um``: the focus of each tile (e.g.
        from a focus map). Without it, tiles use ``plan.focus.z_um`` (None:
        the current focus).

    Raises
    ------
    PlanError
        If the plan asks for a focus map and no ``focus_z_um`` is given.
    """
    tiles = plan_tiles(plan, tile_size_um=tile_size_um, focus_z_um=focus_z_um)
    return sequence_for_tiles(plan, tiles, tile_size_um=tile_size_um)


# ======================================================================= demo


def _section_polygon(outline: Any, margin_um: float, max_vertices: int = 64) -> list[Vertex]:
    """Return the outline's convex hull, simplified, grown by ``margin_um`` (≤ max_vertices)."""
    hull = Polygon(np.asarray(outline, dtype=np.float64)).convex_hull
    tolerance = max(margin_um / 5.0, 1.0)
    while True:
        # simplifying cuts inward by at most `tolerance`; the buffer restores the margin
        shape = hull.simplify(tolerance).buffer(margin_um + tolerance, quad_segs=2, join_style="round")
        coords = list(shape.exterior.coords)[:-1]
        if len(coords) <= max_vertices:
            return [(round(float(x), 1), round(float(y), 1)) for x, y in coords]
        tolerance *= 2.0


def demo_plan(
    *,
    output: Path,
    objective: str = "10x",
    name: str = "demo-slide",
    hardware_config: Path | None = None,
    overlap_pct: float = 10.0,
    anatomy_exposure_ms: float = 20.0,
    tracer_exposure_ms: float = 50.0,
    margin_um: float = 50.0,
    slide: Any = None,
    section_ids: Sequence[str] | None = None,
    focus: Mapping[str, Any] | None = None,
) -> ScanPlan:
    """Build the plan that scans every section of the demo slide.

    Parameters
    ----------
    output : Path
        Scan file to write.
    objective : str
        Objective preset of the demo config ("4x", "10x", "20x").
    name, hardware_config, overlap_pct : see :class:`ScanPlan`
    anatomy_exposure_ms, tracer_exposure_ms : float
        Exposures of the DAPI (anatomy) and tdTomato (tracer) channels.
    margin_um : float
        How far each section polygon lies outside the tissue outline's convex
        hull (µm), so the tissue edge is imaged.
    slide : VirtualSlide, optional
        The demo slide (default ``acquisition.demo.slide.demo_slide()``).
    section_ids : sequence of str, optional
        Scan only these sections (in this order); default: every section.
    focus : mapping, optional
        :class:`FocusSettings` fields; default: a focus map (the demo slide
        is tilted by about 20 µm over its width, as real slides are).
    """
    if slide is None:
        from acquisition.demo.slide import demo_slide

        slide = demo_slide()
    sections: list[dict[str, Any]] = []
    truths = list(slide.sections)
    if section_ids is not None:
        by_id = {t.spec.section_id: t for t in truths}
        unknown = [sid for sid in section_ids if sid not in by_id]
        if unknown:
            raise ValueError(f"not on the demo slide: {', '.join(unknown)} (sections: {', '.join(by_id)})")
        truths = [by_id[sid] for sid in section_ids]
    for truth in truths:
        spec = getattr(truth, "spec", truth)
        orientation = getattr(spec, "orientation", "coronal")
        section: dict[str, Any] = {
            "id": getattr(spec, "section_id", None) or truth.section_id,
            "polygon_um": _section_polygon(truth.outline, margin_um),
            "animal": getattr(spec, "animal", ""),
            "group": getattr(spec, "group", ""),
            "level": getattr(spec, "level", ""),
            "orientation": orientation,
            "injection_side": getattr(spec, "injection_side", None),
        }
        # The epicenter is left for the analysis to find (the cavity); the
        # mounting direction (rostral) is what a user knows and writes down.
        rostral = getattr(truth, "rostral_direction", None)
        if orientation == "horizontal" and rostral is not None:
            section["rostral_direction_deg"] = round(math.degrees(math.atan2(rostral[1], rostral[0])), 2)
        sections.append(section)
    return plan_from_dict(
        {
            "name": name,
            # absolute, so the plan file works from any folder
            "hardware_config": hardware_config if hardware_config is not None else DEMO_CONFIG,
            "output": output,
            "objective": objective,
            "channels": [
                {"preset": "DAPI", "exposure_ms": anatomy_exposure_ms, "role": "anatomy"},
                {"preset": "tdTomato", "exposure_ms": tracer_exposure_ms, "role": "tracer"},
            ],
            "overlap_pct": overlap_pct,
            "focus": dict(focus) if focus is not None else {"strategy": "focus_map"},
            "sections": sections,
        },
        source="demo_plan",
    )
