"""Build a ready Micro-Manager core from a hardware configuration file.

This module is the one place that builds a core. Everything that needs a
microscope (the command line, the GUI, tests, benchmarks, examples) calls
:func:`build_core` and passes the result on.

It uses pymmcore-plus' ``UniMMCore``, so a ``.cfg`` may mix C++ device
adapters (``Device,...`` lines) and pure-Python devices (``#py pyDevice,...``
lines). :class:`CordScopeCore` adds what ``UniMMCore`` 0.18 lacks for Python
devices (pixel-size resolution, auto-shutter on snap, handing peripherals
their hub) so that the rest of CordScope sees one ordinary core.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import re
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pymmcore
from pymmcore_plus import CMMCorePlus, DeviceType, PropertyType, find_micromanager
from pymmcore_plus.experimental.unicore import HubDevice, UniMMCore

from .errors import CordScopeError

__all__ = [
    "TRUSTED_PY_DEVICE_PACKAGES",
    "ConfigError",
    "CordScopeCore",
    "HardwareSummary",
    "HubPeripheral",
    "MissingDeviceAdaptersError",
    "UntrustedConfigError",
    "build_core",
    "describe_hardware",
    "scan_config_text",
]

logger = logging.getLogger(__name__)

#: Python packages whose device classes a ``.cfg`` may load without
#: ``trust_config``: a ``#py pyDevice`` line imports and runs Python code.
TRUSTED_PY_DEVICE_PACKAGES: tuple[str, ...] = ("acquisition.demo",)

_HARDWARE_CONFIGS = Path(__file__).resolve().parent.parent / "hardware_configs"
DEMO_CONFIG: Path = _HARDWARE_CONFIGS / "demo.cfg"


class ConfigError(CordScopeError):
    """A hardware configuration cannot be used; the message says why."""


class UntrustedConfigError(ConfigError):
    """A configuration names Python device code outside the trusted packages."""


class MissingDeviceAdaptersError(ConfigError):
    """A configuration names C++ device adapters that are not installed."""


@runtime_checkable
class HubPeripheral(Protocol):
    """A Python device that needs its parent hub object, not just its label.

    Micro-Manager's C++ devices reach their hub with ``GetParentHub()``; the
    Python device API only gives them the hub's label. After a configuration
    is loaded, :class:`CordScopeCore` calls ``attach_hub`` on every Python
    device that has a Python hub as parent.
    """

    def attach_hub(self, hub: HubDevice) -> None:
        """Receive the parent hub device."""


@dataclass(frozen=True)
class ConfigDevices:
    """Devices a ``.cfg`` text declares, before anything is loaded."""

    cpp_adapters: dict[str, str] = field(default_factory=dict)  # label -> library
    py_devices: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> (module, class)


_DEVICE_LINE = re.compile(r"^\s*Device\s*,\s*([^,]+?)\s*,\s*([^,]+?)\s*,\s*([^,]+?)\s*$")
_PY_DEVICE_LINE = re.compile(r"^\s*#py\s+pyDevice\s*,\s*([^,]+?)\s*,\s*([^,]+?)\s*,\s*([^,]+?)\s*$")


def scan_config_text(text: str) -> ConfigDevices:
    """List the C++ adapters and Python device classes a ``.cfg`` text loads.

    Parameters
    ----------
    text : str
        Contents of a Micro-Manager configuration file.

    Returns
    -------
    ConfigDevices
        ``cpp_adapters`` maps device label to adapter library;
        ``py_devices`` maps device label to ``(module, class)``.
    """
    cpp: dict[str, str] = {}
    py: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        if m := _PY_DEVICE_LINE.match(line):
            py[m.group(1)] = (m.group(2), m.group(3))
        elif m := _DEVICE_LINE.match(line):
            cpp[m.group(1)] = m.group(2)
    return ConfigDevices(cpp_adapters=cpp, py_devices=py)


def _is_trusted_module(module: str) -> bool:
    return any(module == pkg or module.startswith(pkg + ".") for pkg in TRUSTED_PY_DEVICE_PACKAGES)


class _DropMissingMMInstallation(logging.Filter):
    """Hide pymmcore-plus' 'no Micro-Manager installation' log for pure-Python configs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Could not find a compatible Micro-Manager installation" not in record.getMessage()


@contextlib.contextmanager
def _quiet_mm_discovery() -> Iterator[None]:
    mm_logger = logging.getLogger("pymmcore-plus")
    filt = _DropMissingMMInstallation()
    mm_logger.addFilter(filt)
    try:
        yield
    finally:
        mm_logger.removeFilter(filt)


class CordScopeCore(UniMMCore):
    """``UniMMCore`` with the gaps for Python devices closed.

    - Pixel-size configurations whose settings are Python devices'
      properties resolve (``getCurrentPixelSizeConfig``, ``getPixelSizeUm``,
      ``getPixelSizeAffine``), and ``pixelSizeChanged`` is emitted when such a
      property changes. pymmcore-plus 0.18 leaves these to the C++ core,
      which cannot read Python devices (its PR #529).
    - With auto-shutter on, a Python shutter is opened for each snap and for
      live (continuous) acquisition, as MMCore does for C++ shutters.
    - Python peripherals with a Python hub parent get the hub object
      (:class:`HubPeripheral`).
    - :meth:`loadSystemConfiguration` applies the trust rule for ``#py``
      devices and names missing C++ adapters before loading anything.
    """

    def __init__(self, *args: Any, trust_config: bool = False, **kwargs: Any) -> None:
        self._trust_config = trust_config
        self._last_pixel_size_um: float | None = None
        with _quiet_mm_discovery():
            super().__init__(*args, **kwargs)
        self.events.systemConfigurationLoaded.connect(self._on_config_loaded)
        _LIVE_CORES.add(self)

    def close(self) -> None:
        """Unload every device and stop the core's C++ callbacks.

        Use when done with a core (tests, scripts). Exiting Python right after
        ``unloadAllDevices`` while MMCore's callback thread is still calling
        into Python aborted the process here ("exception not rethrown",
        pymmcore-plus #570); detaching the callback first avoids it.
        """
        with contextlib.suppress(Exception):
            self.unloadAllDevices()
        _detach_callback(self)

    # ---------------------------------------------------------------- loading

    def check_config(self, path: str | Path) -> ConfigDevices:
        """Check a ``.cfg`` without loading it: trust rule and C++ adapters.

        Raises
        ------
        ConfigError
            If the file does not exist or cannot be read.
        UntrustedConfigError
            If it loads Python device code outside ``acquisition.demo`` and
            this core was not built with ``trust_config=True``.
        MissingDeviceAdaptersError
            If it names C++ device adapters that are not installed.
        """
        cfg = Path(path).expanduser()
        if not cfg.is_file():
            raise ConfigError(f"hardware config not found: {cfg}")
        try:
            text = cfg.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read hardware config {cfg}: {e}") from e
        devices = scan_config_text(text)
        untrusted = {
            label: f"{mod}.{cls}"
            for label, (mod, cls) in devices.py_devices.items()
            if not _is_trusted_module(mod)
        }
        if untrusted and not self._trust_config:
            names = ", ".join(f"{lbl} ({code})" for lbl, code in untrusted.items())
            raise UntrustedConfigError(
                f"{cfg.name} loads Python device code outside "
                f"{', '.join(TRUSTED_PY_DEVICE_PACKAGES)}: {names}. Loading it runs that "
                "code; if you trust this file, pass --trust-config (trust_config=True)."
            )
        if devices.cpp_adapters:
            installed = set(self.getDeviceAdapterNames())
            missing = sorted({lib for lib in devices.cpp_adapters.values() if lib not in installed})
            if missing:
                where = self._mm_path or "no Micro-Manager installation found"
                raise MissingDeviceAdaptersError(
                    f"{cfg.name} needs Micro-Manager device adapters that are not installed: "
                    f"{', '.join(missing)} (searched: {where}). Install Micro-Manager's "
                    "device adapters with `mmcore install` (pymmcore-plus) or point "
                    "MICROMANAGER_PATH at a Micro-Manager installation."
                )
        return devices

    def loadSystemConfiguration(self, fileName: str | Path = "MMConfig_demo.cfg") -> None:
        """Check (trust rule, adapters), then load a ``.cfg`` and wire it up."""
        self.check_config(fileName)
        try:
            super().loadSystemConfiguration(fileName)
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"could not load {Path(fileName).name}: {_first_line(e)}") from e

    def _on_config_loaded(self) -> None:
        self._attach_hubs()
        self._last_pixel_size_um = None
        self._emit_pixel_size_if_changed()

    def _attach_hubs(self) -> None:
        for label in self.getLoadedDevices():
            if not self.isPyDevice(label):
                continue
            device = self._pydevices[label]
            parent = self.getParentLabel(label)
            if not isinstance(device, HubPeripheral) or not parent:
                continue
            hub = self._pydevices[parent] if self.isPyDevice(parent) else None
            if not isinstance(hub, HubDevice):
                raise ConfigError(f"device {label!r}: parent {parent!r} is not a Python hub device")
            device.attach_hub(hub)

    # ------------------------------------------------------------- pixel size

    def _pixel_config_matches(self, config: str, cached: bool) -> bool:
        data = self.getPixelSizeConfigData(config)
        for setting in data:
            dev, prop, value = setting
            try:
                current = self.getPropertyFromCache(dev, prop) if cached else self.getProperty(dev, prop)
            except Exception:  # a device of another config that is not loaded
                return False
            if str(current) != str(value):
                return False
        return len(data) > 0

    def getCurrentPixelSizeConfig(self, cached: bool = False) -> str:  # type: ignore[override]
        """Return the pixel-size configuration whose settings all match now.

        Resolved in Python for every configuration, so settings that are
        Python devices' properties count (pymmcore-plus 0.18 returns "").
        """
        for config in self.getAvailablePixelSizeConfigs():
            if self._pixel_config_matches(config, cached):
                return config
        return ""

    def _binning(self) -> float:
        cam = self.getCameraDevice()
        if not cam or not self.hasProperty(cam, "Binning"):
            return 1.0
        try:
            return float(self.getProperty(cam, "Binning"))
        except ValueError:  # e.g. "2x2" on some C++ cameras
            return float(str(self.getProperty(cam, "Binning")).split("x")[0])

    def getPixelSizeUm(self, cached: bool = False) -> float:  # type: ignore[override]
        """Pixel size (µm) of the current configuration, scaled by binning and magnifiers."""
        if not (config := self.getCurrentPixelSizeConfig(cached)):
            return 0.0
        return float(self.getPixelSizeUmByID(config)) * self._binning() / self.getMagnificationFactor()

    def getPixelSizeAffine(self, cached: bool = False) -> tuple[float, ...]:  # type: ignore[override]
        """Pixel-size affine of the current configuration, scaled like the pixel size."""
        if not (config := self.getCurrentPixelSizeConfig(cached)):
            return (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        factor = self._binning() / self.getMagnificationFactor()
        affine = tuple(float(v) for v in self.getPixelSizeAffineByID(config))
        if affine == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0):
            # No affine in the .cfg (MM stores identity): scale by the pixel size.
            px = float(self.getPixelSizeUmByID(config))
            affine = (px, 0.0, 0.0, 0.0, px, 0.0)
        return tuple(v * factor for v in affine)

    def _pixel_size_properties(self) -> set[tuple[str, str]]:
        keys: set[tuple[str, str]] = set()
        for config in self.getAvailablePixelSizeConfigs():
            for s in self.getPixelSizeConfigData(config):
                keys.add((s[0], s[1]))
        return keys

    # Python devices emit propertyChanged while holding their own lock, so the
    # pixel size cannot be re-read from that callback; check after the call.
    def setProperty(self, label: str, propName: str, propValue: bool | float | int | str) -> None:  # type: ignore[override]
        """Set a property; emit ``pixelSizeChanged`` if it changed the pixel size.

        The Core's role properties (``Core, XYStage`` ...) accept Python
        devices, as widgets such as pymmcore-widgets' ``StageWidget`` expect.
        """
        if label == "Core" and (setter := self._core_role_setters().get(propName)):
            setter(str(propValue))
            return
        if isinstance(propValue, str) and self.isPyDevice(label):
            propValue = self._typed_value(label, propName, propValue)
        super().setProperty(label, propName, propValue)
        if self.isPyDevice(label) and (
            label in {dev for dev, _ in self._pixel_size_properties()} or propName == "Binning"
        ):
            self._emit_pixel_size_if_changed()

    def _typed_value(self, label: str, prop: str, value: str) -> bool | float | int | str:
        # .cfg files and config groups carry strings ("State,2"); MMCore converts
        # them to the property's type, UniMMCore 0.18 passes them on as text.
        try:
            kind = self.getPropertyType(label, prop)
        except Exception:  # unknown property: let the device report it
            return value
        try:
            if kind == PropertyType.Integer:
                return int(float(value))
            if kind == PropertyType.Float:
                return float(value)
        except ValueError:
            return value
        return value

    def _core_role_setters(self) -> dict[str, Any]:
        return {
            "Camera": self.setCameraDevice,
            "XYStage": self.setXYStageDevice,
            "Focus": self.setFocusDevice,
            "Shutter": self.setShutterDevice,
            "AutoFocus": self.setAutoFocusDevice,
        }

    def _core_role_getters(self) -> dict[str, Any]:
        return {
            "Camera": self.getCameraDevice,
            "XYStage": self.getXYStageDevice,
            "Focus": self.getFocusDevice,
            "Shutter": self.getShutterDevice,
            "AutoFocus": self.getAutoFocusDevice,
        }

    def getProperty(self, label: str, propName: str) -> Any:  # type: ignore[override]
        """Get a property; the Core's role properties report Python devices too."""
        if label == "Core" and (getter := self._core_role_getters().get(propName)):
            return getter()
        return super().getProperty(label, propName)

    def setState(self, stateDeviceLabel: str, state: int) -> None:  # type: ignore[override]
        """Set a state device's position; emit ``pixelSizeChanged`` if needed."""
        super().setState(stateDeviceLabel, state)
        if self.isPyDevice(stateDeviceLabel):
            self._emit_pixel_size_if_changed()

    def setStateLabel(self, stateDeviceLabel: str, stateLabel: str) -> None:  # type: ignore[override]
        """Set a state device by label; emit ``pixelSizeChanged`` if needed."""
        super().setStateLabel(stateDeviceLabel, stateLabel)
        if self.isPyDevice(stateDeviceLabel):
            self._emit_pixel_size_if_changed()

    def _emit_pixel_size_if_changed(self) -> None:
        px = self.getPixelSizeUm()
        if px != self._last_pixel_size_um:
            self._last_pixel_size_um = px
            self.events.pixelSizeChanged.emit(px)

    # ------------------------------------------------------------ auto-shutter

    def _py_auto_shutter(self) -> str:
        label = self.getShutterDevice()
        if label and self.getAutoShutter() and self.isPyDevice(label):
            return label
        return ""

    def _do_snap_image(self) -> None:
        if not (shutter := self._py_auto_shutter()):
            return super()._do_snap_image()
        self._do_shutter_open(shutter, True)
        try:
            super()._do_snap_image()
        finally:
            self._do_shutter_open(shutter, False)

    def _do_start_continuous_sequence_acquisition(self, intervalMs: float = 0) -> None:
        if shutter := self._py_auto_shutter():
            self._do_shutter_open(shutter, True)
        super()._do_start_continuous_sequence_acquisition(intervalMs)

    def _do_start_sequence_acquisition(self, *args: Any, **kwargs: Any) -> None:
        if shutter := self._py_auto_shutter():
            self._do_shutter_open(shutter, True)
        super()._do_start_sequence_acquisition(*args, **kwargs)

    def _do_stop_sequence_acquisition(self, cameraLabel: str) -> None:
        super()._do_stop_sequence_acquisition(cameraLabel)
        if shutter := self._py_auto_shutter():
            self._do_shutter_open(shutter, False)


_LIVE_CORES: weakref.WeakSet[CordScopeCore] = weakref.WeakSet()


def _detach_callback(core: CordScopeCore) -> None:
    with contextlib.suppress(Exception):
        pymmcore.CMMCore.registerCallback(core, None)


@atexit.register
def _detach_all_callbacks() -> None:
    # Runs before interpreter finalisation, while Python can still take calls.
    for core in list(_LIVE_CORES):
        _detach_callback(core)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    # UniMMCore wraps errors as "Error in configuration file ... at line N: ...\n<cause>"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Error in configuration file"):
        where = re.sub(r"^Error in configuration file '[^']*' ", "", lines[0])
        return f"{where.split(': ', 1)[0]}: {lines[-1]}"
    return lines[0] if lines else type(e).__name__


def build_core(config: str | Path | None = None, *, trust_config: bool = False) -> CordScopeCore:
    """Build a core and load a hardware configuration into it.

    Parameters
    ----------
    config : str or Path, optional
        Micro-Manager ``.cfg`` file. Default: ``hardware_configs/demo.cfg``,
        the simulated microscope.
    trust_config : bool
        Allow ``#py pyDevice`` lines that import Python code from outside
        ``acquisition.demo``. Off by default: loading such a file runs code.

    Returns
    -------
    CordScopeCore
        A core with every device loaded and initialised.

    Raises
    ------
    ConfigError
        (or a subclass) with a one-line message naming what is wrong, raised
        before any device is loaded where the file itself is at fault.
    """
    path = Path(config) if config is not None else DEMO_CONFIG
    devices_needed = scan_config_text(path.read_text()) if path.is_file() else ConfigDevices()
    mm_path = None
    if devices_needed.cpp_adapters:
        with _quiet_mm_discovery():
            mm_path = find_micromanager()
    core = CordScopeCore(mm_path=mm_path, trust_config=trust_config)
    core.loadSystemConfiguration(path)
    return core


# ------------------------------------------------------------------ summary


@dataclass(frozen=True)
class HardwareSummary:
    """What a loaded configuration provides, for ``cordscope devices`` and the GUI."""

    config_file: str
    devices: list[tuple[str, str, str, str]]  # label, type, library, device name
    roles: dict[str, str]  # Camera/XYStage/Focus/Shutter -> label
    channel_group: str
    channel_presets: list[str]
    objective_group: str
    objective_presets: list[str]
    pixel_sizes_um: dict[str, float]  # pixel-size config -> µm/px
    pixel_size_um: float
    image_width_px: int
    image_height_px: int


def _objective_group(core: CMMCorePlus) -> str:
    for group in core.getAvailableConfigGroups():
        if group.lower().startswith("objective"):
            return str(group)
    return ""


def describe_hardware(core: CordScopeCore) -> HardwareSummary:
    """Summarise the loaded devices, roles, channel presets, objectives and pixel sizes."""
    devices = []
    for label in core.getLoadedDevices():
        if label == "Core":
            continue
        dtype = DeviceType(core.getDeviceType(label)).name
        devices.append((str(label), dtype, str(core.getDeviceLibrary(label)), str(core.getDeviceName(label))))
    roles = {
        "Camera": core.getCameraDevice(),
        "XYStage": core.getXYStageDevice(),
        "Focus": core.getFocusDevice(),
        "Shutter": core.getShutterDevice(),
    }
    channel_group = core.getChannelGroup()
    objective_group = _objective_group(core)
    return HardwareSummary(
        config_file=str(core.systemConfigurationFile() or ""),
        devices=devices,
        roles={k: str(v) for k, v in roles.items()},
        channel_group=str(channel_group),
        channel_presets=list(core.getAvailableConfigs(channel_group)) if channel_group else [],
        objective_group=objective_group,
        objective_presets=list(core.getAvailableConfigs(objective_group)) if objective_group else [],
        pixel_sizes_um={
            str(c): float(core.getPixelSizeUmByID(c)) for c in core.getAvailablePixelSizeConfigs()
        },
        pixel_size_um=core.getPixelSizeUm(),
        image_width_px=int(core.getImageWidth()),
        image_height_px=int(core.getImageHeight()),
    )


def objective_group(core: CMMCorePlus) -> str:
    """Name of the configuration group that selects the objective ("" if none)."""
    return _objective_group(core)


def config_presets(core: CMMCorePlus, group: str) -> Sequence[str]:
    """Presets of a configuration group, empty when the group does not exist."""
    if not group or group not in core.getAvailableConfigGroups():
        return ()
    return tuple(core.getAvailableConfigs(group))
