"""Model B's hub and camera (pymmcore-plus ``experimental.unicore`` devices).

:class:`ModelBHub` is a :class:`~acquisition.demo.devices.DemoHub` that holds
model B's slide, so the demo stages, focus drive, shutter, filter wheel and
turret (hardware, not rendering) work with it unchanged.
:class:`ModelBCamera` is model B's own camera: a 4.54 µm-pixel sCMOS-like
sensor with 8- and 16-bit modes, illumination fall-off, fixed-pattern
offset, column offsets, photo-response non-uniformity, per-pixel read noise,
dark current with hot pixels, shot noise, a full well and quantisation.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from pymmcore_plus.experimental.unicore import SimpleCameraDevice

from ..devices import DemoDeviceError, DemoHub, DemoPeripheral
from . import optics
from .slide import ModelBSlide, SlideParameters, make_model_b_slide, model_b_slide, model_b_specs

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__ = ["CAMERA_MODES", "ModelBCamera", "ModelBHub"]

DEFAULT_SEED = 2027

DYE_EMISSION = 20.0
"""Emission (photons / ms / µm², 10x/0.30 reference) of the uniform dye slide (hub ``Slide`` = "dye")."""


def _on(value: Any) -> bool:
    return str(value) == "On"


class ModelBHub(DemoHub):
    """The model-B microscope's controller: owns model B's slide.

    Properties
    ----------
    Slide : str
        "model-b", or "dye": a uniformly fluorescent slide instead (:data:`DYE_EMISSION`
        in every channel), as imaged for a blank-field flat field.
    SlideSeed : int
        Seed of the slide's procedural content.
    FocusBumps : {"Off", "On"}
        Local focus bumps (bubbles, folds) on the slide.
    DapiGrayWhiteContrast : float
        Mean DAPI signal of gray vs white matter (stain, thickness).
    """

    def __init__(self) -> None:
        super().__init__()
        self._slide_b: ModelBSlide | None = None
        self._seed_b = DEFAULT_SEED
        self._bumps_b = False
        self._contrast_b = SlideParameters().dapi_gray_white_contrast
        self.register_property("Slide", default_value="model-b", allowed_values=("model-b", "dye"))
        self.register_property(
            "SlideSeed",
            default_value=DEFAULT_SEED,
            property_type=int,
            getter=lambda d: d._seed_b,
            setter=ModelBHub._set_seed_b,
        )
        self.register_property(
            "FocusBumps",
            default_value="Off",
            allowed_values=("Off", "On"),
            getter=lambda d: "On" if d._bumps_b else "Off",
            setter=ModelBHub._set_bumps_b,
        )
        self.register_property(
            "DapiGrayWhiteContrast",
            default_value=self._contrast_b,
            limits=(0.5, 5.0),
            getter=lambda d: d._contrast_b,
            setter=ModelBHub._set_contrast_b,
        )

    def get_installed_peripherals(self) -> Sequence[tuple[str, str]]:
        """Devices that can hang off this hub."""
        return [
            ("ModelBCamera", "Model B camera: 4.54 µm sCMOS, 8/16-bit, fixed pattern, vignetting"),
            *[p for p in super().get_installed_peripherals() if p[0] != "DemoCamera"],
        ]

    def _set_seed_b(self, value: int) -> None:
        with self._slide_lock:
            self._seed_b = int(float(value))
            self._slide_b = None

    def _set_bumps_b(self, value: str) -> None:
        with self._slide_lock:
            self._bumps_b = _on(value)
            self._slide_b = None

    def _set_contrast_b(self, value: float) -> None:
        with self._slide_lock:
            self._contrast_b = float(value)
            self._slide_b = None

    @property
    def slide(self) -> ModelBSlide:  # type: ignore[override]
        """Model B's slide (built on first use)."""
        with self._slide_lock:
            if self._slide_b is None:
                default = SlideParameters()
                if self._contrast_b == default.dapi_gray_white_contrast:
                    slide = model_b_slide(self._seed_b)
                else:
                    params = SlideParameters(dapi_gray_white_contrast=self._contrast_b)
                    slide = make_model_b_slide(
                        model_b_specs(self._seed_b), seed=self._seed_b, parameters=params
                    )
                self._slide_b = slide.with_focus_bumps(self._bumps_b)
            return self._slide_b

    def set_slide(self, slide: Any) -> None:
        """Put another model-B slide on the stage."""
        if not isinstance(slide, ModelBSlide):
            raise DemoDeviceError(
                f"{self.get_label()}: a model-B hub takes a ModelBSlide, got {type(slide).__name__}"
            )
        with self._slide_lock:
            self._slide_b = slide

    def objective_na(self) -> float:
        """Numerical aperture of the objective in the light path."""
        if self.objective_turret is None:
            raise DemoDeviceError(f"{self.get_label()}: no objective turret attached")
        label = self.objective_turret.OBJECTIVES[self.objective_turret.get_state()]
        if label in optics.OBJECTIVE_NA:
            return optics.OBJECTIVE_NA[label][1]
        return optics.numerical_aperture_for(self.magnification())

    def model_b_photon_rate(self, shape: tuple[int, int]) -> np.ndarray:
        """Noiseless photons / ms / pixel reaching model B's camera (float32, ``shape``)."""
        shutter_open = self.shutter is None or self.shutter.get_open()
        if not shutter_open or self.filter_wheel is None:
            return np.zeros(shape, dtype=np.float32)
        if self.get_property_value("Slide") == "dye":
            p = optics.SENSOR_PIXEL_UM / self.magnification()
            rate = DYE_EMISSION * p * p * optics.brightness_factor(self.objective_na())
            return np.full(shape, rate, dtype=np.float32)
        z_um = self.z_stage.true_position_um() if self.z_stage is not None else 0.0
        return self.slide.render(
            center_um=self.true_xy_um(),
            pixel_size_um=optics.SENSOR_PIXEL_UM / self.magnification(),
            shape=shape,
            channel=self.filter_wheel.channel(),
            z_um=z_um,
            numerical_aperture=self.objective_na(),
        )


CAMERA_MODES: Mapping[int, Mapping[str, float]] = {
    16: {"offset_adu": 500.0, "gain_e_per_adu": 0.46, "offset_sd_adu": 2.5, "column_sd_adu": 1.5},
    8: {"offset_adu": 10.0, "gain_e_per_adu": 8.0, "offset_sd_adu": 0.25, "column_sd_adu": 0.15},
}
"""Per bit depth: dark offset, conversion gain, and the spread of the per-pixel and
per-column offsets (fixed pattern)."""


class ModelBCamera(DemoPeripheral, SimpleCameraDevice):
    """Model B's camera: a 4.54 µm-pixel sCMOS-like sensor.

    Signal chain per pixel ``i``: photons ``= rate · exposure · V(r)`` (``V``:
    illumination fall-off toward the corners, ``1/(1 + (r/r0)²)²`` with
    ``Vignetting`` lost at the corners); electrons ``= photons · QE · g_i +
    dark_i · t`` (``g_i``: PRNU, 1 % SD; ``dark_i``: 0.5 e/s, 0.05 % hot
    pixels at 40-400 e/s); noise: Gaussian of variance ``electrons +
    read_i²`` (shot noise; per-pixel read noise, log-normal around 1.4 e
    with 1 % noisy pixels at 3-6 e; deviates are 16-bit uniforms through the
    inverse normal CDF); clipped to the full well; ADU ``=
    electrons / gain + offset_i`` (``offset_i``: the mode's offset plus
    per-pixel and per-column fixed pattern), rounded and clipped to ``0 …
    2^bits − 1``. The fixed pattern is seeded (``FixedPatternSeed``, a
    serial number); the noise draws too (``NoiseSeed`` ≥ 0).
    """

    def __init__(self) -> None:
        super().__init__()
        self._exposure_ms = 10.0
        self._snap_count = 0
        self._state_lock = threading.Lock()
        self._rng = np.random.default_rng()
        self._values: dict[str, Any] = {
            "BitDepth": 16,
            "Noise": "On",
            "FixedPattern": "On",
            "FixedPatternSeed": 1,
            "NoiseSeed": -1,
        }
        self._pattern: dict[tuple[Any, ...], dict[str, NDArray[np.float32]]] = {}
        self._chain_cache: dict[str, Any] = {}
        self._vignette: dict[tuple[int, int, float], NDArray[np.float32]] = {}
        self.register_property("SensorWidth", default_value=2048, limits=(16, 8192), property_type=int)
        self.register_property("SensorHeight", default_value=2048, limits=(16, 8192), property_type=int)
        self.register_property("SensorPixelSize_um", default_value=optics.SENSOR_PIXEL_UM, is_read_only=True)
        self.register_property(
            "BitDepth",
            default_value=16,
            allowed_values=(8, 16),
            property_type=int,
            getter=ModelBCamera._get_bit_depth,
            setter=ModelBCamera._set_bit_depth,
        )
        for name, (getter, setter) in {
            "Noise": (ModelBCamera._get_noise, ModelBCamera._set_noise),
            "FixedPattern": (ModelBCamera._get_fixed, ModelBCamera._set_fixed),
        }.items():
            self.register_property(
                name, default_value="On", allowed_values=("On", "Off"), getter=getter, setter=setter
            )
        self.register_property(
            "NoiseSeed",
            default_value=-1,
            property_type=int,
            getter=ModelBCamera._get_noise_seed,
            setter=ModelBCamera._set_noise_seed,
        )
        self.register_property(
            "FixedPatternSeed",
            default_value=1,
            property_type=int,
            getter=ModelBCamera._get_pattern_seed,
            setter=ModelBCamera._set_pattern_seed,
        )
        self.register_property("Vignetting", default_value=0.12, limits=(0.0, 0.9))
        self.register_property("QuantumEfficiency", default_value=0.72, limits=(0.01, 1.0))
        self.register_property("ReadNoise_e", default_value=1.4, limits=(0.0, 50.0))
        self.register_property("DarkCurrent_e_per_s", default_value=0.5, limits=(0.0, 1000.0))
        self.register_property("FullWell_e", default_value=30_000.0, limits=(100.0, 1e6))
        self.register_property(
            "DarkOffset_ADU", property_type=float, is_read_only=True, getter=ModelBCamera._get_offset
        )
        self.register_property(
            "Gain_e_per_ADU", property_type=float, is_read_only=True, getter=ModelBCamera._get_gain
        )

    # --- hub ---------------------------------------------------------------

    @property
    def model_b_hub(self) -> ModelBHub:
        """The parent hub, which must be model B's."""
        hub = self.hub
        if not isinstance(hub, ModelBHub):
            raise DemoDeviceError(f"parent of a model-B camera must be a ModelBHub, got {type(hub).__name__}")
        return hub

    # --- properties --------------------------------------------------------

    def _store(self, name: str, value: Any) -> None:
        with self._state_lock:
            self._values[name] = value

    def _get_bit_depth(self) -> int:
        return int(self._values["BitDepth"])

    def _set_bit_depth(self, value: Any) -> None:
        self._store("BitDepth", int(float(value)))

    def _get_noise(self) -> str:
        return str(self._values["Noise"])

    def _set_noise(self, value: Any) -> None:
        self._store("Noise", str(value))

    def _get_fixed(self) -> str:
        return str(self._values["FixedPattern"])

    def _set_fixed(self, value: Any) -> None:
        self._store("FixedPattern", str(value))

    def _get_noise_seed(self) -> int:
        return int(self._values["NoiseSeed"])

    def _get_pattern_seed(self) -> int:
        return int(self._values["FixedPatternSeed"])

    def _set_pattern_seed(self, value: Any) -> None:
        self._store("FixedPatternSeed", int(float(value)))

    def _get_offset(self) -> float:
        return float(self._mode()["offset_adu"])

    def _get_gain(self) -> float:
        return float(self._mode()["gain_e_per_adu"])

    def _set_noise_seed(self, seed: Any) -> None:
        seed = int(float(seed))
        with self._state_lock:
            self._values["NoiseSeed"] = seed
            self._rng = np.random.default_rng(None if seed < 0 else seed)

    def _float(self, name: str) -> float:
        return float(self.get_property_value(name))

    def bit_depth(self) -> int:
        """Bits per pixel (8 or 16)."""
        return int(self._values["BitDepth"])

    def _mode(self) -> Mapping[str, float]:
        return CAMERA_MODES[self.bit_depth()]

    # --- camera API --------------------------------------------------------

    def get_exposure(self) -> float:
        """Exposure time (ms)."""
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        """Set the exposure time (ms); must be ≥ 0."""
        exposure = float(exposure)
        if not (math.isfinite(exposure) and exposure >= 0):
            raise DemoDeviceError(f"{self.get_label()}: exposure must be ≥ 0 ms, got {exposure}")
        self._exposure_ms = exposure

    def sensor_shape(self) -> tuple[int, int]:
        """Full sensor (height, width) in pixels."""
        return (
            int(float(self.get_property_value("SensorHeight"))),
            int(float(self.get_property_value("SensorWidth"))),
        )

    def dtype(self) -> DTypeLike:
        """uint8 or uint16, following ``BitDepth``."""
        return np.uint8 if self.bit_depth() == 8 else np.uint16

    def image_pixel_size_um(self) -> float:
        """Size of one image pixel on the slide (µm) with the current objective."""
        return optics.SENSOR_PIXEL_UM / self.model_b_hub.magnification()

    def snap(self, buffer: np.ndarray) -> Mapping[str, Any]:
        """Render one frame into ``buffer`` (full sensor)."""
        self._snap_count += 1
        hub = self.model_b_hub
        rate = hub.model_b_photon_rate(self.sensor_shape())
        self.expose(rate, buffer)
        x_um, y_um = hub.true_xy_um()
        return {"DemoTrueX_um": x_um, "DemoTrueY_um": y_um, "DemoSnap": self._snap_count}

    # --- signal chain ------------------------------------------------------

    def vignetting(self, shape: tuple[int, int]) -> NDArray[np.float32]:
        """Relative illumination over the sensor (1 at the centre, ``1 − Vignetting`` at the corners)."""
        f = self._float("Vignetting")
        key = (shape[0], shape[1], f)
        if key not in self._vignette:
            h, w = shape
            y = (np.arange(h) + 0.5 - h / 2.0) / (math.hypot(h, w) / 2.0)
            x = (np.arange(w) + 0.5 - w / 2.0) / (math.hypot(h, w) / 2.0)
            if f <= 0.0:
                v = np.ones(shape, dtype=np.float32)
            else:
                r0_2 = 1.0 / ((1.0 - f) ** -0.5 - 1.0)
                v = (1.0 / (1.0 + (y[:, None] ** 2 + x[None, :] ** 2) / r0_2) ** 2).astype(np.float32)
            self._vignette = {key: v}  # one sensor shape at a time
        return self._vignette[key]

    def fixed_pattern(self, shape: tuple[int, int]) -> dict[str, NDArray[np.float32]]:
        """The sensor's fixed pattern: offset (ADU), PRNU, read noise (e), dark current (e/s)."""
        bits = self.bit_depth()
        seed = int(self._values["FixedPatternSeed"])
        key = (shape, seed, bits, self._float("ReadNoise_e"), self._float("DarkCurrent_e_per_s"))
        if key not in self._pattern:
            w = shape[1]
            rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5C305]))
            mode = CAMERA_MODES[bits]
            offset = mode["offset_adu"] + mode["offset_sd_adu"] * rng.standard_normal(shape)
            offset += mode["column_sd_adu"] * rng.standard_normal(w)[None, :]
            prnu = 1.0 + 0.01 * rng.standard_normal(shape)
            read = self._float("ReadNoise_e") * rng.lognormal(0.0, 0.2, shape)
            noisy = rng.uniform(0.0, 1.0, shape) < 0.01
            read[noisy] = rng.uniform(3.0, 6.0, int(noisy.sum()))
            dark = np.full(shape, self._float("DarkCurrent_e_per_s"))
            hot = rng.uniform(0.0, 1.0, shape) < 5e-4
            dark[hot] = rng.uniform(40.0, 400.0, int(hot.sum()))
            self._pattern = {
                key: {
                    "offset_adu": offset.astype(np.float32),
                    "prnu": prnu.astype(np.float32),
                    "read_e2": (read**2).astype(np.float32),
                    "dark_e_per_s": dark.astype(np.float32),
                }
            }
        return self._pattern[key]

    def _chain(self, shape: tuple[int, int]) -> dict[str, Any]:
        """Per-pixel maps of the signal chain for the current settings (cached)."""
        fixed = _on(self._values["FixedPattern"])
        qe = self._float("QuantumEfficiency")
        key = (
            shape,
            fixed,
            self.bit_depth(),
            int(self._values["FixedPatternSeed"]),
            qe,
            self._float("Vignetting"),
            self._float("ReadNoise_e"),
            self._float("DarkCurrent_e_per_s"),
        )
        if self._chain_cache.get("key") != key:
            mode = self._mode()
            response = self.vignetting(shape) * np.float32(qe)
            chain: dict[str, Any]
            if fixed:
                pattern = self.fixed_pattern(shape)
                response = response * pattern["prnu"]
                chain = {
                    "dark_e_per_s": pattern["dark_e_per_s"],
                    "read_e2": pattern["read_e2"],
                    "offset": pattern["offset_adu"] + np.float32(0.5),  # +0.5: round on the cast
                }
            else:
                chain = {
                    "dark_e_per_s": np.float32(self._float("DarkCurrent_e_per_s")),
                    "read_e2": np.float32(self._float("ReadNoise_e") ** 2),
                    "offset": np.float32(mode["offset_adu"] + 0.5),
                }
            chain["response"] = response.astype(np.float32)
            self._chain_cache = {"key": key, **chain}
        return self._chain_cache

    def _normals(self, n: int) -> NDArray[np.float32]:
        """Standard normal deviates: 16-bit uniforms through the inverse normal CDF (to ±4.3 σ)."""
        with self._state_lock:
            u = self._rng.integers(0, 1 << 16, n, dtype=np.uint16)
        return np.take(_NORMAL_QUANTILES, u)

    def expose(self, rate: NDArray[np.float32], out: np.ndarray) -> None:
        """Turn a photon-rate image into ADU in ``out``; ``rate`` is overwritten."""
        shape = (int(rate.shape[0]), int(rate.shape[1]))
        chain = self._chain(shape)
        gain = self._mode()["gain_e_per_adu"]
        t_ms = self._exposure_ms
        e = rate
        e *= np.float32(t_ms)
        e *= chain["response"]  # photons → photo-electrons: QE, illumination fall-off, PRNU
        e += chain["dark_e_per_s"] * np.float32(t_ms / 1000.0)
        if _on(self._values["Noise"]):
            sd = np.add(e, chain["read_e2"], dtype=np.float32)
            np.sqrt(sd, out=sd)
            sd *= self._normals(e.size).reshape(shape)
            e += sd
        np.minimum(e, np.float32(self._float("FullWell_e")), out=e)
        e *= np.float32(1.0 / gain)
        e += chain["offset"]
        np.clip(e, 0.0, float(2 ** self.bit_depth() - 1), out=e)
        np.copyto(out, e, casting="unsafe")


def _normal_quantiles() -> NDArray[np.float32]:
    from scipy.special import ndtri

    return np.asarray(ndtri((np.arange(1 << 16) + 0.5) / (1 << 16)), dtype=np.float32)


_NORMAL_QUANTILES = _normal_quantiles()
