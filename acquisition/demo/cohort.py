"""A virtual study cohort for the demo microscope: one small slide per animal, with ground truth.

A tract-tracing study compares groups of animals. The cohort has
``animals_per_group`` rats in each of the groups ``intact``, ``vehicle`` and
``treated`` (:data:`acquisition.demo.slide.GROUPS`); each animal gets one
slide carrying its coronal sections at C5, Th7 and L2, so each slide is
scanned to its own file (the way a lab scans a study slide by slide) and the
files can be re-analysed in parallel. Animals are numbered ``rat01``,
``rat02``, … with the groups interleaved (rat01 intact, rat02 vehicle,
rat03 treated, rat04 intact, …) and the injection side alternating by
triplet, so neither group nor side follows the scan order.

Everything the slides render comes from :mod:`acquisition.demo.slide`
(:func:`~acquisition.demo.slide.make_slide`): the true axon density of a
section is :data:`~acquisition.demo.slide.AXON_DENSITY` for its group and
level times the animal's own factors, which depend only on the seed and the
animal's name. The truth per animal, level and region is
:func:`cohort_truth`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .slide import CORONAL_LEVELS, GROUPS, SectionSpec, VirtualSlide, make_slide

__all__ = [
    "COHORT_SECTION_CENTRES_UM",
    "CohortSlide",
    "CohortTruthRow",
    "cohort_slides",
    "cohort_truth",
    "render_cohort_slide",
]

COHORT_SECTION_CENTRES_UM: tuple[tuple[float, float], ...] = (
    (41_000.0, 12_500.0),
    (46_000.0, 12_500.0),
    (51_000.0, 12_500.0),
)
"""Where the C5, Th7 and L2 sections of an animal lie on its slide (µm): side
by side around the middle of the slide, so one fixed focus plane serves all
three (the slide's focal plane varies by a few µm over these 14 mm)."""

MAX_COHORT_ROTATION_DEG = 8.0
"""Sections are mounted within ± this angle (drawn from the seed)."""


@dataclasses.dataclass(frozen=True)
class CohortSlide:
    """One animal's slide of the cohort.

    Attributes
    ----------
    name : str
        ``"<animal>"``, also the scan file's stem.
    animal, group, injection_side : str
    specs : tuple of SectionSpec
        The animal's sections (``<animal>-C5``, ``-Th7``, ``-L2``).
    """

    name: str
    animal: str
    group: str
    injection_side: str
    specs: tuple[SectionSpec, ...]


@dataclasses.dataclass(frozen=True)
class CohortTruthRow:
    """True numbers of one region of one section of the cohort (computed from the slide geometry).

    Attributes
    ----------
    animal, group, level, section_id, region : str
    area_um2, axon_area_um2, pct_axonal_area : float
    """

    animal: str
    group: str
    level: str
    section_id: str
    region: str
    area_um2: float
    axon_area_um2: float
    pct_axonal_area: float


def cohort_slides(
    animals_per_group: int, *, seed: int = 2026, levels: Sequence[str] = CORONAL_LEVELS
) -> tuple[CohortSlide, ...]:
    """The cohort's slides: one per animal, ``animals_per_group`` animals in each group.

    Parameters
    ----------
    animals_per_group : int
        At least 1.
    seed : int
        Seed of the sections' rotations (the slide's content uses the same seed
        in :func:`render_cohort_slide`).
    levels : sequence of str
        Coronal levels to cut from each animal (at most three: one per slide position).

    Raises
    ------
    ValueError
        ``animals_per_group < 1``, an unknown level or more than three levels.
    """
    if animals_per_group < 1:
        raise ValueError(f"animals_per_group must be at least 1, got {animals_per_group}")
    levels = tuple(levels)
    bad = [lv for lv in levels if lv not in CORONAL_LEVELS]
    if bad or not levels or len(levels) > len(COHORT_SECTION_CENTRES_UM):
        raise ValueError(f"levels must be 1 to 3 of {CORONAL_LEVELS}, got {levels}")
    n = animals_per_group * len(GROUPS)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC0407]))
    rotations = rng.uniform(-MAX_COHORT_ROTATION_DEG, MAX_COHORT_ROTATION_DEG, (n, len(levels)))
    slides = []
    for i in range(n):
        animal = f"rat{i + 1:02d}"
        group = GROUPS[i % len(GROUPS)]
        side = ("left", "right")[(i // len(GROUPS)) % 2]
        specs = tuple(
            SectionSpec(
                f"{animal}-{level}",
                animal,
                group,  # type: ignore[arg-type]
                level,  # type: ignore[arg-type]
                "coronal",
                side,  # type: ignore[arg-type]
                COHORT_SECTION_CENTRES_UM[k],
                float(rotations[i, k]),
            )
            for k, level in enumerate(levels)
        )
        slides.append(CohortSlide(animal, animal, group, side, specs))
    return tuple(slides)


def render_cohort_slide(slide: CohortSlide, *, seed: int = 2026) -> VirtualSlide:
    """The virtual slide of one animal (for the demo hub: ``DemoHub.set_slide``)."""
    return make_slide(slide.specs, seed=seed)


def cohort_truth(
    slides: Sequence[CohortSlide], *, seed: int = 2026, virtual: Sequence[VirtualSlide] | None = None
) -> list[CohortTruthRow]:
    """True area, axon area and % axonal area per animal × level × region of the cohort.

    Parameters
    ----------
    slides : the cohort (:func:`cohort_slides`)
    seed : int
        The seed the slides are rendered with.
    virtual : sequence of VirtualSlide, optional
        The rendered slides, in the order of ``slides`` (built here if not given).
    """
    rows = []
    for k, slide in enumerate(slides):
        vs = virtual[k] if virtual is not None else render_cohort_slide(slide, seed=seed)
        for spec in slide.specs:
            for t in vs.truth_table(spec.section_id):
                rows.append(
                    CohortTruthRow(
                        animal=spec.animal,
                        group=spec.group,
                        level=spec.level,
                        section_id=spec.section_id,
                        region=t.region,
                        area_um2=t.area_um2,
                        axon_area_um2=t.axon_area_um2,
                        pct_axonal_area=t.pct_axonal_area,
                    )
                )
    return rows
