"""Model B: a second virtual microscope, independent of the demo renderer (model A).

CordScope's analysis must not be tuned to one image model, so model B images
spinal-cord sections with its own geometry, objects, optics and camera. It
shares no geometry or rendering code with model A (``acquisition.demo.slide``,
``_slide_geometry``, ``_slide_render``, ``devices.DemoCamera``); it reuses
model A's truth *records* (``SectionSpec``, ``SectionTruth``,
``RegionTruth``: plain data) and the demo stages, focus drive, shutter, filter
wheel and turret (hardware, not rendering). ``hardware_configs/demo-model-b.cfg``
loads it; ``model_b_slide()`` gives its slide with the same truth interface as
model A's ``VirtualSlide``.

What is modelled
----------------
**Slide.** 75 × 25 mm; sections in ``x ∈ [18, 73.5] mm``, ``y ∈ [1.5, 23.5]
mm`` (:data:`slide.LAYOUT`): six rats (rat11/12 intact, rat13/14 vehicle,
rat15/16 treated; odd injected left, even right), C5/Th7/L2 coronal sections
of each (rotated up to ±10°) and five horizontal sections across the T9-10
lesion (rotated up to ±3°; rat11's intact). A **bead area** at
``x ∈ [58, 66] mm, y ∈ [19.5, 22.5] mm`` (:data:`slide.BEAD_AREA_UM`) holds
0.17 µm beads on a jittered 30 µm lattice (8 % of sites hold a close pair;
the rest are isolated), visible in the tracer channel only, positions in
``slide.beads()``.

**Cords** (``shapes.py``): superellipse halves (flatter dorsally) with smooth
Fourier modes, a ventral median fissure and a dorsal median sulcus; C5 3.45 ×
2.35 mm, Th7 2.45 × 1.9 mm, L2 2.85 × 2.4 mm. The butterfly is a union of
primitives (intermediate zone, commissures, tapered curved dorsal horns with a
cap, ventral horns on a neck, a lateral horn at Th7), mirrored and rounded by
a morphological closing. The rubrospinal territory is the subpial band
(8 µm to 250-330 µm under the pia) of the contralateral white matter between
a ray 3° below the canal's horizontal and a ray 15° short of the dorsal horn's
tip, 25 µm clear of the gray matter. Horizontal sections are 9 × 2.15 mm
bands with rough edges, rounded ends, a wandering central gray band and, in
injured animals, an irregular cavity (vehicle 1.24 × 0.84 mm, treated 0.96 ×
0.66 mm, ±10 % per animal) with the cord narrowed 12 % / 7 % around it.

**Labelled objects** (``objects.py``): irregular ellipsoidal blobs (Fourier
outlines, aspect 0.55-1, area-equivalent diameter log-normal around 2.5 µm,
1-5 µm), straight elongated puncta (2-5 × 0.9-1.7 µm), curved beaded fibre
fragments (6-25 µm in gray matter, 10-40 µm along horizontal sections,
0.8-1.6 µm thick, varicosities every 3-6 µm) and boutons (1-1.8 µm). Each is
defined as a union of 0.2 µm horizontal strips, so its area is exact and the
renderer's convolution is exact. Placement: clustered in the territory
(Thomas process: clusters of ~5 within 6 µm), Poisson elsewhere; objects
never overlap and never cross a truth-region boundary. Densities
(:data:`slide.RST_DENSITY` etc.) differ by group and level (intact C5/Th7/L2
5.2/4.5/3.8 % of the territory; vehicle L2 0.55 %, treated L2 1.6 %), with
log-normal animal factors; along horizontal sections a logistic fall across
the epicenter to 10 % (vehicle) or 32 % (treated) caudally. Objects lie
within ±1 µm of the focal surface (``object_depth_range_um`` 2).

**DAPI** (``slide._build_nuclei``): small bright glial nuclei (2.5-3.5 µm
radius) everywhere, plus large pale neuronal nuclei (4-5.5 µm, 40 % of gray
matter nuclei); 1400 nuclei/mm² in white matter, gray matter set so that the
mean DAPI signal of gray over white matter equals
``dapi_gray_white_contrast`` (default **1.35**; model A's slide has about 2),
denser round the canal and in the lesion scar; nuclei fill the section's
thickness (±4 µm), so many are out of focus; an out-of-focus DAPI haze
follows the same contrast. **Autofluorescence** in the tracer channel: 0.70
(white) and 0.95 (gray) photons/ms/µm², with a 10 µm mottled texture and
streaks along horizontal sections; tissue edges 1 µm wide, gray/white
transition 12 µm.

**Optics** (``optics.py``): dry objectives 4x/0.13, 10x/0.30, 20x/0.50; PSF
= Airy pattern of the NA at the channel's emission (DAPI 461 nm, tdTomato
581 nm, averaged over ±8 %) convolved with the geometric defocus disc of
radius ``|dz|·tan(asin NA)``, rendered as its best two-Gaussian fit (in focus
at 10x tdTomato: 84 % at σ 0.39 µm, 16 % at σ 2.3 µm; FWHM 0.91 µm).
Brightness per pixel ∝ NA⁴/M² (4x 0.22×, 20x 1.9× the 10x). The focal
surface is a tilt (0.2-0.5 µm/mm) plus a bow (4-8 µm) plus, when switched on
(``FocusBumps``), local bumps of ±3-8 µm over 0.3-0.9 mm on about a third of
the sections (``slide.focus_bumps``).

**Camera** (``devices.ModelBCamera``): 2048² pixels of 4.54 µm (image
pixels 1.135 / 0.454 / 0.227 µm); 16-bit (500 ADU offset, 0.46 e/ADU) or
8-bit (10 ADU offset, 8 e/ADU), clipped at 2^bits − 1; QE 0.72; illumination
fall-off ``1/(1 + (r/r0)²)²`` losing ``Vignetting`` (default 12 %) at the
corners; fixed pattern (per-pixel and per-column offsets, 1 % PRNU,
log-normal per-pixel read noise around 1.4 e with 1 % noisy pixels, dark
current 0.5 e/s with 0.05 % hot pixels), shot noise, full well 30,000 e.

Rendering
---------
Exact stamps for PSF components narrower than the coarse step (the strips'
pixel-integrated Gaussian responses are closed-form, a separable product per
strip: a small matrix product per object); wider components as exact
integer area layers on a coarse lattice (0.9-2.3 µm), blurred separably per
20 % sigma class, interpolated into the frame with the background. Every
value depends on global pixel indices only: overlapping frames agree bit for
bit.

How it differs from model A
---------------------------
=====================  ==============================  ==============================
aspect                 model A                         model B
=====================  ==============================  ==============================
cords, gray matter     control-point Chaikin polygons  superellipse + Fourier; union of primitives
rubrospinal territory  polar range × depth, own index   subpial band ∩ fan from the canal (shapely)
objects                discs and chains of discs       blobs, capsules, curved beaded fibres (strips)
clustering             sinusoidal modulation           Thomas cluster process
PSF                    one Gaussian, σ = 0.45 px        Airy ⊛ defocus disc, two Gaussians, NA-based
defocus                σ² += (NA/2 · dz)²               geometric disc, refitted per defocus
brightness             same for every objective         ∝ NA⁴/M²
DAPI gray/white        ~2                               1.35 (parameter), thick section
camera                 6.5 µm, 16-bit, 100 ADU          4.54 µm, 8/16-bit, 10/500 ADU, fixed pattern
illumination           flat                             12 % fall-off to the corners
=====================  ==============================  ==============================
"""

from __future__ import annotations

from .slide import (
    BEAD_AREA_UM,
    Beads,
    FocusBump,
    ModelBAxonObjects,
    ModelBSlide,
    SlideParameters,
    make_model_b_slide,
    model_b_slide,
    model_b_specs,
)

__all__ = [
    "BEAD_AREA_UM",
    "Beads",
    "FocusBump",
    "ModelBAxonObjects",
    "ModelBSlide",
    "SlideParameters",
    "make_model_b_slide",
    "model_b_slide",
    "model_b_specs",
]
