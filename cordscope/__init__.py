"""CordScope: acquisition and live analysis for spinal cord tract tracing.

The ``cordscope`` command lives in :mod:`cordscope.cli`. Scripts use the
small API re-exported here (see ``examples/scan_demo_slide.py``)::

    import cordscope

    core = cordscope.build_core("hardware_configs/demo.cfg")
    plan = cordscope.load_plan("my-slide.yaml")
    session = cordscope.ScanSession(core, plan, analysis=cordscope.AnalysisProcess)
    session.events.progress.connect(lambda p: print(p.tiles_done, "/", p.tiles_total))
    session.start()
    result = session.wait()
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
    from acquisition.session import ScanSession, SessionResult
    from acquisition.storage import ScanFile
    from analysis.live import AnalysisProcess, AnalysisThread
    from analysis.scan_analysis import analyze_scan

_EXPORTS = {
    "build_core": "acquisition.hardware",
    "ScanPlan": "acquisition.plan",
    "load_plan": "acquisition.plan",
    "save_plan": "acquisition.plan",
    "demo_plan": "acquisition.demo.plans",
    "validate_plan": "acquisition.plan",
    "ScanController": "acquisition.controller",
    "ScanProgress": "acquisition.controller",
    "ScanResult": "acquisition.controller",
    "ScanSession": "acquisition.session",
    "SessionResult": "acquisition.session",
    "ScanFile": "acquisition.storage",
    "AnalysisProcess": "analysis.live",
    "AnalysisThread": "analysis.live",
    "analyze_scan": "analysis.scan_analysis",
}

__all__ = [
    "AnalysisProcess",
    "AnalysisThread",
    "ScanController",
    "ScanFile",
    "ScanPlan",
    "ScanProgress",
    "ScanResult",
    "ScanSession",
    "SessionResult",
    "analyze_scan",
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
