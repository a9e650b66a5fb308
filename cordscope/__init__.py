"""CordScope: acquisition and live analysis for spinal cord tract tracing.

The ``cordscope`` command lives in :mod:`cordscope.cli`. For scripts, the
small API is re-exported here::

    from cordscope import build_core, load_plan, ScanController, ScanFile
"""
