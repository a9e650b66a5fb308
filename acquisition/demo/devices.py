"""Python device adapters of the demo microscope.

These are pymmcore-plus ``experimental.unicore`` devices, loaded by
``UniMMCore`` from ``#py pyDevice`` lines of ``hardware_configs/demo.cfg``.
Like the devices of one C++ adapter library (e.g. Micro-Manager's
DemoCamera with its ``DHub``), they share state through a hub:
:class:`DemoHub` owns the virtual slide and knows its peripherals, so the
camera can image the slide at the stage's *true* position, the current
focus, filter and objective.

Each device behaves like hardware: limits that refuse impossible moves,
moves that take time when a speed is set, a stage that lands a few µm off
target when positioning error is on, and fault injection (timeouts, failed
moves, a camera that stops answering) for reliability tests.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pymmcore_plus.experimental.unicore import (
    HubDevice,
    ShutterDevice,
    SimpleCameraDevice,
    StageDevice,
    StateDevice,
    XYStageDevice,
)

from ..errors import CordScopeError

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

    from .slide import VirtualSlide

__all__ = [
    "DemoCamera",
    "DemoDeviceError",
    "DemoFilterWheel",
    "DemoHub",
    "DemoObjectiveTurret",
    "DemoShutter",
    "DemoXYStage",
    "DemoZStage",
]

logger = logging.getLogger(__name__)

#: Physical pixel of the simulated sCMOS sensor (µm); image pixel = this / magnification.
SENSOR_PIXEL_UM = 6.5
#: Travel of the XY stage: a 75 × 25 mm slide, in stage µm.
XY_TRAVEL_UM = ((0.0, 75_000.0), (0.0, 25_000.0))
#: Travel of the focus drive (µm).
Z_TRAVEL_UM = (-2_000.0, 2_000.0)


class DemoDeviceError(CordScopeError):
    """A demo device refused a command or failed (possibly by fault injection)."""


class _Peripheral:
    """Mixin: a demo device that registers with its :class:`DemoHub`."""

    _hub: DemoHub | None = None

    def attach_hub(self, hub: HubDevice) -> None:
        """Register with the parent hub (called by ``CordScopeCore`` after loading)."""
        if not isinstance(hub, DemoHub):
            raise DemoDeviceError(f"parent of a demo device must be a DemoHub, got {type(hub).__name__}")
        self._hub = hub
        hub.register(self)

    @property
    def hub(self) -> DemoHub:
        if self._hub is None:
            label = self.get_label() if hasattr(self, "get_label") else type(self).__name__
            raise DemoDeviceError(
                f"{label}: not attached to a DemoHub (add 'Parent,{label},<hub>' to the .cfg)"
            )
        return self._hub


def _int_prop(device: Any, name: str) -> int:
    # property values set from a .cfg or a GUI arrive as strings
    return int(float(device.get_property_value(name)))


def _float_prop(device: Any, name: str) -> float:
    return float(device.get_property_value(name))


def _every_nth(counter: int, n: int) -> bool:
    return n > 0 and counter % n == 0


# --------------------------------------------------------------------------- hub


class DemoHub(HubDevice):
    """The demo microscope's controller: owns the virtual slide.

    Properties
    ----------
    Slide : str
        "demo" (the demo slide of ``acquisition.demo.slide``).
    SlideSeed : int
        Seed of the slide's procedural content (nuclei, axons, focus surface).
    FocusBumps : {"Off", "On"}
        The slide's local focus bumps (bubbles, folds; see ``VirtualSlide.focus_bumps``).
    """

    def __init__(self) -> None:
        super().__init__()
        self._slide: VirtualSlide | None = None
        self._slide_lock = threading.Lock()
        self.camera: DemoCamera | None = None
        self.xy_stage: DemoXYStage | None = None
        self.z_stage: DemoZStage | None = None
        self.shutter: DemoShutter | None = None
        self.filter_wheel: DemoFilterWheel | None = None
        self.objective_turret: DemoObjectiveTurret | None = None
        self.register_property("Slide", default_value="demo", allowed_values=("demo",))
        self.register_property("SlideSeed", default_value=2026, property_type=int, setter=DemoHub._set_seed)
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
            ("DemoCamera", "Simulated 16-bit sCMOS camera over the virtual slide"),
            ("DemoXYStage", "Simulated motorised XY stage (75 × 25 mm slide travel)"),
            ("DemoZStage", "Simulated focus drive"),
            ("DemoShutter", "Simulated excitation shutter"),
            ("DemoFilterWheel", "Simulated fluorescence filter wheel"),
            ("DemoObjectiveTurret", "Simulated objective turret (4x, 10x, 20x)"),
        ]

    def initialize(self) -> None:
        """Build the virtual slide now, as hardware initialises, not on the first snap."""
        _ = self.slide

    def _set_seed(self, value: int) -> None:
        with self._slide_lock:
            self._slide = None  # rebuilt lazily with the new seed

    def _get_focus_bumps(self) -> str:
        return "On" if self._focus_bumps else "Off"

    def _set_focus_bumps(self, value: str) -> None:
        with self._slide_lock:
            self._focus_bumps = str(value) == "On"
            if self._slide is not None:
                self._slide = self._slide.with_focus_bumps(self._focus_bumps)

    def register(self, device: object) -> None:
        """Remember a peripheral by its role."""
        roles: dict[type, str] = {
            DemoCamera: "camera",
            DemoXYStage: "xy_stage",
            DemoZStage: "z_stage",
            DemoShutter: "shutter",
            DemoFilterWheel: "filter_wheel",
            DemoObjectiveTurret: "objective_turret",
        }
        for cls, attr in roles.items():
            if isinstance(device, cls):
                setattr(self, attr, device)
                return
        raise DemoDeviceError(f"{type(device).__name__} is not a demo peripheral")

    @property
    def slide(self) -> VirtualSlide:
        """The virtual slide (built on first use: generating it takes a moment)."""
        with self._slide_lock:
            if self._slide is None:
                from .slide import demo_slide

                self._slide = demo_slide(seed=_int_prop(self, "SlideSeed")).with_focus_bumps(
                    self._focus_bumps
                )
            return self._slide

    def set_slide(self, slide: VirtualSlide) -> None:
        """Put another virtual slide on the stage (e.g. one animal of a cohort)."""
        with self._slide_lock:
            self._slide = slide.with_focus_bumps(self._focus_bumps)

    def magnification(self) -> float:
        """Magnification of the objective in the light path."""
        if self.objective_turret is None:
            raise DemoDeviceError(f"{self.get_label()}: no objective turret attached")
        return self.objective_turret.magnification()

    def true_xy_um(self) -> tuple[float, float]:
        """Where the XY stage physically is (µm)."""
        if self.xy_stage is None:
            raise DemoDeviceError(f"{self.get_label()}: no XY stage attached")
        return self.xy_stage.true_position_um()

    def expected_photon_rate(self, shape: tuple[int, int]) -> np.ndarray:
        """Noiseless photons / ms / pixel the camera sees now (float32, ``shape``)."""
        shutter_open = self.shutter is None or self.shutter.get_open()
        if not shutter_open or self.filter_wheel is None:
            return np.zeros(shape, dtype=np.float32)
        z_um = self.z_stage.true_position_um() if self.z_stage is not None else 0.0
        return self.slide.render(
            center_um=self.true_xy_um(),
            pixel_size_um=SENSOR_PIXEL_UM / self.magnification(),
            shape=shape,
            channel=self.filter_wheel.channel(),
            z_um=z_um,
        )


# ------------------------------------------------------------------------ camera


class DemoCamera(_Peripheral, SimpleCameraDevice):
    """Simulated 16-bit sCMOS camera imaging the virtual slide.

    The image is the slide's photon rate at the stage's true position, focus,
    filter and objective, times exposure, converted to ADU on a dark offset,
    with Poisson shot noise and Gaussian read noise (drawn together as a
    Gaussian of variance ``signal + read²`` electrons, exact enough above a
    few electrons and an order of magnitude faster than Poisson draws).
    """

    def __init__(self) -> None:
        super().__init__()
        self._exposure_ms = 10.0
        self._snap_count = 0
        self._noise_pool: np.ndarray | None = None
        self._noise_rng = np.random.default_rng()
        self._noise_lock = threading.Lock()
        self.register_property("SensorWidth", default_value=2048, limits=(16, 8192), property_type=int)
        self.register_property("SensorHeight", default_value=2048, limits=(16, 8192), property_type=int)
        self.register_property("SensorPixelSize_um", default_value=SENSOR_PIXEL_UM, is_read_only=True)
        self.register_property("Noise", default_value="On", allowed_values=("On", "Off"))
        self.register_property(
            "NoiseSeed", default_value=-1, property_type=int, setter=DemoCamera._set_noise_seed
        )
        self.register_property("DarkOffset_ADU", default_value=100.0, limits=(0.0, 2000.0))
        self.register_property("ReadNoise_e", default_value=1.6, limits=(0.0, 50.0))
        self.register_property("Gain_e_per_ADU", default_value=0.5, limits=(0.01, 100.0))
        self.register_property("QuantumEfficiency", default_value=0.8, limits=(0.01, 1.0))
        self.register_property("FailEveryNthSnap", default_value=0, limits=(0, 1_000_000), property_type=int)
        self.register_property("HangEveryNthSnap", default_value=0, limits=(0, 1_000_000), property_type=int)
        self.register_property("Hang_s", default_value=30.0, limits=(0.0, 3600.0))

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

    def sensor_shape(self) -> tuple[int, int]:
        """Full sensor (height, width) in pixels."""
        return (_int_prop(self, "SensorHeight"), _int_prop(self, "SensorWidth"))

    def dtype(self) -> DTypeLike:
        """Pixels are 16-bit unsigned."""
        return np.uint16

    def image_pixel_size_um(self) -> float:
        """Size of one image pixel on the slide (µm) with the current objective."""
        return SENSOR_PIXEL_UM / self.hub.magnification()

    def snap(self, buffer: np.ndarray) -> Mapping[str, Any]:
        """Render one frame into ``buffer`` (full sensor, uint16)."""
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
        rate = hub.expected_photon_rate(self.sensor_shape())  # photons / ms / pixel
        self._expose(rate, buffer)
        x_um, y_um = hub.true_xy_um()
        return {"DemoTrueX_um": x_um, "DemoTrueY_um": y_um, "DemoSnap": n}

    # --- noise ---------------------------------------------------------------

    def _set_noise_seed(self, seed: int) -> None:
        seed = int(float(seed))
        with self._noise_lock:
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
        np.clip(adu, 0, 65535, out=adu)
        np.copyto(out, adu, casting="unsafe")


# ------------------------------------------------------------------------ stages


class DemoXYStage(_Peripheral, XYStageDevice):
    """Simulated motorised XY stage with the travel of a 75 × 25 mm slide.

    Properties: ``Speed_um_per_s`` (0 = instant moves), ``PositioningError_um``
    (standard deviation of where a move really lands, per axis; 0 = exact),
    ``PositioningErrorSeed``, ``FailEveryNthMove`` (0 = never), and read-only
    ``TrueX_um`` / ``TrueY_um`` (where the stage really is: what the camera
    sees, which a real stage cannot tell you).
    """

    def __init__(self) -> None:
        super().__init__()
        self._target_um = (37_500.0, 12_500.0)  # commanded, physical coordinates
        self._true_um = self._target_um
        self._origin_um = (0.0, 0.0)
        self._move_start_um = self._true_um
        self._move_t0 = 0.0
        self._move_duration_s = 0.0
        self._move_count = 0
        self._error_rng = np.random.default_rng(0)
        self.register_property("Speed_um_per_s", default_value=0.0, limits=(0.0, 1e6))
        self.register_property("PositioningError_um", default_value=0.0, limits=(0.0, 100.0))
        self.register_property(
            "PositioningErrorSeed", default_value=0, property_type=int, setter=DemoXYStage._set_error_seed
        )
        self.register_property("FailEveryNthMove", default_value=0, limits=(0, 1_000_000), property_type=int)
        self.register_property(
            "TrueX_um", property_type=float, getter=DemoXYStage._true_x_um, is_read_only=True
        )
        self.register_property(
            "TrueY_um", property_type=float, getter=DemoXYStage._true_y_um, is_read_only=True
        )

    def _true_x_um(self) -> float:
        return self.true_position_um()[0]

    def _true_y_um(self) -> float:
        return self.true_position_um()[1]

    def _set_error_seed(self, seed: int) -> None:
        self._error_rng = np.random.default_rng(int(float(seed)))

    def set_position_um(self, x: float, y: float) -> None:
        """Move to (x, y) µm in stage coordinates; refuses targets outside the travel."""
        px, py = x + self._origin_um[0], y + self._origin_um[1]
        (x0, x1), (y0, y1) = XY_TRAVEL_UM
        label = self.get_label()
        if not (math.isfinite(px) and math.isfinite(py) and x0 <= px <= x1 and y0 <= py <= y1):
            raise DemoDeviceError(
                f"{label}: move to ({x:.1f}, {y:.1f}) µm refused: outside the stage travel "
                f"X {x0 - self._origin_um[0]:.0f}..{x1 - self._origin_um[0]:.0f}, "
                f"Y {y0 - self._origin_um[1]:.0f}..{y1 - self._origin_um[1]:.0f} µm"
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
        dist = math.hypot(self._true_um[0] - start[0], self._true_um[1] - start[1])
        self._move_duration_s = dist / speed if speed > 0 else 0.0
        self._move_t0 = time.perf_counter()
        # as a C++ stage adapter's callback does: views of the position update at once
        self.core.events.XYStagePositionChanged.emit(self.get_label(), float(x), float(y))

    def _fraction_moved(self) -> float:
        if self._move_duration_s <= 0:
            return 1.0
        return min(1.0, (time.perf_counter() - self._move_t0) / self._move_duration_s)

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
        """True while a timed move is in progress."""
        return self._fraction_moved() < 1.0

    def home(self) -> None:
        """Move to the physical origin of the travel (0, 0)."""
        self.set_position_um(-self._origin_um[0], -self._origin_um[1])

    def stop(self) -> None:
        """Stop where the stage is now."""
        here = self.true_position_um()
        self._move_start_um = self._true_um = self._target_um = here
        self._move_duration_s = 0.0

    def set_origin_x(self) -> None:
        """Make the current X position read 0."""
        self._origin_um = (self._target_um[0], self._origin_um[1])

    def set_origin_y(self) -> None:
        """Make the current Y position read 0."""
        self._origin_um = (self._origin_um[0], self._target_um[1])


class DemoZStage(_Peripheral, StageDevice):
    """Simulated focus drive (µm); refuses moves outside its travel."""

    def __init__(self) -> None:
        super().__init__()
        self._z_um = 0.0
        self._origin_um = 0.0
        self._move_count = 0
        self.register_property("FailEveryNthMove", default_value=0, limits=(0, 1_000_000), property_type=int)

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


class DemoShutter(_Peripheral, ShutterDevice):
    """Simulated excitation shutter: closed means a dark frame."""

    def __init__(self) -> None:
        super().__init__()
        self._open = False

    def get_open(self) -> bool:
        """True when open."""
        return self._open

    def set_open(self, open: bool) -> None:
        """Open (True) or close (False)."""
        self._open = bool(open)


class DemoFilterWheel(_Peripheral, StateDevice):
    """Simulated fluorescence filter wheel; each position images one slide channel."""

    CHANNELS: ClassVar[dict[int, str]] = {0: "DAPI", 1: "tdTomato"}

    def __init__(self) -> None:
        super().__init__(self.CHANNELS)
        self._state = 0

    def get_state(self) -> int:
        """Current position."""
        return self._state

    def set_state(self, position: int) -> None:
        """Move to a position."""
        self._state = int(position)

    def channel(self) -> str:
        """Name of the slide channel the current filter passes."""
        return self.CHANNELS[self._state]


class DemoObjectiveTurret(_Peripheral, StateDevice):
    """Simulated objective turret with 4x, 10x and 20x objectives."""

    OBJECTIVES: ClassVar[dict[int, str]] = {0: "4x", 1: "10x", 2: "20x"}
    MAGNIFICATION: ClassVar[dict[int, float]] = {0: 4.0, 1: 10.0, 2: 20.0}

    def __init__(self) -> None:
        super().__init__(self.OBJECTIVES)
        self._state = 1

    def get_state(self) -> int:
        """Current position."""
        return self._state

    def set_state(self, position: int) -> None:
        """Rotate to a position."""
        self._state = int(position)

    def magnification(self) -> float:
        """Magnification of the objective in the light path."""
        return self.MAGNIFICATION[self._state]
