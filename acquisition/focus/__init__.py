"""Software autofocus and per-section focus maps.

A slide is never perfectly flat on the stage: it is tilted by a fraction of
a µm per mm and gently wavy, so one fixed focus drive position leaves tiles
at the far ends of a slide (and of a long horizontal section) visibly
blurred. This module finds focus in software, from images of the anatomy
channel (e.g. DAPI), and interpolates it across each section:

- :func:`sharpness` scores one image (higher = sharper);
- :func:`software_autofocus` sweeps the focus drive coarse-then-fine at one
  stage position and returns the z of maximal sharpness, or says why it
  could not (``ok=False``: bare glass, peak outside the sweep);
- :func:`focus_points_in_polygon` chooses where in a section to focus;
- :class:`FocusSurface` is a robust least-squares plane or quadratic
  z(x, y) through focus points;
- :func:`build_focus_map` focuses at a few points per section and fits one
  surface per section (:class:`FocusMap`), whose ``z_at(section_id, x, y)``
  gives every tile its focus.

Everything here talks to the microscope only through the ordinary core API
(``setPosition``, ``snapImage`` ...); nothing reads the demo slide's truth,
so the same code runs on a real rig.
"""

from .autofocus import (
    AutofocusError,
    AutofocusResult,
    FocusHardwareError,
    FocusMap,
    FocusMapError,
    build_focus_map,
    software_autofocus,
)
from .sharpness import sharpness
from .surface import FocusSurface, focus_points_in_polygon

__all__ = [
    "AutofocusError",
    "AutofocusResult",
    "FocusHardwareError",
    "FocusMap",
    "FocusMapError",
    "FocusSurface",
    "build_focus_map",
    "focus_points_in_polygon",
    "sharpness",
    "software_autofocus",
]
