"""``cordscope overview``: survey the slide, find the sections, write a plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from acquisition.hardware import CordScopeCore
from acquisition.overview import acquire_overview, save_overview
from acquisition.plan import ScanPlan, plan_from_dict, save_plan
from acquisition.rig_profile import rig_profile_for
from acquisition.roles import decide_roles
from analysis.sections import FoundSection, find_sections


def overview_to_plan(
    console: Console,
    core: CordScopeCore,
    *,
    out: Path,
    config: Path | None,
    anatomy_channel: str,
    tracer_channel: str,
    objective: str,
    scan_objective: str,
    exposure_ms: float,
    region_um: tuple[float, float, float, float] | None,
    channel_group: str | None = None,
    objective_group: str | None = None,
) -> tuple[ScanPlan, Path, list[FoundSection]]:
    """Acquire the overview, save it beside the plan, and write a plan of its sections.

    Sections are numbered S01, S02, ... in slide order (rows top to bottom,
    left to right); animal, group and level are left for the user. The
    groups are decided from the config unless named; the default region is
    the slide beside its label (:meth:`acquisition.rig_profile.ResolvedRig.overview_region_um`).
    """
    roles = decide_roles(core, channel_group=channel_group, objective_group=objective_group)
    group, channels_of = roles.objective.group, roles.channel.group
    if region_um is None:
        region_um = rig_profile_for(core, config).overview_region_um()
    with Progress(
        TextColumn("overview"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    ) as bar:
        task = bar.add_task("overview", total=None)
        ov = acquire_overview(
            core,
            region_um=region_um,
            objective_group=group,
            objective=objective,
            channel_group=channels_of,
            channel=anatomy_channel,
            exposure_ms=exposure_ms,
            progress=lambda i, n: bar.update(task, completed=i, total=n),
        )
    tif = save_overview(out.with_name(out.stem + "-overview.tif"), ov)
    margin_um = float(ScanPlan.model_fields["outline_margin_um"].default)
    found = find_sections(
        ov.image, origin_um=ov.origin_um, pixel_size_um=ov.pixel_size_um, dilation_um=margin_um
    )
    width = max(2, len(str(len(found))))
    sections: list[dict[str, Any]] = [
        {
            "id": f"S{f.index:0{width}d}",
            "polygon_um": [[round(float(x), 1), round(float(y), 1)] for x, y in f.polygon_um],
        }
        for f in found
    ]
    if not sections:
        raise ValueError(f"no sections found in the overview of region {region_um} µm; see {tif}")
    plan = plan_from_dict(
        {
            "name": out.stem,
            "hardware_config": str(config or core.systemConfigurationFile()),
            "output": str(out.with_suffix(".h5")),
            "objective_group": group,
            "objective": scan_objective,
            "channel_group": channels_of,
            "channels": [
                {"preset": anatomy_channel, "exposure_ms": exposure_ms, "role": "anatomy"},
                {"preset": tracer_channel, "exposure_ms": 50.0, "role": "tracer"},
            ],
            "outline_margin_um": margin_um,
            "sections": sections,
        },
        source=str(out),
    )
    save_plan(plan, out)
    return plan, tif, found
