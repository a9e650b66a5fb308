"""BaSiC's flat field of the synthetic tiles, in basicpy's own environment (see README.md)."""

import time

import numpy as np
from basicpy import BaSiC

if __name__ == "__main__":
    d = np.load("/tmp/flatfield_basicpy_tiles.npz")
    t0 = time.perf_counter()
    basic = BaSiC(get_darkfield=False, smoothness_flatfield=1.0)
    basic.fit(d["tiles"] - d["offset"])
    print("basicpy fit s", round(time.perf_counter() - t0, 1))
    np.save("/tmp/flatfield_basicpy_flat.npy", np.asarray(basic.flatfield))
