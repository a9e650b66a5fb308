"""CordScope: acquisition and live analysis for spinal cord tract tracing.

The ``cordscope`` command lives in :mod:`cordscope.cli`. Scripts use the
small API re-exported here (see ``examples/scan_demo_slide.py``)::

    import cordscope

    core = cordscope.build_core("hardware_configs/demo.cfg")
    plan = cordscope.load_plan("my-slide.yaml")
    controller = cordscope.ScanController(core, plan)
    controller.events.progress.connect(lambda p: print(p.tiles_done, "/", p.tiles_total))
    controller.start()
    result = controller.wait()
    with cordscope.ScanFile.open(result.path) as scan:
        print(scan.summary())

Names are imported on first use, so ``import cordscope`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from acquisition.controller import ScanController, ScanProgress, ScanResult
    from acquisition.demo.plans import demo_plan
    from acquisition.hardware import build_core
    from acquisition.plan import ScanPlan, load_plan, save_plan, validate_plan
    from acquisition.storage import ScanFile

_EXPORTS = {
    "build_core": "acquisition.hardware",
    "ScanPlan": "acquisition.plan",
    "load_plan": "acquisition.plan",
    "save_plan": "acquisition.plan",
    "demo_plan": "acquisition.plan",
    "validate_plan": "acquisition.plan",
    "ScanController": "acquisition.controller",
    "ScanProgress": "acquisition.controller",
    "ScanResult": "acquisition.controller",
    "ScanFile": "acquisition.storage",
}

__all__ = [
    "ScanController",
    "ScanFile",
    "ScanPlan",
    "ScanProgress",
    "ScanResult",
    "build_core",
    "demo_plan",
    "load_plan",
    "save_plan",
    "validate_plan",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cordscope' has no attribute {name!r}")
