"""Hardware, scan plans, the scan controller, HDF5 storage and the demo microscope."""
