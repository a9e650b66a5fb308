"""The PyQt6 GUI of CordScope (and offline icons for pymmcore-widgets)."""
