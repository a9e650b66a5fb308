"""Local focus bumps on the demo slide, for tests of the sharpness check and retakes.

Until the demo slide has its own focus bumps (the ``FocusBumps`` hub
property of the model-b demo), tests put a slide on the stage whose focal
surface is the demo's plus Gaussian bumps: a fold or a bubble lifting the
tissue a few µm over a few hundred µm, which a focus map through five points
per section does not see. Objects (nuclei, axons) blur with the bumps; the
faint tissue background keeps the demo's smooth surface.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from acquisition.demo._slide_render import FocalPlane
from acquisition.demo.slide import VirtualSlide, demo_slide

Bump = tuple[float, float, float, float]
"""(x_um, y_um, sigma_um, height_um) of one Gaussian bump."""


@dataclasses.dataclass(frozen=True)
class BumpyFocalPlane(FocalPlane):
    """The demo's focal plane plus Gaussian bumps."""

    bumps: tuple[Bump, ...] = ()

    def z_um(self, x_um: Any, y_um: Any) -> Any:
        z = super().z_um(x_um, y_um)
        x, y = np.asarray(x_um, dtype=np.float64), np.asarray(y_um, dtype=np.float64)
        for bx, by, sigma, height in self.bumps:
            z = z + height * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2.0 * sigma * sigma))
        return z

    def range_over(self, bbox_um: tuple[float, float, float, float]) -> tuple[float, float]:
        lo, hi = super().range_over(bbox_um)
        up = sum(max(0.0, h) for *_, h in self.bumps)
        down = sum(min(0.0, h) for *_, h in self.bumps)
        return lo + down, hi + up


def bumpy_slide(bumps: Sequence[Bump], *, slide: VirtualSlide | None = None) -> VirtualSlide:
    """The demo slide (or ``slide``) with focus bumps added to its focal surface."""
    base = slide if slide is not None else demo_slide()
    focal = base._focal
    fields = {f.name: getattr(focal, f.name) for f in dataclasses.fields(FocalPlane)}
    return VirtualSlide(base._sections, BumpyFocalPlane(**fields, bumps=tuple(bumps)), base.seed)
