"""Where the slide lies on a rig's stage, how far the stage travels, and what CordScope decided.

A ``.cfg`` says which devices a rig has, not where its slide sits. A small
**rig profile** beside it, ``<cfg stem>.rig.yaml``, says so::

    # demo.rig.yaml
    xy_travel: {x_min_um: 0, x_max_um: 75000, y_min_um: 0, y_max_um: 25000}
    focus_travel: {z_min_um: -2000, z_max_um: 2000}
    slide:
      corner_um: [0, 0]        # stage position of the slide corner with the smallest x and y
      width_um: 75000          # along stage X
      height_um: 25000         # along stage Y
      label_end: x_min         # the end that carries the label: x_min, x_max, y_min, y_max or none
      label_length_um: 20000
    calibration:               # optional: where cordscope calibrate / flatfield image
      bead_xy_um: [73600, 12500]

Every field is optional. Stage travel comes from, in order: the rig
profile; the limits the stage adapter reports (read-only properties
``TravelXMin_um`` … ``TravelYMax_um`` on an XY stage, ``TravelMin_um`` /
``TravelMax_um`` or the ``Position`` property's limits on a focus drive —
MMCore 11/12 offers no call for an adapter's own limits, and Micro-Manager's
C++ ``DXYStage`` reports none); else it is unknown, and positions can only
be checked against the slide frame (:meth:`ResolvedRig.xy_limits_um` says
so). Without a profile the slide is a 75 × 25 mm slide with its corner at
the stage origin and its label at the x_min end (the demo microscope's).

:func:`rig_profile_for` resolves all of it with the source of each value;
:func:`describe_rig` reports everything CordScope decided about a rig
(groups, pixel sizes and affines per objective, travel, camera) for
``cordscope devices``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .hardware import ConfigError
from .roles import (
    GroupDecision,
    RoleError,
    camera_binning,
    decide_channel_group,
    decide_objective_group,
    pixel_affine_for_config_um,
    preset_pixel_configs,
)

if TYPE_CHECKING:
    from pymmcore_plus import CMMCorePlus

__all__ = [
    "CalibrationPositions",
    "CameraDescription",
    "FocusTravel",
    "ObjectivePixels",
    "ResolvedRig",
    "RigDescription",
    "RigProfile",
    "RigProfileError",
    "SlideFrame",
    "XYTravel",
    "describe_rig",
    "load_rig_profile",
    "rig_profile_for",
    "rig_profile_path",
]

#: A rig profile is a few lines; anything larger is not one.
MAX_PROFILE_BYTES = 64 * 1024

Bounds = tuple[float, float, float, float]  # x0, y0, x1, y1 (µm)


class RigProfileError(ConfigError):
    """A rig profile cannot be used, or the slide frame does not fit the stage; the message says why."""


# ------------------------------------------------------------------ model


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class XYTravel(_Model):
    """How far the XY stage travels, in its own coordinates (µm)."""

    x_min_um: float
    x_max_um: float
    y_min_um: float
    y_max_um: float

    @model_validator(mode="after")
    def _ordered(self) -> XYTravel:
        if not (self.x_min_um < self.x_max_um and self.y_min_um < self.y_max_um):
            raise ValueError(
                "needs x_min_um < x_max_um and y_min_um < y_max_um "
                f"(got X {self.x_min_um:g}..{self.x_max_um:g}, Y {self.y_min_um:g}..{self.y_max_um:g})"
            )
        return self

    def contains(self, x_um: float, y_um: float) -> bool:
        """Whether a stage position lies within the travel."""
        return self.x_min_um <= x_um <= self.x_max_um and self.y_min_um <= y_um <= self.y_max_um

    def bounds_um(self) -> Bounds:
        """(x0, y0, x1, y1) µm."""
        return (self.x_min_um, self.y_min_um, self.x_max_um, self.y_max_um)


class FocusTravel(_Model):
    """How far the focus drive travels (µm)."""

    z_min_um: float
    z_max_um: float

    @model_validator(mode="after")
    def _ordered(self) -> FocusTravel:
        if not self.z_min_um < self.z_max_um:
            raise ValueError(f"needs z_min_um < z_max_um (got {self.z_min_um:g}..{self.z_max_um:g})")
        return self


LabelEnd = Literal["x_min", "x_max", "y_min", "y_max", "none"]


class SlideFrame(_Model):
    """Where the slide lies on the stage and which end carries its label."""

    corner_um: tuple[float, float] = Field(
        default=(0.0, 0.0), description="Stage position (µm) of the slide corner with the smallest x and y."
    )
    width_um: float = Field(default=75_000.0, gt=0, description="Extent of the slide along stage X (µm).")
    height_um: float = Field(default=25_000.0, gt=0, description="Extent of the slide along stage Y (µm).")
    label_end: LabelEnd = Field(default="x_min", description="The end of the slide that carries the label.")
    label_length_um: float = Field(default=20_000.0, ge=0, description="How far the label reaches in (µm).")

    @model_validator(mode="after")
    def _label_fits(self) -> SlideFrame:
        extent = self.width_um if self.label_end in ("x_min", "x_max") else self.height_um
        if self.label_end != "none" and self.label_length_um >= extent:
            raise ValueError(
                f"label_length_um {self.label_length_um:g} leaves no slide beside the label "
                f"(the slide is {extent:g} µm along the label's axis)"
            )
        return self

    def bounds_um(self) -> Bounds:
        """(x0, y0, x1, y1) of the whole slide, µm."""
        x0, y0 = self.corner_um
        return (x0, y0, x0 + self.width_um, y0 + self.height_um)

    def region_beside_label_um(self) -> Bounds:
        """(x0, y0, x1, y1) of the slide without its label end, µm: where sections can lie."""
        x0, y0, x1, y1 = self.bounds_um()
        n = self.label_length_um
        if self.label_end == "x_min":
            return (x0 + n, y0, x1, y1)
        if self.label_end == "x_max":
            return (x0, y0, x1 - n, y1)
        if self.label_end == "y_min":
            return (x0, y0 + n, x1, y1)
        if self.label_end == "y_max":
            return (x0, y0, x1, y1 - n)
        return (x0, y0, x1, y1)


class CalibrationPositions(_Model):
    """Where the rig's calibration specimens sit on the stage (``cordscope calibrate`` / ``flatfield``)."""

    bead_xy_um: tuple[float, float] | None = Field(
        default=None, description="Stage position (µm) of a bead area (sub-resolution beads) to image."
    )
    blank_xy_um: tuple[float, float] | None = Field(
        default=None, description="Stage position (µm) of a uniformly fluorescent area (a dye slide)."
    )


class RigProfile(_Model):
    """The contents of a ``<cfg stem>.rig.yaml``; every field optional."""

    xy_travel: XYTravel | None = None
    focus_travel: FocusTravel | None = None
    slide: SlideFrame | None = None
    calibration: CalibrationPositions | None = None


# ------------------------------------------------------------------ loading


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = f" (got {err.get('input')!r})"
    if kind == "extra_forbidden":
        message = "unknown field"
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "value_error":
        message = str(err["msg"]).removeprefix("Value error, ")
    elif kind == "greater_than":
        message = f"must be > {ctx['gt']:g}{got}"
    elif kind == "greater_than_equal":
        message = f"must be >= {ctx['ge']:g}{got}"
    elif kind == "literal_error":
        message = f"must be {ctx['expected']}{got}"
    elif kind in ("float_type", "float_parsing", "finite_number"):
        message = f"must be a finite number{got}"
    else:
        message = str(err["msg"]).replace("Input should be", "must be") + got
    return f"{loc}: {message}" if loc else message


def rig_profile_path(config_path: str | Path) -> Path:
    """Where the rig profile of a ``.cfg`` lives: ``<cfg stem>.rig.yaml`` beside it."""
    cfg = Path(config_path)
    return cfg.with_name(cfg.stem + ".rig.yaml")


def load_rig_profile(path: str | Path) -> RigProfile:
    """Read and validate a rig profile.

    Raises
    ------
    RigProfileError
        With one line naming the file, the field and what is wrong. YAML
        anchors and aliases are refused (a few lines of them can expand
        into billions of nodes); so are files over 64 KiB.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise RigProfileError(f"{p.name}: cannot read the rig profile: {e.strerror or e}") from e
    if len(raw) > MAX_PROFILE_BYTES:
        raise RigProfileError(
            f"{p.name}: {len(raw)} bytes is not a rig profile (at most {MAX_PROFILE_BYTES})"
        )
    try:
        text = raw.decode("utf-8")
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise RigProfileError(
                    f"{p.name}: YAML anchors and aliases are not allowed; write the values out"
                )
        data = yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise RigProfileError(f"{p.name}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise RigProfileError(f"{p.name}: not valid YAML{line}: {getattr(e, 'problem', None) or e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RigProfileError(f"{p.name}: must be a mapping of fields (xy_travel, focus_travel, slide)")
    try:
        return RigProfile.model_validate(data)
    except ValidationError as e:
        raise RigProfileError(f"{p.name}: {_describe(e.errors()[0])}") from e


# ------------------------------------------------------------------ resolving

_XY_LIMIT_PROPERTIES = ("TravelXMin_um", "TravelXMax_um", "TravelYMin_um", "TravelYMax_um")
_Z_LIMIT_PROPERTIES = ("TravelMin_um", "TravelMax_um")


def _xy_travel_from_adapter(core: CMMCorePlus) -> tuple[XYTravel | None, str]:
    stage = str(core.getXYStageDevice())
    if not stage:
        return None, "no XY stage"
    if not all(core.hasProperty(stage, p) for p in _XY_LIMIT_PROPERTIES):
        return None, f"XY stage {stage!r} reports no travel limits"
    try:
        x0, x1, y0, y1 = (float(core.getProperty(stage, p)) for p in _XY_LIMIT_PROPERTIES)
        travel = XYTravel(x_min_um=x0, x_max_um=x1, y_min_um=y0, y_max_um=y1)
    except (ValueError, ValidationError) as e:
        return None, f"XY stage {stage!r} reports unusable travel limits ({str(e).splitlines()[0]})"
    return travel, f"XY stage {stage!r} reports it ({', '.join(_XY_LIMIT_PROPERTIES)})"


def _focus_travel_from_adapter(core: CMMCorePlus) -> tuple[FocusTravel | None, str]:
    stage = str(core.getFocusDevice())
    if not stage:
        return None, "no focus drive"
    try:
        if all(core.hasProperty(stage, p) for p in _Z_LIMIT_PROPERTIES):
            z0, z1 = (float(core.getProperty(stage, p)) for p in _Z_LIMIT_PROPERTIES)
            how = ", ".join(_Z_LIMIT_PROPERTIES)
        elif core.hasProperty(stage, "Position") and core.hasPropertyLimits(stage, "Position"):
            z0 = float(core.getPropertyLowerLimit(stage, "Position"))
            z1 = float(core.getPropertyUpperLimit(stage, "Position"))
            how = "limits of its Position property"
        else:
            return None, f"focus drive {stage!r} reports no travel limits"
        return FocusTravel(z_min_um=z0, z_max_um=z1), f"focus drive {stage!r} reports it ({how})"
    except (ValueError, ValidationError) as e:
        return None, f"focus drive {stage!r} reports unusable travel limits ({str(e).splitlines()[0]})"


@dataclass(frozen=True)
class ResolvedRig:
    """A rig's slide frame and travel, each with where it came from.

    Attributes
    ----------
    profile_path : Path or None
        The rig profile read, if there was one.
    slide, slide_source
        The slide frame, and "rig profile <file>" or the default's description.
    xy_travel, xy_travel_source
        Stage travel (None: unknown) and its source, or why it is unknown.
    focus_travel, focus_travel_source
        Likewise for the focus drive.
    """

    profile_path: Path | None
    slide: SlideFrame
    slide_source: str
    xy_travel: XYTravel | None
    xy_travel_source: str
    focus_travel: FocusTravel | None
    focus_travel_source: str

    @property
    def travel_known(self) -> bool:
        """Whether the XY travel is known (else positions can be checked against the slide only)."""
        return self.xy_travel is not None

    def xy_limits_um(self) -> tuple[XYTravel, str]:
        """Limits to check stage positions against, and what they are.

        Returns
        -------
        (XYTravel, str)
            The stage travel and its source; when the travel is unknown,
            the slide frame and a note saying that only the slide frame
            could be checked.
        """
        if self.xy_travel is not None:
            return self.xy_travel, f"stage travel ({self.xy_travel_source})"
        x0, y0, x1, y1 = self.slide.bounds_um()
        frame = XYTravel(x_min_um=x0, x_max_um=x1, y_min_um=y0, y_max_um=y1)
        return frame, (
            f"the slide frame only ({self.slide_source}): stage travel unknown, {self.xy_travel_source}"
        )

    def overview_region_um(self) -> Bounds:
        """The overview's default region: the slide beside its label, within the stage travel.

        Raises
        ------
        RigProfileError
            If that region lies outside the known stage travel (e.g. a stage
            whose slide sits at negative coordinates and no rig profile).
        """
        x0, y0, x1, y1 = self.slide.region_beside_label_um()
        if self.xy_travel is None:
            return (x0, y0, x1, y1)
        t = self.xy_travel
        cx0, cy0 = max(x0, t.x_min_um), max(y0, t.y_min_um)
        cx1, cy1 = min(x1, t.x_max_um), min(y1, t.y_max_um)
        if cx0 >= cx1 or cy0 >= cy1:
            fix = (
                f"fix slide: in {self.profile_path.name}"
                if self.profile_path is not None
                else "describe the slide's position in a rig profile (<cfg stem>.rig.yaml)"
            )
            raise RigProfileError(
                f"the slide beside its label (X {x0:g}..{x1:g}, Y {y0:g}..{y1:g} µm; {self.slide_source}) "
                f"lies outside the stage travel (X {t.x_min_um:g}..{t.x_max_um:g}, "
                f"Y {t.y_min_um:g}..{t.y_max_um:g} µm; {self.xy_travel_source}); {fix}"
            )
        return (cx0, cy0, cx1, cy1)


DEFAULT_SLIDE_SOURCE = "default: a 75 × 25 mm slide, corner at the stage origin, label at x_min"


def rig_profile_for(core: CMMCorePlus, config_path: str | Path | None = None) -> ResolvedRig:
    """Resolve a rig's slide frame and travel, with the source of each.

    Parameters
    ----------
    core : CMMCorePlus
        The core with the configuration loaded (asked for adapter limits).
    config_path : str or Path, optional
        The ``.cfg``; default: the core's ``systemConfigurationFile()``.
        Its rig profile is ``<cfg stem>.rig.yaml`` beside it.

    Returns
    -------
    ResolvedRig

    Raises
    ------
    RigProfileError
        If the rig profile exists but cannot be used.
    """
    cfg = config_path if config_path is not None else (core.systemConfigurationFile() or None)
    path = rig_profile_path(cfg) if cfg else None
    profile = load_rig_profile(path) if path is not None and path.is_file() else RigProfile()
    where = f"rig profile {path.name}" if path is not None and path.is_file() else ""
    no_profile = f"no rig profile ({path.name})" if path is not None else "no rig profile"

    xy: XYTravel | None
    z: FocusTravel | None
    if profile.xy_travel is not None:
        xy, xy_source = profile.xy_travel, where
    else:
        xy, why = _xy_travel_from_adapter(core)
        xy_source = why if xy is not None else f"unknown: {no_profile} and {why}"
    if profile.focus_travel is not None:
        z, z_source = profile.focus_travel, where
    else:
        z, why = _focus_travel_from_adapter(core)
        z_source = why if z is not None else f"unknown: {no_profile} and {why}"
    slide, slide_source = (
        (profile.slide, where) if profile.slide is not None else (SlideFrame(), DEFAULT_SLIDE_SOURCE)
    )
    return ResolvedRig(
        profile_path=path if where else None,
        slide=slide,
        slide_source=slide_source,
        xy_travel=xy,
        xy_travel_source=xy_source,
        focus_travel=z,
        focus_travel_source=z_source,
    )


# ------------------------------------------------------------------ the rig, described

Matrix2 = tuple[tuple[float, float], tuple[float, float]]


@dataclass(frozen=True)
class ObjectivePixels:
    """Pixel size and affine one objective preset selects (camera binning applied)."""

    preset: str
    pixel_config: str  # "" when the preset selects none
    pixel_size_um: float  # 0 when unknown
    affine_um: Matrix2 | None
    affine_source: str
    #: how far sqrt|det A| is from PixelSize_um (%), when the .cfg declares an affine
    scale_mismatch_pct: float | None = None


@dataclass(frozen=True)
class CameraDescription:
    """The current camera as CordScope will store it."""

    label: str
    bit_depth: int
    pixel_type: str
    binning: int
    roi_px: tuple[int, int, int, int]  # x, y, width, height
    image_size_px: tuple[int, int]  # width, height


@dataclass(frozen=True)
class RigDescription:
    """What CordScope decided about a loaded configuration, and why (``cordscope devices``)."""

    config_file: str
    channel: GroupDecision | None
    channel_problem: str
    channel_presets: tuple[str, ...]
    objective: GroupDecision | None
    objective_problem: str
    objectives: tuple[ObjectivePixels, ...]
    current_pixel_config: str
    camera: CameraDescription | None
    rig: ResolvedRig | None
    rig_problem: str

    def lines(self) -> list[str]:
        """The description as plain text lines, for a terminal or a log."""
        out = []
        if self.channel is not None:
            out.append(
                f"Channel group: {self.channel.group} ({self.channel.reason}): "
                f"{', '.join(self.channel_presets) or 'no presets'}"
            )
        else:
            out.append(f"Channel group: undecided: {self.channel_problem}")
        if self.objective is not None:
            out.append(f"Objective group: {self.objective.group} ({self.objective.reason})")
        else:
            out.append(f"Objective group: undecided: {self.objective_problem}")
        for o in self.objectives:
            now = " (now)" if o.pixel_config and o.pixel_config == self.current_pixel_config else ""
            if not o.pixel_config:
                out.append(f"  {o.preset}: selects no pixel-size configuration")
                continue
            assert o.affine_um is not None
            (a, b), (d, e) = o.affine_um
            mismatch = (
                f"; its scale differs from PixelSize_um by {o.scale_mismatch_pct:.1f} %"
                if o.scale_mismatch_pct is not None and o.scale_mismatch_pct > 1.0
                else ""
            )
            out.append(
                f"  {o.preset}: {o.pixel_config}, {o.pixel_size_um:g} µm/px{now}, "
                f"affine [[{a:.6g}, {b:.6g}], [{d:.6g}, {e:.6g}]] µm/px ({o.affine_source}{mismatch})"
            )
        if self.camera is not None:
            c = self.camera
            x, y, w, h = c.roi_px
            out.append(
                f"Camera {c.label}: {c.bit_depth}-bit ({c.pixel_type}), binning {c.binning}, "
                f"ROI x {x} y {y} {w} × {h} px, image {c.image_size_px[0]} × {c.image_size_px[1]} px"
            )
        else:
            out.append("Camera: none")
        if self.rig is not None:
            r = self.rig
            if r.xy_travel is not None:
                t = r.xy_travel
                out.append(
                    f"XY travel: X {t.x_min_um:g}..{t.x_max_um:g}, Y {t.y_min_um:g}..{t.y_max_um:g} µm "
                    f"({r.xy_travel_source})"
                )
            else:
                out.append(f"XY travel: {r.xy_travel_source}")
            if r.focus_travel is not None:
                out.append(
                    f"Focus travel: {r.focus_travel.z_min_um:g}..{r.focus_travel.z_max_um:g} µm "
                    f"({r.focus_travel_source})"
                )
            else:
                out.append(f"Focus travel: {r.focus_travel_source}")
            sx0, sy0, sx1, sy1 = r.slide.bounds_um()
            out.append(
                f"Slide: X {sx0:g}..{sx1:g}, Y {sy0:g}..{sy1:g} µm, label at {r.slide.label_end} "
                f"({r.slide_source})"
            )
            try:
                ox0, oy0, ox1, oy1 = r.overview_region_um()
                out.append(f"Overview default region: X {ox0:g}..{ox1:g}, Y {oy0:g}..{oy1:g} µm")
            except RigProfileError as e:
                out.append(f"Overview default region: none: {e}")
        else:
            out.append(f"Rig profile: {self.rig_problem}")
        return out


def _objective_pixels(core: CMMCorePlus, group: str, binning: int) -> tuple[ObjectivePixels, ...]:
    factor = binning / float(core.getMagnificationFactor())
    rows = []
    for preset, config in preset_pixel_configs(core, group).items():
        if not config:
            rows.append(ObjectivePixels(preset, "", 0.0, None, "no pixel-size configuration"))
            continue
        px = float(core.getPixelSizeUmByID(config)) * factor
        a, b, _c, d, e, _f = (float(v) for v in core.getPixelSizeAffineByID(config))
        declared = (a, b, d, e) != (1.0, 0.0, 0.0, 1.0)
        matrix = pixel_affine_for_config_um(core, config) * factor
        mismatch = None
        if declared and px > 0:
            mismatch = abs(math.sqrt(abs(a * e - b * d)) * factor - px) / px * 100.0
        rows.append(
            ObjectivePixels(
                preset=preset,
                pixel_config=config,
                pixel_size_um=px,
                affine_um=(
                    (float(matrix[0, 0]), float(matrix[0, 1])),
                    (float(matrix[1, 0]), float(matrix[1, 1])),
                ),
                affine_source="PixelSizeAffine in the .cfg"
                if declared
                else "no PixelSizeAffine: pixel size × identity",
                scale_mismatch_pct=mismatch,
            )
        )
    return tuple(sorted(rows, key=lambda r: (r.pixel_size_um <= 0, -r.pixel_size_um)))  # low power first


def _camera(core: CMMCorePlus) -> CameraDescription | None:
    cam = str(core.getCameraDevice())
    if not cam:
        return None
    bits = int(core.getImageBitDepth())
    pixel_type = (
        str(core.getProperty(cam, "PixelType"))
        if core.hasProperty(cam, "PixelType")
        else f"{8 * int(core.getBytesPerPixel())}bit"
    )
    x, y, w, h = (int(v) for v in core.getROI())
    return CameraDescription(
        label=cam,
        bit_depth=bits,
        pixel_type=pixel_type,
        binning=camera_binning(core),
        roi_px=(x, y, w, h),
        image_size_px=(int(core.getImageWidth()), int(core.getImageHeight())),
    )


def describe_rig(
    core: CMMCorePlus,
    config_path: str | Path | None = None,
    *,
    channel_group: str | None = None,
    objective_group: str | None = None,
) -> RigDescription:
    """Everything CordScope decided about a loaded configuration, and why.

    Parameters
    ----------
    core : CMMCorePlus
        The core with the configuration loaded.
    config_path : str or Path, optional
        The ``.cfg`` (for its rig profile); default: the core's.
    channel_group, objective_group : str, optional
        Groups the user named (``--channel-group`` / ``--objective-group``).

    Returns
    -------
    RigDescription
        Undecidable groups and an unusable rig profile are reported in it
        (``*_problem``), not raised, so the rest can still be shown.
    """
    objective: GroupDecision | None = None
    channel: GroupDecision | None = None
    objective_problem = channel_problem = rig_problem = ""
    try:
        objective = decide_objective_group(core, objective_group)
    except RoleError as e:
        objective_problem = str(e)
    try:
        channel = decide_channel_group(
            core, channel_group, objective_group=objective.group if objective is not None else None
        )
    except RoleError as e:
        channel_problem = str(e)
    rig: ResolvedRig | None = None
    try:
        rig = rig_profile_for(core, config_path)
    except RigProfileError as e:
        rig_problem = str(e)
    binning = camera_binning(core)
    return RigDescription(
        config_file=str(config_path or core.systemConfigurationFile() or ""),
        channel=channel,
        channel_problem=channel_problem,
        channel_presets=tuple(str(p) for p in core.getAvailableConfigs(channel.group)) if channel else (),
        objective=objective,
        objective_problem=objective_problem,
        objectives=_objective_pixels(core, objective.group, binning) if objective else (),
        current_pixel_config=str(core.getCurrentPixelSizeConfig()),
        camera=_camera(core),
        rig=rig,
        rig_problem=rig_problem,
    )
