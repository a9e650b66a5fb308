"""Local focus bumps placed on a chosen demo section, for tests of the sharpness check and retakes.

The demo slide carries its own bumps (``FocusBumps`` hub property) on sections
chosen by its seed; tests that need a bump on a particular section build the
same kind of slide with the bumps where they want them
(:class:`acquisition.demo.slide.FocusBump`: a bubble or a fold lifting the
tissue a few µm over a few hundred µm, which a focus map through five points
per section does not see).
"""

from __future__ import annotations

from collections.abc import Sequence

from acquisition.demo.slide import FocusBump, VirtualSlide, demo_slide

Bump = tuple[float, float, float, float]
"""(x_um, y_um, sigma_um, height_um) of one round bump."""


def bumpy_slide(bumps: Sequence[Bump], *, slide: VirtualSlide | None = None) -> VirtualSlide:
    """The demo slide (or ``slide``) with these round bumps on its focal surface, switched on."""
    base = slide if slide is not None else demo_slide()
    truth = [
        FocusBump(
            section_id="",
            kind="bubble",
            x_um=float(x),
            y_um=float(y),
            amplitude_um=float(height),
            sigma_major_um=float(sigma),
            sigma_minor_um=float(sigma),
            angle_deg=0.0,
        )
        for x, y, sigma, height in bumps
    ]
    return VirtualSlide(base._sections, base._focal, base.seed, bumps=truth, bumps_on=True)
