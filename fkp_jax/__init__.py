"""fkp-jax: blind super-resolution by kernel estimation with learned kernel priors, in JAX/Flax.

Conventions (see ARCHITECTURE.md): images at public boundaries are HWC RGB float32 in [0, 1];
kernels are (k, k) with k = min(4 s + 3, 21), applied by correlation (no flip) after circular
padding of floor(k/2), centre of mass at ((k - s)/2, (k - s)/2).
"""

__version__ = "0.1.0"
