"""The scan plan's model: every setting typed, with a unit and a default, validated once.

Nothing here touches the hardware: :mod:`acquisition.plan.checks` checks a validated plan
against a loaded core and the disk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import useq
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from shapely import Polygon
from shapely.validation import explain_validity

from ..errors import CordScopeError
from ..storage.format import HDF5_OVERHEAD
from .analysis_settings import AnalysisSettings

PLAN_FORMAT: Final = "cordscope-plan"
PLAN_VERSION: Final = 1
DEFAULT_HARDWARE_CONFIG = Path("hardware_configs/demo.cfg")

#: Free disk needed, as a multiple of the estimated file size (HDF5 overhead,
#: analysis results written next to the tiles), plus the writer's reserve:
#: :func:`acquisition.storage.required_free_bytes`.
DISK_MARGIN = HDF5_OVERHEAD
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
        default=30.0, gt=0, le=3600, description="Time allowed for one device call (move, focus, snap) (s)."
    )
    fsync: Literal["off", "per_tile"] = Field(
        default="off",
        description="'per_tile': make every tile durable on the disk before and after its status "
        "(os.fsync), so a power cut never leaves a tile marked done without its pixels; slower "
        "(see benchmarks/bench_scan_throughput.py). 'off': the operating system writes when it likes; "
        "a killed scan is still safe.",
    )

    @field_validator("fsync", mode="before")
    @classmethod
    def _off_is_off(cls, value: Any) -> Any:
        # YAML reads a bare `off` as false
        return "off" if value is False else value


#: Region names the analysis computes on every section (horizontal sections add ``rc_<a>_<b>`` bins).
ANALYSIS_REGIONS: Final = (
    "section",
    "white_matter",
    "gray_matter",
    "rubrospinal_territory",
    "left",
    "right",
    "dorsal",
    "ventral",
)


class RetakeSettings(_PlanModel):
    """Sharpness check of every tile, with local refocus and retake of blurred tiles.

    Each tile's anatomy image is scored (:func:`acquisition.focus.sharpness`)
    where it overlaps tiles already acquired: the same piece of tissue, so a
    lower score means blur, not other content (see :mod:`acquisition.retake`).
    A tile with no neighbour to compare with, estimated below
    ``probe_below_ratio`` of its best focus, or blurred in its middle, is
    probed ``probe_step_um`` above and below its focus; if either is sharper it
    is refocused locally and retaken, at most ``max_retakes`` times. Applies
    to plans with a focus map and one plane per tile (a fixed plane is imaged
    as asked; a z-stack samples focus already).
    """

    enabled: bool = Field(default=True, description="Check every tile's sharpness and retake blurred ones.")
    max_retakes: int = Field(default=2, ge=0, le=5, description="Retakes of one tile, at most.")
    min_sharpness_ratio: float = Field(
        default=0.9,
        gt=0,
        lt=1,
        description="A tile whose sharpness estimate (from its overlaps with acquired neighbours, as "
        "a fraction of best focus) stays below this is blurred: retaken again, or flagged.",
    )
    probe_below_ratio: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="A tile estimated below this (or with no neighbour to compare with) is first "
        "probed above and below its focus.",
    )
    min_texture_ratio: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="A tile whose middle has less fine detail (sharpness over that after a slight "
        "blur) than this fraction of the tiles found in focus so far is probed.",
    )
    refocus_range_um: float = Field(
        default=12.0, gt=0, description="Full range of the local focus search before a retake (µm)."
    )
    refocus_step_um: float = Field(default=1.5, gt=0, description="Step of the local focus search (µm).")
    probe_step_um: float = Field(
        default=1.5,
        gt=0,
        description="A tile with no acquired neighbour to compare with is also imaged this far "
        "above and below its focus (µm); if either is sharper, it is refocused.",
    )
    min_probe_gain: float = Field(
        default=0.05,
        ge=0,
        description="Relative sharpness gain above or below the focus that counts as out of focus.",
    )
    min_tissue_fraction: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Overlaps (and probed tiles) with less tissue than this fraction are not compared.",
    )
    tissue_min_adu: float = Field(
        default=10.0,
        gt=0,
        description="Anatomy signal above the dark offset (ADU, 4×4-pixel mean) that counts as tissue.",
    )

    @model_validator(mode="after")
    def _step_fits_range(self) -> RetakeSettings:
        if self.probe_below_ratio < self.min_sharpness_ratio:
            raise _FieldProblems(
                [
                    (
                        ("probe_below_ratio",),
                        f"must be >= min_sharpness_ratio ({self.min_sharpness_ratio:g}) "
                        f"(got {self.probe_below_ratio:g})",
                    )
                ]
            )
        if self.refocus_step_um > self.refocus_range_um:
            raise _FieldProblems(
                [
                    (
                        ("refocus_step_um",),
                        f"must be <= refocus_range_um ({self.refocus_range_um:g}) "
                        f"(got {self.refocus_step_um:g})",
                    )
                ]
            )
        return self


class AdaptiveSettings(_PlanModel):
    """A second pass at a higher magnification where the first pass shows signal in a region.

    After the scan, the tiles' live analysis gives each section's region
    masks and % axonal area map; the pass images, with ``objective``, the
    part of ``region`` whose 50 µm bins show at least
    ``min_pct_axonal_area``. The file keeps both resolutions; the analysis
    uses the higher one where it has it (see ``imaged_at_hires_fraction`` in
    the region tables).
    """

    objective: str = Field(default="20x", min_length=1, description="Preset of objective_group for the pass.")
    region: str = Field(
        default="rubrospinal_territory",
        min_length=1,
        description="Region imaged again (an analysis region, or a region of region_polygons_um).",
    )
    min_pct_axonal_area: float = Field(
        default=0.5,
        ge=0,
        le=100,
        description="Only bins of the first pass's % axonal area map at or above this are imaged (%).",
    )
    channels: Literal["tracer", "all"] = Field(
        default="tracer",
        description="'tracer': only the tracer channel (regions come from the first pass's anatomy); "
        "'all': every channel of the plan.",
    )
    z_offset_um: float = Field(
        default=0.0, description="Focus of the pass's objective minus that of the scan objective (µm)."
    )
    edge_fraction: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Axon edge at this fraction of the object's peak in the pass's images (null: "
        "analysis.edge_fraction). Less blur at a higher magnification puts the true edge at a "
        "lower fraction: 0.55 at 20x on the demo slide, against 0.6 at 10x.",
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
    objective_group: str | None = Field(
        default=None,
        min_length=1,
        description="Config group that selects the objective; null: the group whose presets select the "
        "pixel-size configurations.",
    )
    objective: str = Field(default="10x", min_length=1, description="Preset of objective_group to scan with.")
    channel_group: str | None = Field(
        default=None,
        min_length=1,
        description="Config group of the channel presets; null: the core's ChannelGroup, else the group "
        "pymmcore-plus guesses, else the only group that switches a filter/state device.",
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
    tiling: Literal["minimal", "grid"] = Field(
        default="minimal",
        description="'minimal': per section the fewest tiles that cover the polygon at overlap_pct "
        "(rows of tiles, each row covering its band of the polygon); 'grid': useq's polygon grid.",
    )
    outline_margin_um: float = Field(
        default=30.0,
        ge=0,
        description="Margin between the tissue and the section outlines found on the overview (µm).",
    )
    channel_order: Literal["fixed", "alternate"] = Field(
        default="alternate",
        description="'alternate': each tile starts with the channel the filter is in (one switch per "
        "tile instead of one per channel); 'fixed': the channels' order at every tile.",
    )
    retake: RetakeSettings = Field(
        default=RetakeSettings(), description="Sharpness check and retake of blurred tiles."
    )
    adaptive: AdaptiveSettings | None = Field(
        default=None, description="Optional second pass at a higher magnification (null: none)."
    )
    sections: list[SectionPlan] = Field(min_length=1, description="Sections to tile, in scan order.")
    analysis: AnalysisSettings = Field(
        default_factory=AnalysisSettings,
        description="How the tiles are analysed (see acquisition.plan.analysis_settings).",
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

    @model_validator(mode="after")
    def _adaptive_region_exists(self) -> ScanPlan:
        if self.adaptive is None:
            return self
        region = self.adaptive.region
        drawn = {name for s in self.sections for name in s.region_polygons_um}
        if region in ANALYSIS_REGIONS or region in drawn or re.fullmatch(r"rc_-?\d+_-?\d+", region):
            return self
        known = ", ".join([*ANALYSIS_REGIONS, *sorted(drawn)])
        raise _FieldProblems([(("adaptive", "region"), f"unknown region {region!r} (regions: {known})")])

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
    def groups(self) -> tuple[str, str]:
        """(channel_group, objective_group) once decided (:func:`acquisition.plan.resolve_plan_groups`).

        Raises
        ------
        PlanError
            If the plan leaves a group to be decided from the hardware config and it was not yet.
        """
        if self.channel_group is None or self.objective_group is None:
            missing = "channel_group" if self.channel_group is None else "objective_group"
            raise PlanError(
                [
                    PlanProblem(
                        missing, "not decided yet: resolve the plan's groups against the hardware config"
                    )
                ]
            )
        return self.channel_group, self.objective_group

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
