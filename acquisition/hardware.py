"""Build a ready Micro-Manager core from a hardware configuration file.

This module is the one place that builds a core. Everything that needs a
microscope (the command line, the GUI, tests, benchmarks, examples) calls
:func:`build_core` and passes the result on.

It uses pymmcore-plus' ``UniMMCore``, so a ``.cfg`` may mix C++ device
adapters (``Device,...`` lines) and pure-Python devices (``#py pyDevice,...``
lines). :class:`CordScopeCore` adds what ``UniMMCore`` 0.18.1 lacks for
Python devices (its docstring lists each gap) so that the rest of CordScope
sees one ordinary core, and applies the trust rule: a ``.cfg`` runs Python
code only from trusted packages unless the user trusts the file.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import re
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymmcore
from pymmcore_plus import CMMCorePlus, DeviceType, PropertyType, find_micromanager
from pymmcore_plus.experimental.unicore import UniMMCore

from .errors import CordScopeError

__all__ = [
    "TRUSTED_PY_DEVICE_PACKAGES",
    "ConfigDevices",
    "ConfigError",
    "CordScopeCore",
    "HardwareSummary",
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


@dataclass(frozen=True)
class ConfigDevices:
    """Devices a ``.cfg`` text loads, before anything is loaded.

    Attributes
    ----------
    cpp_adapters : dict
        Device label → library of every ``Device`` line (with or without
        ``#py``). ``UniMMCore`` loads the library as a C++ adapter when one
        of that name is installed, and otherwise *imports it as a Python
        module*.
    py_devices : dict
        Device label → ``(module, class)`` of every ``pyDevice`` line (with
        or without ``#py``): always Python code.
    """

    cpp_adapters: dict[str, str] = field(default_factory=dict)
    py_devices: dict[str, tuple[str, str]] = field(default_factory=dict)


_PY_PREFIX = re.compile(r"#py\s")


def _executed_tokens(line: str) -> list[str] | None:
    """The comma-separated tokens ``UniMMCore`` executes for one ``.cfg`` line (None: comment).

    Mirrors ``load_from_string`` of pymmcore-plus 0.18.1: strip the line,
    drop a ``#py `` prefix, skip ``#`` comments, split on commas. A ``#py``
    followed by any whitespace counts as the prefix here, which may only
    flag more lines than pymmcore-plus runs, never fewer.
    """
    text = line.rstrip("\r").strip()
    if _PY_PREFIX.match(text):
        text = text[3:].lstrip()
    if not text or text.startswith("#"):
        return None
    return text.split(",")


def scan_config_text(text: str) -> ConfigDevices:
    """List the C++ adapters and Python device classes a ``.cfg`` text loads.

    Every line form that makes pymmcore-plus load a device counts:
    ``Device,...`` and ``pyDevice,...``, each with or without the ``#py``
    prefix, whatever the whitespace around the fields.

    Parameters
    ----------
    text : str
        Contents of a Micro-Manager configuration file.

    Returns
    -------
    ConfigDevices
        ``cpp_adapters`` maps device label to the library of a ``Device``
        line; ``py_devices`` maps device label to ``(module, class)`` of a
        ``pyDevice`` line.
    """
    cpp: dict[str, str] = {}
    py: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        tokens = _executed_tokens(line)
        if tokens is None or len(tokens) < 3:
            continue
        command, label, library = (t.strip() for t in tokens[:3])
        name = tokens[3].strip() if len(tokens) > 3 else ""
        if command == "pyDevice":
            py[label] = (library, name)
        elif command == "Device":
            cpp[label] = library
    return ConfigDevices(cpp_adapters=cpp, py_devices=py)


def _is_trusted_module(module: str) -> bool:
    return any(module == pkg or module.startswith(pkg + ".") for pkg in TRUSTED_PY_DEVICE_PACKAGES)


def _importable(module: str) -> bool:
    """Whether ``module``'s top-level package can be found (found, not imported: no code runs)."""
    top = module.split(".")[0]
    if not top.isidentifier():
        return False
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


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
    """``UniMMCore`` with the gaps of pymmcore-plus 0.18.1 for Python devices closed.

    The demo microscope itself needs none of these to load and snap (its
    peripherals find their hub themselves and its ``.cfg`` opens the
    shutter at start-up), but in a stock ``UniMMCore`` 0.18.1:

    - Pixel-size configurations whose settings are Python devices'
      properties never resolve: ``getCurrentPixelSizeConfig`` is MMCore's,
      which cannot read Python devices, so it returns "" and the pixel size
      reads 0 (pymmcore-plus PR #529). Nothing a device carries can help:
      MMCore compares the settings against its own devices and its own
      state cache, which Python cannot write. Here the configuration is
      resolved in Python for C++ and Python devices alike, and
      ``pixelSizeChanged`` is emitted when a Python property changes it.
    - ``getPixelSizeAffine`` returns MMCore's stored matrix, where identity
      means "no affine in the .cfg"; here that becomes ``pixel size · I``
      (CordScope's convention), binning applied.
    - With auto-shutter on, nothing opens a Python shutter for a snap or
      for live (continuous) acquisition with a Python camera; here it is,
      as MMCore does for C++ shutters, and it is closed after loading.
    - ``getImageBitDepth`` of a Python camera is its dtype's size (16 for a
      12-bit camera); here a camera's ``BitDepth`` property counts.
    - ``.cfg`` values reach Python devices as text ("2"); here they become
      the property's type first, as MMCore converts them.
    - The Core's role properties (``setProperty("Core", "XYStage", ...)``,
      ``getProperty("Core", "Camera")``) ignore Python devices; here they
      do not (pymmcore-widgets' stage widget relies on them).

    And CordScope's own rule: :meth:`loadSystemConfiguration` refuses a
    ``.cfg`` that would import Python code outside the trusted packages
    (every line form pymmcore-plus executes) and names missing C++ adapters
    before loading anything; :meth:`loadDevice` applies the same rule to
    each device.
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

        A ``pyDevice`` line always runs Python code; a ``Device`` line runs
        Python code when no C++ adapter of that name is installed (pymmcore-
        plus then imports the library as a module). Both are refused outside
        the trusted packages unless this core trusts the file.

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
            reason = e.strerror if isinstance(e, OSError) and e.strerror else "not a text file"
            raise ConfigError(f"cannot read hardware config {cfg}: {reason}") from e
        devices = scan_config_text(text)
        installed = set(self.getDeviceAdapterNames()) if devices.cpp_adapters else set()
        python_code = {label: f"{mod}.{cls}" for label, (mod, cls) in devices.py_devices.items()}
        missing: dict[str, str] = {}
        for label, library in devices.cpp_adapters.items():
            if library in installed or _is_trusted_module(library):
                continue
            if "." in library or _importable(library):
                python_code[label] = library  # pymmcore-plus will import it as a Python module
            else:
                missing[label] = library
        untrusted = {label: code for label, code in python_code.items() if not _is_trusted_module(code)}
        if untrusted and not self._trust_config:
            names = ", ".join(f"{lbl} ({code})" for lbl, code in untrusted.items())
            raise UntrustedConfigError(
                f"{cfg.name} loads Python device code outside "
                f"{', '.join(TRUSTED_PY_DEVICE_PACKAGES)}: {names}. Loading it runs that "
                "code; if you trust this file, pass --trust-config (trust_config=True)."
            )
        if missing:
            where = self._mm_path or "no Micro-Manager installation found"
            raise MissingDeviceAdaptersError(
                f"{cfg.name} needs Micro-Manager device adapters that are not installed: "
                f"{', '.join(sorted(set(missing.values())))} (searched: {where}). Install "
                "Micro-Manager's device adapters with `mmcore install` (pymmcore-plus) or point "
                "MICROMANAGER_PATH at a Micro-Manager installation."
            )
        return devices

    def loadDevice(self, label: str, moduleName: str, deviceName: str) -> None:  # type: ignore[override]
        """Load a C++ adapter's device, or a Python device class (trust rule applied).

        Raises
        ------
        UntrustedConfigError
            If ``moduleName`` is not an installed C++ adapter, so pymmcore-plus
            would import it, and it lies outside the trusted packages of a
            core built without ``trust_config=True``.
        """
        if (
            not self._trust_config
            and not _is_trusted_module(moduleName)
            and moduleName not in self.getDeviceAdapterNames()
        ):
            raise UntrustedConfigError(
                f"device {label!r}: {moduleName}.{deviceName} is Python code outside "
                f"{', '.join(TRUSTED_PY_DEVICE_PACKAGES)}; pass --trust-config (trust_config=True) "
                "if you trust it"
            )
        super().loadDevice(label, moduleName, deviceName)

    def loadSystemConfiguration(self, fileName: str | Path = "MMConfig_demo.cfg") -> None:
        """Check (trust rule, adapters), then load a ``.cfg`` and wire it up."""
        self.check_config(fileName)
        try:
            super().loadSystemConfiguration(fileName)
        except ConfigError:
            raise
        except Exception as e:
            if (typed := _config_error_cause(e)) is not None:
                raise typed from e
            raise ConfigError(f"could not load {Path(fileName).name}: {_first_line(e)}") from e

    def _on_config_loaded(self) -> None:
        # With auto-shutter on the shutter stays closed between snaps; a .cfg
        # may open it at start-up for cores without auto-shutter for Python
        # devices (a stock UniMMCore).
        if shutter := self._py_auto_shutter():
            self._do_shutter_open(shutter, False)
        self._last_pixel_size_um = None
        self._emit_pixel_size_if_changed()

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
        return float(str(self.getProperty(cam, "Binning")).split("x")[0])  # some C++ cameras say "2x2"

    def getImageBitDepth(self) -> int:
        """Bits per pixel of the current camera: a Python camera's ``BitDepth`` property if it has one."""
        cam = self.getCameraDevice()
        if cam and self.isPyDevice(cam) and self.hasProperty(cam, "BitDepth"):
            return int(float(self.getProperty(cam, "BitDepth")))
        return int(super().getImageBitDepth())

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


def _config_error_cause(e: BaseException) -> ConfigError | None:
    """A ConfigError raised inside pymmcore-plus' loader (it wraps errors in RuntimeError)."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ConfigError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    # UniMMCore wraps errors as "Error in configuration file ... at line N: ...\n<cause>"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Error in configuration file"):
        where = re.sub(r"^Error in configuration file '[^']*' ", "", lines[0])
        return f"{where.split(': ', 1)[0]}: {lines[-1]}"
    return lines[0] if lines else type(e).__name__


def build_core(
    config: str | Path | None = None, *, trust_config: bool = False, mm_path: str | Path | None = None
) -> CordScopeCore:
    """Build a core and load a hardware configuration into it.

    Parameters
    ----------
    config : str or Path, optional
        Micro-Manager ``.cfg`` file. Default: ``hardware_configs/demo.cfg``,
        the simulated microscope.
    trust_config : bool
        Allow device lines that import Python code from outside
        ``acquisition.demo``. Off by default: loading such a file runs code.
    mm_path : str or Path, optional
        Folder of Micro-Manager's C++ device adapters. Default: what
        pymmcore-plus finds (``MICROMANAGER_PATH``, ``mmcore install``),
        looked up only when the file names C++ adapters.

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
    path = Path(config).expanduser() if config is not None else DEMO_CONFIG
    try:
        devices_needed = scan_config_text(path.read_text()) if path.is_file() else ConfigDevices()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not a text file"
        raise ConfigError(f"cannot read hardware config {path}: {reason}") from None
    adapters = str(mm_path) if mm_path is not None else None
    if adapters is None and devices_needed.cpp_adapters:
        with _quiet_mm_discovery():
            adapters = find_micromanager()
    core = CordScopeCore(mm_path=adapters, trust_config=trust_config)
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
    role_problems: list[str] = field(default_factory=list)  # why a group could not be decided


def describe_hardware(core: CordScopeCore) -> HardwareSummary:
    """Summarise the loaded devices, roles, channel presets, objectives and pixel sizes.

    The channel and objective groups are decided from the config
    (:mod:`acquisition.roles`); a group that cannot be decided is reported
    as "" with the reason in ``role_problems``.
    """
    from .roles import RoleError, decide_channel_group, decide_objective_group

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
    problems: list[str] = []
    objective_group = channel_group = ""
    try:
        objective_group = decide_objective_group(core).group
    except RoleError as e:
        problems.append(str(e))
    try:
        channel_group = decide_channel_group(core, objective_group=objective_group or None).group
    except RoleError as e:
        problems.append(str(e))
    return HardwareSummary(
        config_file=str(core.systemConfigurationFile() or ""),
        devices=devices,
        roles={k: str(v) for k, v in roles.items()},
        channel_group=channel_group,
        channel_presets=list(core.getAvailableConfigs(channel_group)) if channel_group else [],
        objective_group=objective_group,
        objective_presets=list(core.getAvailableConfigs(objective_group)) if objective_group else [],
        pixel_sizes_um={
            str(c): float(core.getPixelSizeUmByID(c)) for c in core.getAvailablePixelSizeConfigs()
        },
        pixel_size_um=core.getPixelSizeUm(),
        image_width_px=int(core.getImageWidth()),
        image_height_px=int(core.getImageHeight()),
        role_problems=problems,
    )


def objective_group(core: CMMCorePlus) -> str:
    """Name of the configuration group that selects the objective ("" if it cannot be decided).

    For callers that have no way to report why: the decision and its reason
    (or the error naming the candidate groups) come from
    :func:`acquisition.roles.decide_objective_group`.
    """
    from .roles import decide_objective_group

    return _decided_group(decide_objective_group, core, "objective")


def channel_group(core: CMMCorePlus) -> str:
    """Name of the configuration group that selects the channel ("" if it cannot be decided).

    For callers that have no way to report why: the decision and its reason
    (or the error naming the candidate groups) come from
    :func:`acquisition.roles.decide_channel_group`.
    """
    from .roles import decide_channel_group

    return _decided_group(decide_channel_group, core, "channel")


def _decided_group(decide: Any, core: CMMCorePlus, role: str) -> str:
    from .roles import RoleError

    try:
        return str(decide(core).group)
    except RoleError as e:
        logger.info("no %s group: %s", role, e)
        return ""


def config_presets(core: CMMCorePlus, group: str) -> Sequence[str]:
    """Presets of a configuration group, empty when the group does not exist."""
    if not group or group not in core.getAvailableConfigGroups():
        return ()
    return tuple(core.getAvailableConfigs(group))
