"""The demo microscope: Python device adapters over a virtual slide with ground truth."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pymmcore_plus.experimental.unicore import UniMMCore

    from .devices import DemoHub

__all__ = ["find_demo_hub"]


def find_demo_hub(core: UniMMCore) -> DemoHub | None:
    """The demo hub loaded in ``core``, or None on a real rig."""
    from .devices import DemoHub

    for label in core.getLoadedDevices():
        if core.isPyDevice(label):
            device = core._pydevices[label]  # the hub object itself, not its label
            if isinstance(device, DemoHub):
                return device
    return None
