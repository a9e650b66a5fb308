"""Python device adapters of the demo microscope.

These are pymmcore-plus ``experimental.unicore`` devices, loaded by
``UniMMCore`` from ``#py pyDevice`` lines of ``hardware_configs/demo.cfg``.
Like the devices of one C++ adapter library (e.g. Micro-Manager's
DemoCamera with its ``DHub``), they share state through a hub:
:class:`DemoHub` owns the virtual slide, so the camera can image the slide
at the stage's *true* position, the current focus, filter and objective.

Peripherals find their hub themselves, from the ``Parent,<device>,<hub>``
line of the ``.cfg``, the first time they need it: the demo microscope
works in a plain ``UniMMCore`` (pymmcore-gui, napari-micromanager, a
user's script), not only in CordScope's core. A peripheral's role on the
hub (camera, XY stage, ...) comes from its unicore base class or its
``HUB_ROLE``, so a new camera class hangs off the hub without editing it.

Each device behaves like hardware: limits that refuse impossible moves,
moves and switches that take time when their timing properties are set
(trapezoidal stage moves with settling, filter and objective switch times,
camera readout), a camera that may be binned, rotated, mirrored, 8- to
16-bit and vignetted, and fault injection (timeouts, failed moves, a camera
that stops answering) for reliability tests. Every timing defaults to 0
(instant), as the demo microscope behaved before those properties existed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pymmcore_plus.experimental.unicore import (
    CameraDevice,
    HubDevice,
    ShutterDevice,
    SimpleCameraDevice,
    StageDevice,
    StateDevice,
    XYStageDevice,
)
from pymmcore_plus.experimental.unicore.devices._device_base import Device

from ..errors import CordScopeError

if TYPE_CHECKING:
    from numpy.typing import DTypeLike, NDArray

    from .slide import VirtualSlide

__all__ = [
    "BINNINGS",
    "BIT_DEPTHS",
    "DemoCamera",
    "DemoDeviceError",
    "DemoFilterWheel",
    "DemoHub",
    "DemoObjectiveTurret",
    "DemoPeripheral",
    "DemoShutter",
    "DemoXYStage",
    "DemoZStage",
    "camera_orientation",
    "move_time_s",
    "oriented_render",
    "vignetting_map",
]

logger = logging.getLogger(__name__)

#: Physical pixel of the simulated sCMOS sensor (µm); image pixel = this × binning / magnification.
SENSOR_PIXEL_UM = 6.5
#: Travel of the XY stage: a 75 × 25 mm slide, in stage µm.
XY_TRAVEL_UM = ((0.0, 75_000.0), (0.0, 25_000.0))
#: Travel of the focus drive (µm).
Z_TRAVEL_UM = (-2_000.0, 2_000.0)
#: Bit depths the demo camera digitises to (8-bit frames are uint8, deeper ones uint16).
BIT_DEPTHS: tuple[int, ...] = (8, 10, 12, 14, 16)

DYE_SLIDE_RATE = 20.0
"""Photons / ms / pixel (0.65 µm pixels, 10x) of the uniform dye slide (hub ``Slide`` = "dye"), every
channel; the rate scales with the pixel's area."""
#: Binning factors of the demo camera (square bins, charge summed).
BINNINGS: tuple[int, ...] = (1, 2, 4)


class DemoDeviceError(CordScopeError):
    """A demo device refused a command or failed (possibly by fault injection)."""


def _int_prop(device: Any, name: str) -> int:
    # property values set from a .cfg or a GUI may arrive as strings or floats
    return int(float(device.get_property_value(name)))


def _float_prop(device: Any, name: str) -> float:
    return float(device.get_property_value(name))


def _on(device: Any, name: str) -> bool:
    return str(device.get_property_value(name)) == "On"


def _every_nth(counter: int, n: int) -> bool:
    return n > 0 and counter % n == 0


# ------------------------------------------------------------------ timing


def move_time_s(
    distance_um: float,
    speed_um_per_s: float,
    acceleration_um_per_s2: float = 0.0,
    settle_time_ms: float = 0.0,
) -> float:
    """Time a stage move takes, from command to settled (trapezoidal profile).

    The stage accelerates at ``acceleration_um_per_s2`` up to
    ``speed_um_per_s``, cruises, decelerates symmetrically and then settles
    for ``settle_time_ms``. A move too short to reach full speed follows a
    triangular profile.

    Parameters
    ----------
    distance_um : float
        Length of the move (µm, ≥ 0).
    speed_um_per_s : float
        Top speed (µm/s); 0 means moves are instant (only the settle time counts).
    acceleration_um_per_s2 : float
        Acceleration and deceleration (µm/s²); 0 means infinite (constant
        speed from start to end).
    settle_time_ms : float
        Time to settle after the motion ends (ms).

    Returns
    -------
    float
        Seconds from the command until the stage has settled.
    """
    d = float(distance_um)
    v = float(speed_um_per_s)
    a = float(acceleration_um_per_s2)
    settle_s = float(settle_time_ms) / 1000.0
    if not all(math.isfinite(x) and x >= 0 for x in (d, v, a, settle_s)):
        raise ValueError(
            "move_time_s needs finite values ≥ 0, got "
            f"distance {distance_um!r} µm, speed {speed_um_per_s!r} µm/s, "
            f"acceleration {acceleration_um_per_s2!r} µm/s², settle {settle_time_ms!r} ms"
        )
    return _motion_time_s(d, v, a) + settle_s


def _motion_time_s(d: float, v: float, a: float) -> float:
    if d == 0.0 or v == 0.0:
        return 0.0
    if a == 0.0:
        return d / v
    if d <= v * v / a:  # never reaches full speed: accelerate half-way, decelerate
        return 2.0 * math.sqrt(d / a)
    return d / v + v / a


def _distance_moved_um(t: float, d: float, v: float, a: float) -> float:
    """Distance covered ``t`` s into a move of ``d`` µm (same profile as :func:`move_time_s`)."""
    total = _motion_time_s(d, v, a)
    if t >= total:
        return d
    if t <= 0.0:
        return 0.0
    if a == 0.0:
        return v * t
    peak_v = min(v, math.sqrt(a * d))
    ramp = peak_v / a
    if t <= ramp:
        return 0.5 * a * t * t
    cruise_end = total - ramp
    if t <= cruise_end:
        return 0.5 * a * ramp * ramp + peak_v * (t - ramp)
    left = total - t
    return d - 0.5 * a * left * left


# ------------------------------------------------------------ camera optics


def camera_orientation(rotation_deg: float, mirror_x: bool) -> NDArray[np.float64]:
    """Unit matrix taking a pixel offset to a stage direction for a camera orientation.

    Pixel offset ``(u, v)`` (columns, rows from the image centre) images
    the stage offset ``p · R(θ) · F · (u, v)`` where ``F`` flips ``u`` when
    the image is mirrored and ``R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]]``.
    Multiplied by the pixel size this is the camera's Micro-Manager pixel
    affine ``[[a, b], [d, e]]``.

    Parameters
    ----------
    rotation_deg : float
        Rotation of the sensor relative to the stage axes (degrees).
    mirror_x : bool
        Whether image columns run against the stage direction before rotation.

    Returns
    -------
    (2, 2) float64 array
        Entries that are multiples of 90° come out exactly 0 or ±1.
    """
    quarter = rotation_deg / 90.0
    if abs(quarter - round(quarter)) < 1e-12:
        k = round(quarter) % 4
        cos, sin = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[k]
    else:
        rad = math.radians(rotation_deg)
        cos, sin = math.cos(rad), math.sin(rad)
    flip = -1.0 if mirror_x else 1.0
    return np.array([[cos * flip, -sin], [sin * flip, cos]], dtype=np.float64)


def oriented_render(
    render: Callable[[tuple[float, float], float, tuple[int, int]], NDArray[np.float32]],
    *,
    center_um: tuple[float, float],
    pixel_size_um: float,
    shape: tuple[int, int],
    orientation: NDArray[np.float64],
) -> NDArray[np.float32]:
    """Render a frame whose pixel axes are turned against the stage axes.

    Pixel ``(r, c)`` of the result images the stage point
    ``center_um + pixel_size_um · orientation · (c + ½ − W/2, r + ½ − H/2)``.

    Parameters
    ----------
    render : callable
        ``render(center_um, pixel_size_um, (H, W))`` returning an
        axis-aligned frame (pixel ``(r, c)`` at ``center + p·(u, v)``).
    center_um : (float, float)
        Stage position of the image centre (µm).
    pixel_size_um : float
        Pixel size on the slide (µm).
    shape : (int, int)
        (H, W) of the result.
    orientation : (2, 2) array
        Unit matrix from :func:`camera_orientation`.

    Returns
    -------
    (H, W) float32 array
        For multiples of 90°, with or without mirroring, the axis-aligned
        frame itself, transposed and flipped (exact). Any other angle is
        resampled bilinearly from an axis-aligned frame covering the
        rotated field (smooths by about half a pixel).
    """
    h, w = int(shape[0]), int(shape[1])
    m = np.asarray(orientation, dtype=np.float64)
    if np.array_equal(m, np.eye(2)):
        return render(center_um, pixel_size_um, (h, w))
    if np.all(np.isin(m, (-1.0, 0.0, 1.0))):
        if m[0, 1] == 0.0:  # axes kept, possibly flipped
            frame = render(center_um, pixel_size_um, (h, w))
            return np.ascontiguousarray(frame[:: int(m[1, 1]), :: int(m[0, 0])])
        frame = render(center_um, pixel_size_um, (w, h))  # axes swapped
        return np.ascontiguousarray(frame.T[:: int(m[0, 1]), :: int(m[1, 0])])
    from scipy import ndimage

    margin = 4  # bilinear needs the neighbours of edge samples
    wr = math.ceil(abs(m[0, 0]) * w + abs(m[0, 1]) * h) + margin
    hr = math.ceil(abs(m[1, 0]) * w + abs(m[1, 1]) * h) + margin
    frame = render(center_um, pixel_size_um, (hr, wr))
    # (row, col) of the axis-aligned frame for output (r, c): see the docstring's mapping
    matrix = np.array([[m[1, 1], m[1, 0]], [m[0, 1], m[0, 0]]])
    offset = np.array(
        [
            m[1, 1] * (0.5 - h / 2) + m[1, 0] * (0.5 - w / 2) + hr / 2 - 0.5,
            m[0, 1] * (0.5 - h / 2) + m[0, 0] * (0.5 - w / 2) + wr / 2 - 0.5,
        ]
    )
    out = np.empty((h, w), dtype=np.float32)
    ndimage.affine_transform(frame, matrix, offset=offset, output=out, order=1, mode="nearest")
    return out


def vignetting_map(shape: tuple[int, int], vignetting_pct: float) -> NDArray[np.float32]:
    """Relative illumination over a frame: 1 at the centre, ``1 − pct/100`` in the corners.

    Natural vignetting follows the cos⁴ law: a pixel seen at field angle
    ``θ`` receives ``cos⁴ θ`` of the on-axis light. With ``tan θ`` growing
    linearly from the centre, ``cos⁴ θ = 1 / (1 + (ρ·t)²)²`` where ``ρ`` is
    the distance from the centre relative to the corner's and ``t`` is
    chosen so that the corners get exactly ``1 − pct/100``.

    Parameters
    ----------
    shape : (int, int)
        (H, W) of the frame in pixels.
    vignetting_pct : float
        Fall-off at the corners (%, 0 ≤ pct < 100).

    Returns
    -------
    (H, W) float32 array
    """
    k = float(vignetting_pct) / 100.0
    if not 0.0 <= k < 1.0:
        raise ValueError(f"vignetting_pct must be in [0, 100), got {vignetting_pct!r}")
    h, w = int(shape[0]), int(shape[1])
    v = (np.arange(h, dtype=np.float64) + 0.5 - h / 2) / (h / 2)
    u = (np.arange(w, dtype=np.float64) + 0.5 - w / 2) / (w / 2)
    # squared distance relative to the corner's (u = v = 1 at the corner)
    rho2 = (v[:, None] ** 2 * (h / 2) ** 2 + u[None, :] ** 2 * (w / 2) ** 2) / ((h / 2) ** 2 + (w / 2) ** 2)
    t2 = (1.0 - k) ** -0.5 - 1.0
    return (1.0 / (1.0 + rho2 * t2) ** 2).astype(np.float32)


# --------------------------------------------------------- hub and peripherals

# Every demo device alive in this process, so that a hub and its peripherals
# can find each other: the unicore device API gives a device only its parent's
# label and a proxy of the core's events, never the core or the hub object.
_DEMO_DEVICES: weakref.WeakSet[Device] = weakref.WeakSet()
_DEMO_DEVICES_LOCK = threading.Lock()


def _loaded_label(device: Device) -> str:
    return device.get_label() if device._core_proxy_ is not None else ""


def _same_core(a: Device, b: Device) -> bool:
    # Devices of one core hold proxies of the same core's events: with psygnal
    # the same signal instance, with Qt bound signals of one QObject, which
    # compare equal. Devices of different cores never do.
    pa, pb = a._core_proxy_, b._core_proxy_
    if pa is None or pb is None:
        return False
    return bool(pa.events.propertyChanged == pb.events.propertyChanged)


def _live_demo_devices() -> list[Device]:
    with _DEMO_DEVICES_LOCK:
        return list(_DEMO_DEVICES)


_BASE_ROLES: tuple[tuple[type, str], ...] = (
    (CameraDevice, "camera"),
    (XYStageDevice, "xy_stage"),
    (StageDevice, "z_stage"),
    (ShutterDevice, "shutter"),
)


class DemoPeripheral:
    """Mixin for a device that hangs off a :class:`DemoHub`.

    Put it first among the bases (``class MyCamera(DemoPeripheral,
    SimpleCameraDevice)``) and add ``Parent,<label>,<hub>`` to the ``.cfg``.
    The role on the hub is ``HUB_ROLE`` if the class sets it, else follows
    from the unicore base class: a camera, XY stage, (focus) stage or
    shutter. State devices must set it (``"filter_wheel"``,
    ``"objective_turret"``).
    """

    HUB_ROLE: ClassVar[str] = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hub_ref: weakref.ref[DemoHub] | None = None
        with _DEMO_DEVICES_LOCK:
            _DEMO_DEVICES.add(self)  # type: ignore[arg-type]

    @classmethod
    def hub_role(cls) -> str:
        """Role of this device on its hub, e.g. ``"camera"``."""
        if cls.HUB_ROLE:
            return cls.HUB_ROLE
        for base, role in _BASE_ROLES:
            if issubclass(cls, base):
                return role
        raise DemoDeviceError(f"{cls.__name__} has no hub role: set HUB_ROLE on the class")

    @property
    def hub(self) -> DemoHub:
        """The :class:`DemoHub` named by this device's ``Parent`` line (found on first use)."""
        me: Device = self  # type: ignore[assignment]
        parent = me.get_parent_label()
        cached = self._hub_ref() if self._hub_ref is not None else None
        if cached is not None and parent and _loaded_label(cached) == parent and _same_core(cached, me):
            return cached
        label = me.get_label() or type(self).__name__
        if not parent:
            raise DemoDeviceError(
                f"{label}: not attached to a DemoHub (add 'Parent,{label},<hub label>' to the .cfg)"
            )
        for device in _live_demo_devices():
            if isinstance(device, DemoHub) and _loaded_label(device) == parent and _same_core(device, me):
                self._hub_ref = weakref.ref(device)
                return device
        raise DemoDeviceError(f"{label}: parent {parent!r} is not a DemoHub loaded in this core")


class DemoHub(HubDevice):
    """The demo microscope's controller: owns the virtual slide.

    Peripherals (:class:`DemoPeripheral`) whose ``Parent`` is this hub are
    found by role when the hub needs them (:meth:`peripheral`).

    Properties
    ----------
    Slide : str
        "demo" (the demo slide of ``acquisition.demo.slide``), or "dye": a
        uniformly fluorescent slide put on the stage instead, as a lab images
        one for a blank-field flat field (:data:`DYE_SLIDE_RATE` in every
        channel, wherever the stage is).
    SlideSeed : int
        Seed of the slide's procedural content (nuclei, axons, focus surface).
    FocusBumps : {"Off", "On"}
        The slide's local focus bumps (bubbles, folds; see ``VirtualSlide.focus_bumps``).
    """

    def __init__(self) -> None:
        super().__init__()
        self._slide: VirtualSlide | None = None
        self._slide_lock = threading.Lock()
        self._peripheral_refs: dict[str, weakref.ref[Device]] = {}
        self.register_property("Slide", default_value="demo", allowed_values=("demo", "dye"))
        self._seed = 2026
        self.register_property(
            "SlideSeed",
            default_value=2026,
            property_type=int,
            getter=DemoHub._get_seed,
            setter=DemoHub._set_seed,
        )
        with _DEMO_DEVICES_LOCK:
            _DEMO_DEVICES.add(self)
        self._focus_bumps = False
        self.register_property(
            "FocusBumps",
            default_value="Off",
            allowed_values=("Off", "On"),
            getter=DemoHub._get_focus_bumps,
            setter=DemoHub._set_focus_bumps,
        )

    def get_installed_peripherals(self) -> Sequence[tuple[str, str]]:
        """Devices that can hang off this hub."""
        return [
            ("DemoCamera", "Simulated sCMOS camera over the virtual slide (8-16 bit, binning, rotation)"),
            ("DemoXYStage", "Simulated motorised XY stage (75 × 25 mm slide travel)"),
            ("DemoZStage", "Simulated focus drive"),
            ("DemoShutter", "Simulated excitation shutter"),
            ("DemoFilterWheel", "Simulated fluorescence filter wheel"),
            ("DemoObjectiveTurret", "Simulated objective turret (4x, 10x, 20x)"),
        ]

    def initialize(self) -> None:
        """Build the virtual slide now, as hardware initialises, not on the first snap."""
        _ = self.slide

    def _get_seed(self) -> int:
        return self._seed

    def _set_seed(self, value: int) -> None:
        with self._slide_lock:
            self._seed = int(float(value))
            self._slide = None  # rebuilt lazily with the new seed

    def _get_focus_bumps(self) -> str:
        return "On" if self._focus_bumps else "Off"

    def _set_focus_bumps(self, value: str) -> None:
        with self._slide_lock:
            self._focus_bumps = str(value) == "On"
            if self._slide is not None:
                self._slide = self._slide.with_focus_bumps(self._focus_bumps)

    # ---------------------------------------------------------- peripherals

    def _is_mine(self, device: Device, label: str) -> bool:
        return bool(label) and device.get_parent_label() == label and _same_core(device, self)

    def peripherals(self, role: str) -> list[Device]:
        """Loaded devices of this core whose parent is this hub and whose role is ``role``."""
        label = _loaded_label(self)
        return sorted(
            (
                d
                for d in _live_demo_devices()
                if isinstance(d, DemoPeripheral)
                and d.hub_role() == role
                and _loaded_label(d)
                and self._is_mine(d, label)
            ),
            key=lambda d: d.get_label(),
        )

    def peripheral(self, role: str) -> Device | None:
        """The one peripheral with ``role`` (None if there is none).

        Raises
        ------
        DemoDeviceError
            If several loaded peripherals of this hub share the role.
        """
        ref = self._peripheral_refs.get(role)
        cached = ref() if ref is not None else None
        if cached is not None and _loaded_label(cached) and self._is_mine(cached, _loaded_label(self)):
            return cached
        found = self.peripherals(role)
        if len(found) > 1:
            names = ", ".join(d.get_label() for d in found)
            raise DemoDeviceError(
                f"{self.get_label()}: {len(found)} devices with role {role!r} ({names}); "
                "the demo hub drives one of each"
            )
        if not found:
            self._peripheral_refs.pop(role, None)
            return None
        self._peripheral_refs[role] = weakref.ref(found[0])
        return found[0]

    @property
    def camera(self) -> CameraDevice | None:
        """The camera attached to this hub (None if none)."""
        return self.peripheral("camera")  # type: ignore[return-value]

    @property
    def xy_stage(self) -> DemoXYStage | None:
        """The XY stage attached to this hub (None if none)."""
        return self.peripheral("xy_stage")  # type: ignore[return-value]

    @property
    def z_stage(self) -> DemoZStage | None:
        """The focus drive attached to this hub (None if none)."""
        return self.peripheral("z_stage")  # type: ignore[return-value]

    @property
    def shutter(self) -> DemoShutter | None:
        """The shutter attached to this hub (None if none)."""
        return self.peripheral("shutter")  # type: ignore[return-value]

    @property
    def filter_wheel(self) -> DemoFilterWheel | None:
        """The filter wheel attached to this hub (None if none)."""
        return self.peripheral("filter_wheel")  # type: ignore[return-value]

    @property
    def objective_turret(self) -> DemoObjectiveTurret | None:
        """The objective turret attached to this hub (None if none)."""
        return self.peripheral("objective_turret")  # type: ignore[return-value]

    # ---------------------------------------------------------------- slide

    @property
    def slide(self) -> VirtualSlide:
        """The virtual slide (built on first use: generating it takes a moment)."""
        with self._slide_lock:
            if self._slide is None:
                from .slide import demo_slide

                self._slide = demo_slide(seed=self._seed).with_focus_bumps(self._focus_bumps)
            return self._slide

    def set_slide(self, slide: VirtualSlide) -> None:
        """Put another virtual slide on the stage (e.g. one animal of a cohort)."""
        with self._slide_lock:
            # a slide put on the stage keeps its own bumps unless the hub's FocusBumps is on
            self._slide = slide.with_focus_bumps(True) if self._focus_bumps else slide

    def magnification(self) -> float:
        """Magnification of the objective in the light path."""
        if (turret := self.objective_turret) is None:
            raise DemoDeviceError(f"{self.get_label()}: no objective turret attached")
        return turret.magnification()

    def true_xy_um(self) -> tuple[float, float]:
        """Where the XY stage physically is (µm)."""
        if (stage := self.xy_stage) is None:
            raise DemoDeviceError(f"{self.get_label()}: no XY stage attached")
        return stage.true_position_um()

    def light_path_open(self) -> bool:
        """True when light reaches the camera: shutter open, filter and objective in place."""
        shutter, wheel, turret = self.shutter, self.filter_wheel, self.objective_turret
        if shutter is not None and not shutter.get_open():
            return False
        if wheel is None or wheel.switching():
            return False
        return not (turret is not None and turret.switching())

    def expected_photon_rate(
        self, shape: tuple[int, int], *, orientation: NDArray[np.float64] | None = None, binning: int = 1
    ) -> NDArray[np.float32]:
        """Noiseless photons / ms / pixel the camera sees now.

        Parameters
        ----------
        shape : (int, int)
            (H, W) of the (binned) image in pixels.
        orientation : (2, 2) array, optional
            The camera's orientation (:func:`camera_orientation`); identity
            if not given.
        binning : int
            Square binning: the sensor is rendered at ``binning × shape``
            with the unbinned pixel's optics and each bin sums its pixels'
            photons, as charge binning does.

        Returns
        -------
        (H, W) float32 array
            Zeros while the shutter is closed or a filter/objective switch
            is under way.
        """
        h, w = int(shape[0]), int(shape[1])
        if not self.light_path_open():
            return np.zeros((h, w), dtype=np.float32)
        if self.get_property_value("Slide") == "dye":
            pixel_um = SENSOR_PIXEL_UM * int(binning) / self.magnification()
            return np.full((h, w), DYE_SLIDE_RATE * (pixel_um / 0.65) ** 2, dtype=np.float32)
        wheel = self.filter_wheel
        assert wheel is not None  # light_path_open checked it
        channel = wheel.channel()
        z_stage = self.z_stage
        z_um = z_stage.true_position_um() if z_stage is not None else 0.0
        slide = self.slide

        def render(
            center: tuple[float, float], p: float, frame_shape: tuple[int, int]
        ) -> NDArray[np.float32]:
            return slide.render(
                center_um=center, pixel_size_um=p, shape=frame_shape, channel=channel, z_um=z_um
            )

        b = int(binning)
        rate = oriented_render(
            render,
            center_um=self.true_xy_um(),
            pixel_size_um=SENSOR_PIXEL_UM / self.magnification(),
            shape=(h * b, w * b),
            orientation=np.eye(2) if orientation is None else orientation,
        )
        if b > 1:
            rate = rate.reshape(h, b, w, b).sum(axis=(1, 3), dtype=np.float32)
        return rate


# ------------------------------------------------------------------------ camera


class DemoCamera(DemoPeripheral, SimpleCameraDevice):
    """Simulated sCMOS camera imaging the virtual slide.

    The image is the slide's photon rate at the stage's true position, focus,
    filter and objective, times exposure, converted to ADU on a dark offset,
    with Poisson shot noise and Gaussian read noise (drawn together as a
    Gaussian of variance ``signal + read²`` electrons, exact enough above a
    few electrons and an order of magnitude faster than Poisson draws),
    digitised to ``BitDepth`` bits.

    Properties beyond the noise model
    ---------------------------------
    Binning : int
        1, 2 or 4: bins of ``n × n`` sensor pixels, their charge summed;
        the image shrinks and its pixels grow by ``n``. Clears the ROI.
    BitDepth : int
        8, 10, 12, 14 or 16 (default 16): ADU clip at ``2**bits − 1``;
        8-bit frames are uint8, deeper ones uint16 (``PixelType``).
    Rotation_deg : float
        How the sensor is turned against the stage axes (default 0).
    MirrorX : "Off" | "On"
        Whether image columns run against stage X before the rotation.
        Pixel ``(r, c)`` images ``stage + p·R(θ)·F·(c + ½ − W/2, r + ½ − H/2)``
        (:func:`camera_orientation`); 90° steps are exact, other angles
        resampled bilinearly.
    Vignetting_pct : float
        Illumination fall-off to the corners (cos⁴ law, default 0 = flat).
    ReadoutTime_ms : float
        Sensor readout after each exposure (default 0).
    ExposureTiming : "Instant" | "Real"
        "Instant" (default): a frame is ready as soon as it is rendered.
        "Real": a snap lasts ``exposure + ReadoutTime_ms`` (or the render
        time, if longer), as a real camera's does.
    """

    def __init__(self) -> None:
        super().__init__()
        self._exposure_ms = 10.0
        self._binning = 1
        self._bit_depth = 16
        self._snap_count = 0
        self._noise_pool: np.ndarray | None = None
        self._noise_rng = np.random.default_rng()
        self._noise_seed = -1
        self._noise_lock = threading.Lock()
        self._vignetting_cache: tuple[tuple[int, int, float], NDArray[np.float32]] | None = None
        self.register_property("SensorWidth", default_value=2048, limits=(16, 8192), property_type=int)
        self.register_property("SensorHeight", default_value=2048, limits=(16, 8192), property_type=int)
        self.register_property("SensorPixelSize_um", default_value=SENSOR_PIXEL_UM, is_read_only=True)
        self.register_property("Noise", default_value="On", allowed_values=("On", "Off"))
        self.register_property(
            "NoiseSeed",
            default_value=-1,
            property_type=int,
            getter=DemoCamera._get_noise_seed,
            setter=DemoCamera._set_noise_seed,
        )
        self.register_property("DarkOffset_ADU", default_value=100.0, limits=(0.0, 2000.0))
        self.register_property("ReadNoise_e", default_value=1.6, limits=(0.0, 50.0))
        self.register_property("Gain_e_per_ADU", default_value=0.5, limits=(0.01, 100.0))
        self.register_property("QuantumEfficiency", default_value=0.8, limits=(0.01, 1.0))
        # limits, not allowed values: a .cfg hands "12" as text, which a plain
        # UniMMCore would compare to the integers literally
        self.register_property(
            "BitDepth",
            default_value=16,
            limits=(min(BIT_DEPTHS), max(BIT_DEPTHS)),
            property_type=int,
            getter=DemoCamera.bit_depth,
            setter=DemoCamera._set_bit_depth,
        )
        self.register_property(
            "PixelType", property_type=str, getter=DemoCamera._pixel_type, is_read_only=True
        )
        self.register_property("Rotation_deg", default_value=0.0, limits=(-360.0, 360.0))
        self.register_property("MirrorX", default_value="Off", allowed_values=("Off", "On"))
        self.register_property("Vignetting_pct", default_value=0.0, limits=(0.0, 90.0))
        self.register_property("ReadoutTime_ms", default_value=0.0, limits=(0.0, 10_000.0))
        self.register_property("ExposureTiming", default_value="Instant", allowed_values=("Instant", "Real"))
        self.register_property("FailEveryNthSnap", default_value=0, limits=(0, 1_000_000), property_type=int)
        self.register_property("HangEveryNthSnap", default_value=0, limits=(0, 1_000_000), property_type=int)
        self.register_property("Hang_s", default_value=30.0, limits=(0.0, 3600.0))
        self.set_property_limits("Binning", (min(BINNINGS), max(BINNINGS)))

    # --- camera API -------------------------------------------------------

    def get_exposure(self) -> float:
        """Exposure time (ms)."""
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        """Set the exposure time (ms); must be ≥ 0."""
        exposure = float(exposure)
        if exposure < 0:
            raise DemoDeviceError(f"{self.get_label()}: exposure must be ≥ 0 ms, got {exposure}")
        self._exposure_ms = float(exposure)

    def get_binning(self) -> int:
        """Square binning factor."""
        return self._binning

    def set_binning(self, value: int) -> None:
        """Set the binning (1, 2 or 4); clears the ROI, as a real camera's resize does."""
        b = int(float(value))
        if b not in BINNINGS:
            raise DemoDeviceError(f"{self.get_label()}: binning must be one of {BINNINGS}, got {value!r}")
        if b != self._binning:
            self._binning = b
            self.clear_roi()

    def _set_bit_depth(self, value: int) -> None:
        bits = int(float(value))
        if bits not in BIT_DEPTHS:
            raise DemoDeviceError(f"{self.get_label()}: BitDepth must be one of {BIT_DEPTHS}, got {value!r}")
        self._bit_depth = bits

    def bit_depth(self) -> int:
        """Bits per pixel the ADC delivers."""
        return self._bit_depth

    def _pixel_type(self) -> str:
        return "8bit" if self.bit_depth() <= 8 else "16bit"

    def sensor_shape(self) -> tuple[int, int]:
        """Image (height, width) in pixels with the current binning (the full, binned sensor)."""
        b = self._binning
        return (_int_prop(self, "SensorHeight") // b, _int_prop(self, "SensorWidth") // b)

    def dtype(self) -> DTypeLike:
        """uint8 at 8 bits, else uint16."""
        return np.uint8 if self.bit_depth() <= 8 else np.uint16

    def orientation(self) -> NDArray[np.float64]:
        """The sensor's orientation on the stage (:func:`camera_orientation`)."""
        return camera_orientation(_float_prop(self, "Rotation_deg"), _on(self, "MirrorX"))

    def image_pixel_size_um(self) -> float:
        """Size of one image pixel on the slide (µm) with the current objective and binning."""
        return SENSOR_PIXEL_UM * self._binning / self.hub.magnification()

    def true_pixel_affine_um(self) -> NDArray[np.float64]:
        """The 2×2 pixel affine this camera really has (µm per pixel, binning applied).

        What a ``PixelSizeAffine`` line of the ``.cfg`` should declare for
        the current objective (divided by the binning).
        """
        return self.image_pixel_size_um() * self.orientation()

    def snap(self, buffer: np.ndarray) -> Mapping[str, Any]:
        """Render one frame into ``buffer`` (the full, binned sensor)."""
        t0 = time.perf_counter()
        self._snap_count += 1
        n = self._snap_count
        label = self.get_label()
        if _every_nth(n, _int_prop(self, "HangEveryNthSnap")):
            hang_s = _float_prop(self, "Hang_s")
            logger.warning("%s: snap %d hangs for %.1f s (injected fault)", label, n, hang_s)
            time.sleep(hang_s)
        if _every_nth(n, _int_prop(self, "FailEveryNthSnap")):
            raise DemoDeviceError(f"{label}: camera timeout on snap {n}: no frame arrived (injected fault)")
        hub = self.hub
        shape = (int(buffer.shape[0]), int(buffer.shape[1]))
        rate = hub.expected_photon_rate(shape, orientation=self.orientation(), binning=self._binning)
        if (pct := _float_prop(self, "Vignetting_pct")) > 0:
            rate *= self._vignetting(shape, pct)
        self._expose(rate, buffer)
        x_um, y_um = hub.true_xy_um()
        readout_ms = _float_prop(self, "ReadoutTime_ms")
        if self.get_property_value("ExposureTiming") == "Real":
            remaining_s = t0 + (self._exposure_ms + readout_ms) / 1000.0 - time.perf_counter()
            if remaining_s > 0:
                time.sleep(remaining_s)
        return {"DemoTrueX_um": x_um, "DemoTrueY_um": y_um, "DemoSnap": n, "ReadoutTime_ms": readout_ms}

    def _vignetting(self, shape: tuple[int, int], pct: float) -> NDArray[np.float32]:
        key = (shape[0], shape[1], pct)
        if self._vignetting_cache is None or self._vignetting_cache[0] != key:
            self._vignetting_cache = (key, vignetting_map(shape, pct))
        return self._vignetting_cache[1]

    # --- noise ---------------------------------------------------------------

    def _get_noise_seed(self) -> int:
        return self._noise_seed

    def _set_noise_seed(self, seed: int) -> None:
        seed = int(float(seed))
        with self._noise_lock:
            self._noise_seed = seed
            self._noise_rng = np.random.default_rng(None if seed < 0 else seed)
            self._noise_pool = None

    def _standard_normals(self, n: int) -> tuple[np.ndarray, bool]:
        """A view of ``n`` standard normals and whether to negate them."""
        # Drawing 4 M normals costs ~45 ms here; a pool drawn once and read at a
        # random offset and sign per frame costs nothing and is still
        # independent from pixel to pixel within a frame.
        with self._noise_lock:
            if self._noise_pool is None or self._noise_pool.size < 2 * n:
                size = max(1 << 23, 2 * n)
                self._noise_pool = self._noise_rng.standard_normal(size, dtype=np.float32)
            offset = int(self._noise_rng.integers(0, self._noise_pool.size - n))
            negate = bool(self._noise_rng.random() < 0.5)
            return self._noise_pool[offset : offset + n], negate

    def _expose(self, rate: np.ndarray, out: np.ndarray) -> None:
        """Turn a photon-rate image into ADU in ``out``; ``rate`` is overwritten."""
        qe = _float_prop(self, "QuantumEfficiency")
        gain = _float_prop(self, "Gain_e_per_ADU")
        offset = _float_prop(self, "DarkOffset_ADU")
        adu = rate  # reuse the renderer's buffer: a 2048² frame is 16 MB a pass
        adu *= np.float32(self._exposure_ms * qe / gain)  # mean signal in ADU
        if self.get_property_value("Noise") == "On":
            read_adu = _float_prop(self, "ReadNoise_e") / gain
            # shot + read noise in ADU: sqrt(electrons + read_e²) / gain
            sigma = adu * np.float32(1.0 / gain)
            sigma += np.float32(read_adu * read_adu)
            np.sqrt(sigma, out=sigma)
            normals, negate = self._standard_normals(adu.size)
            sigma *= normals.reshape(adu.shape)
            if negate:
                adu -= sigma
            else:
                adu += sigma
        adu += np.float32(offset + 0.5)  # +0.5: round, not truncate, on the cast
        np.clip(adu, 0, 2 ** self.bit_depth() - 1, out=adu)
        np.copyto(out, adu, casting="unsafe")


# ------------------------------------------------------------------------ stages


class DemoXYStage(DemoPeripheral, XYStageDevice):
    """Simulated motorised XY stage with the travel of a 75 × 25 mm slide.

    Properties: ``Speed_um_per_s`` (0 = instant moves),
    ``Acceleration_um_per_s2`` (0 = full speed at once; else trapezoidal
    moves, see :func:`move_time_s`), ``SettleTime_ms`` (busy after the
    motion ends), ``PositioningError_um`` (standard deviation of where a
    move really lands, per axis; 0 = exact), ``PositioningErrorSeed``,
    ``FailEveryNthMove`` (0 = never), read-only ``TrueX_um`` / ``TrueY_um``
    (where the stage really is: what the camera sees, which a real stage
    cannot tell you) and read-only ``TravelXMin_um`` … ``TravelYMax_um``
    (the travel limits in the stage's current coordinates, so origin
    changes move them). Both axes move together along the straight line.
    """

    def __init__(self) -> None:
        super().__init__()
        self._target_um = (37_500.0, 12_500.0)  # commanded, physical coordinates
        self._true_um = self._target_um
        self._origin_um = (0.0, 0.0)
        self._move_start_um = self._true_um
        self._move_t0 = 0.0
        self._move_profile = (0.0, 0.0, 0.0)  # distance µm, speed µm/s, acceleration µm/s²
        self._move_duration_s = 0.0  # motion only
        self._settle_s = 0.0
        self._move_count = 0
        self._error_seed = 0
        self._error_rng = np.random.default_rng(0)
        self.register_property("Speed_um_per_s", default_value=0.0, limits=(0.0, 1e6))
        self.register_property("Acceleration_um_per_s2", default_value=0.0, limits=(0.0, 1e9))
        self.register_property("SettleTime_ms", default_value=0.0, limits=(0.0, 60_000.0))
        self.register_property("PositioningError_um", default_value=0.0, limits=(0.0, 100.0))
        self.register_property(
            "PositioningErrorSeed",
            default_value=0,
            property_type=int,
            getter=DemoXYStage._get_error_seed,
            setter=DemoXYStage._set_error_seed,
        )
        self.register_property("FailEveryNthMove", default_value=0, limits=(0, 1_000_000), property_type=int)
        self.register_property(
            "TrueX_um", property_type=float, getter=DemoXYStage._true_x_um, is_read_only=True
        )
        self.register_property(
            "TrueY_um", property_type=float, getter=DemoXYStage._true_y_um, is_read_only=True
        )
        for name, getter in (
            ("TravelXMin_um", DemoXYStage._travel_x_min_um),
            ("TravelXMax_um", DemoXYStage._travel_x_max_um),
            ("TravelYMin_um", DemoXYStage._travel_y_min_um),
            ("TravelYMax_um", DemoXYStage._travel_y_max_um),
        ):
            self.register_property(name, property_type=float, getter=getter, is_read_only=True)

    def _travel_x_min_um(self) -> float:
        return self.travel_um()[0][0]

    def _travel_x_max_um(self) -> float:
        return self.travel_um()[0][1]

    def _travel_y_min_um(self) -> float:
        return self.travel_um()[1][0]

    def _travel_y_max_um(self) -> float:
        return self.travel_um()[1][1]

    def _true_x_um(self) -> float:
        return self.true_position_um()[0]

    def _true_y_um(self) -> float:
        return self.true_position_um()[1]

    def _get_error_seed(self) -> int:
        return self._error_seed

    def _set_error_seed(self, seed: int) -> None:
        self._error_seed = int(float(seed))
        self._error_rng = np.random.default_rng(self._error_seed)

    def travel_um(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """((x min, x max), (y min, y max)) µm in the stage's current coordinates."""
        (x0, x1), (y0, y1) = XY_TRAVEL_UM
        ox, oy = self._origin_um
        return ((x0 - ox, x1 - ox), (y0 - oy, y1 - oy))

    def set_position_um(self, x: float, y: float) -> None:
        """Move to (x, y) µm in stage coordinates; refuses targets outside the travel."""
        px, py = x + self._origin_um[0], y + self._origin_um[1]
        (x0, x1), (y0, y1) = XY_TRAVEL_UM
        label = self.get_label()
        if not (math.isfinite(px) and math.isfinite(py) and x0 <= px <= x1 and y0 <= py <= y1):
            (tx0, tx1), (ty0, ty1) = self.travel_um()
            raise DemoDeviceError(
                f"{label}: move to ({x:.1f}, {y:.1f}) µm refused: outside the stage travel "
                f"X {tx0:.0f}..{tx1:.0f}, Y {ty0:.0f}..{ty1:.0f} µm"
            )
        self._move_count += 1
        if _every_nth(self._move_count, _int_prop(self, "FailEveryNthMove")):
            raise DemoDeviceError(
                f"{label}: move {self._move_count} to ({x:.1f}, {y:.1f}) µm failed: "
                "motor stalled (injected fault)"
            )
        sigma = _float_prop(self, "PositioningError_um")
        ex, ey = self._error_rng.normal(0.0, sigma, 2) if sigma > 0 else (0.0, 0.0)
        start = self.true_position_um()
        self._target_um = (px, py)
        self._move_start_um = start
        self._true_um = (px + float(ex), py + float(ey))
        speed = _float_prop(self, "Speed_um_per_s")
        accel = _float_prop(self, "Acceleration_um_per_s2")
        dist = math.hypot(self._true_um[0] - start[0], self._true_um[1] - start[1])
        self._move_profile = (dist, speed, accel)
        self._move_duration_s = _motion_time_s(dist, speed, accel)
        self._settle_s = _float_prop(self, "SettleTime_ms") / 1000.0
        self._move_t0 = time.perf_counter()
        # as a C++ stage adapter's callback does: views of the position update at once
        self.core.events.XYStagePositionChanged.emit(self.get_label(), float(x), float(y))

    def _fraction_moved(self) -> float:
        if self._move_duration_s <= 0:
            return 1.0
        d, v, a = self._move_profile
        t = time.perf_counter() - self._move_t0
        return 1.0 if t >= self._move_duration_s else _distance_moved_um(t, d, v, a) / d

    def true_position_um(self) -> tuple[float, float]:
        """Where the stage physically is now (physical coordinates, µm)."""
        f = self._fraction_moved()
        (sx, sy), (tx, ty) = self._move_start_um, self._true_um
        return (sx + f * (tx - sx), sy + f * (ty - sy))

    def get_position_um(self) -> tuple[float, float]:
        """Reported position (µm): the target once arrived, as an encoder-less stage reports."""
        f = self._fraction_moved()
        if f >= 1.0:
            px, py = self._target_um
        else:
            px, py = self.true_position_um()
        return (px - self._origin_um[0], py - self._origin_um[1])

    def busy(self) -> bool:
        """True while a timed move or its settling is in progress."""
        return time.perf_counter() - self._move_t0 < self._move_duration_s + self._settle_s

    def home(self) -> None:
        """Move to the physical origin of the travel (0, 0)."""
        self.set_position_um(-self._origin_um[0], -self._origin_um[1])

    def stop(self) -> None:
        """Stop where the stage is now."""
        here = self.true_position_um()
        self._move_start_um = self._true_um = self._target_um = here
        self._move_duration_s = 0.0
        self._settle_s = 0.0

    def set_origin_x(self) -> None:
        """Make the current X position read 0."""
        self._origin_um = (self._target_um[0], self._origin_um[1])

    def set_origin_y(self) -> None:
        """Make the current Y position read 0."""
        self._origin_um = (self._origin_um[0], self._target_um[1])


class DemoZStage(DemoPeripheral, StageDevice):
    """Simulated focus drive (µm); refuses moves outside its travel.

    Read-only ``TravelMin_um`` / ``TravelMax_um`` give the travel in the
    drive's current coordinates.
    """

    def __init__(self) -> None:
        super().__init__()
        self._z_um = 0.0
        self._origin_um = 0.0
        self._move_count = 0
        self.register_property("FailEveryNthMove", default_value=0, limits=(0, 1_000_000), property_type=int)
        self.register_property(
            "TravelMin_um", property_type=float, getter=DemoZStage._travel_min_um, is_read_only=True
        )
        self.register_property(
            "TravelMax_um", property_type=float, getter=DemoZStage._travel_max_um, is_read_only=True
        )

    def _travel_min_um(self) -> float:
        return self.travel_um()[0]

    def _travel_max_um(self) -> float:
        return self.travel_um()[1]

    def travel_um(self) -> tuple[float, float]:
        """(min, max) µm in the drive's current coordinates."""
        lo, hi = Z_TRAVEL_UM
        return (lo - self._origin_um, hi - self._origin_um)

    def set_position_um(self, val: float) -> None:
        """Move the focus to ``val`` µm."""
        z = float(val) + self._origin_um
        lo, hi = Z_TRAVEL_UM
        if not (math.isfinite(z) and lo <= z <= hi):
            raise DemoDeviceError(
                f"{self.get_label()}: focus move to {val:.2f} µm refused: outside the travel "
                f"{lo - self._origin_um:.0f}..{hi - self._origin_um:.0f} µm"
            )
        self._move_count += 1
        if _every_nth(self._move_count, _int_prop(self, "FailEveryNthMove")):
            raise DemoDeviceError(
                f"{self.get_label()}: focus move {self._move_count} failed (injected fault)"
            )
        self._z_um = z
        self.core.events.stagePositionChanged.emit(self.get_label(), float(val))

    def get_position_um(self) -> float:
        """Focus position (µm)."""
        return self._z_um - self._origin_um

    def true_position_um(self) -> float:
        """Physical focus position (µm), independent of any origin set."""
        return self._z_um

    def home(self) -> None:
        """Move to physical zero."""
        self._z_um = 0.0

    def stop(self) -> None:
        """Moves are instantaneous: nothing to stop."""

    def set_origin(self) -> None:
        """Make the current position read 0."""
        self._origin_um = self._z_um


class DemoShutter(DemoPeripheral, ShutterDevice):
    """Simulated excitation shutter: closed means a dark frame.

    ``State`` (0 closed, 1 open) is the shutter as a property, as
    Micro-Manager's shutters have it, so a ``.cfg`` preset can open it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._open = False
        self.register_property(
            "State",
            property_type=int,
            limits=(0, 1),
            getter=DemoShutter._get_state,
            setter=DemoShutter._set_state_property,
        )

    def _get_state(self) -> int:
        return int(self._open)

    def _set_state_property(self, value: int) -> None:
        self.set_open(bool(int(float(value))))

    def get_open(self) -> bool:
        """True when open."""
        return self._open

    def set_open(self, open: bool) -> None:
        """Open (True) or close (False)."""
        self._open = bool(open)


class _TimedStateDevice(DemoPeripheral, StateDevice):
    """A state device whose position changes take ``SwitchTime_ms`` (busy meanwhile)."""

    def __init__(self, labels: Mapping[int, str], initial: int) -> None:
        super().__init__(labels)
        self._state = initial
        self._switch_t0 = 0.0
        self._switch_s = 0.0
        self.register_property("SwitchTime_ms", default_value=0.0, limits=(0.0, 60_000.0))

    def get_state(self) -> int:
        """Current (target) position."""
        return self._state

    def set_state(self, position: int) -> None:
        """Move to a position; a change takes ``SwitchTime_ms``."""
        position = int(position)
        if position != self._state:
            self._switch_s = _float_prop(self, "SwitchTime_ms") / 1000.0
            self._switch_t0 = time.perf_counter()
        self._state = position

    def switching(self) -> bool:
        """True while a position change is under way."""
        return time.perf_counter() - self._switch_t0 < self._switch_s

    def busy(self) -> bool:
        """True while switching."""
        return self.switching()


class DemoFilterWheel(_TimedStateDevice):
    """Simulated fluorescence filter wheel; each position images one slide channel.

    ``SwitchTime_ms`` (default 0): time a change of filter takes; the light
    path is blocked meanwhile.
    """

    HUB_ROLE: ClassVar[str] = "filter_wheel"
    CHANNELS: ClassVar[dict[int, str]] = {0: "DAPI", 1: "tdTomato"}

    def __init__(self) -> None:
        super().__init__(self.CHANNELS, 0)

    def channel(self) -> str:
        """Name of the slide channel the current filter passes."""
        return self.CHANNELS[self._state]


class DemoObjectiveTurret(_TimedStateDevice):
    """Simulated objective turret with 4x, 10x and 20x objectives.

    ``SwitchTime_ms`` (default 0): time a change of objective takes; no
    objective is in the light path meanwhile.
    """

    HUB_ROLE: ClassVar[str] = "objective_turret"
    OBJECTIVES: ClassVar[dict[int, str]] = {0: "4x", 1: "10x", 2: "20x"}
    MAGNIFICATION: ClassVar[dict[int, float]] = {0: 4.0, 1: 10.0, 2: 20.0}

    def __init__(self) -> None:
        super().__init__(self.OBJECTIVES, 1)

    def magnification(self) -> float:
        """Magnification of the objective in the light path."""
        return self.MAGNIFICATION[self._state]
