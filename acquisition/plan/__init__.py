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

Relative paths in a plan file (``hardware_config``, ``output``, flat-field
images) mean files beside the plan: :func:`load_plan` makes them absolute
against the plan's folder (:func:`resolve_plan_paths`), wherever the command runs.
"""

from .analysis_settings import AnalysisSettings
from .checks import (
    PlanSummary,
    covered_extent_um,
    pixel_affine_for_objective,
    pixel_size_for_objective,
    resolve_plan_groups,
    stage_limits_for,
    tile_size_um,
    validate_plan,
)
from .compile import PlannedTile, compile_plan, plan_tiles, section_tiles, sequence_for_tiles
from .model import (
    DEFAULT_HARDWARE_CONFIG,
    PLAN_FORMAT,
    PLAN_VERSION,
    AdaptiveSettings,
    ChannelSetting,
    FocusSettings,
    PlanError,
    PlanProblem,
    ReliabilitySettings,
    RetakeSettings,
    ScanPlan,
    SectionPlan,
    ZStack,
)
from .yaml_io import load_plan, plan_from_dict, plan_from_yaml, resolve_plan_paths, save_plan

__all__ = [
    "DEFAULT_HARDWARE_CONFIG",
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "AdaptiveSettings",
    "AnalysisSettings",
    "ChannelSetting",
    "FocusSettings",
    "PlanError",
    "PlanProblem",
    "PlanSummary",
    "PlannedTile",
    "ReliabilitySettings",
    "RetakeSettings",
    "ScanPlan",
    "SectionPlan",
    "ZStack",
    "compile_plan",
    "covered_extent_um",
    "load_plan",
    "pixel_affine_for_objective",
    "pixel_size_for_objective",
    "plan_from_dict",
    "plan_from_yaml",
    "plan_tiles",
    "resolve_plan_groups",
    "resolve_plan_paths",
    "save_plan",
    "section_tiles",
    "sequence_for_tiles",
    "stage_limits_for",
    "tile_size_um",
    "validate_plan",
]
