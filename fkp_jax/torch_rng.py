"""PyTorch's CPU random streams, reproduced in NumPy (no torch needed): what the released DIP-FKP draws.

The released DIP-FKP starts every run on an LR image of a given size from ONE fixed state (FKP_SPEC 6.2, 6.4;
docs/results.md "DIP-FKP: our loop against the official loop"): its `get_noise` calls
``torch.manual_seed(1)`` and draws the DIP input, the DIP weights are drawn right after it, and the
constructor reseeds with 5 to draw the latent. `original_start` rebuilds that state so our solver can run
from it (``--start original``).

- `Generator(seed)`: ``torch.manual_seed(seed)`` = MT19937 with the reference ``init_genrand`` seeding
  (NumPy's ``MT19937._legacy_seeding``), 32-bit outputs.
- `Generator.uniform(n, low, high)`: ``Tensor.uniform_`` on float32 (ATen ``uniform_real_distribution``: the
  low 24 bits of one output times 2^-24, then x * (high - low) + low in double, rounded to float32). Bit-exact.
- `Generator.normal(n)`: ``Tensor.normal_(0, 1)`` on a contiguous float32 tensor of n >= 16 values (ATen
  ``normal_fill``: n uniforms, Box-Muller on blocks of 16 with u1 = 1 - u[j], u2 = u[j + 8]; when 16 does
  not divide n the last 16 values are redrawn and transformed again). torch's AVX2 build evaluates log, sin
  and cos with SLEEF; NumPy's float32 ones differ from them by at most 1 ulp (2.4e-7 on the x2/x3/x4 latents).
"""

from __future__ import annotations

import math

import jax
import numpy as np


class Generator:
    """``torch.manual_seed(seed)`` on the CPU generator, then draws in PyTorch's order (see module docstring)."""

    def __init__(self, seed: int):
        self._bits = np.random.MT19937(0)
        self._bits._legacy_seeding(int(seed))

    def _raw(self, n: int) -> np.ndarray:
        return self._bits.random_raw(n).astype(np.uint32)

    def uniform(self, n: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
        x = (self._raw(n) & 0xFFFFFF).astype(np.float64) * 2.0 ** -24
        lo, hi = np.float32(low), np.float32(high)
        return (x * np.float64(np.float32(hi - lo)) + np.float64(lo)).astype(np.float32)

    def normal(self, n: int) -> np.ndarray:
        if n < 16:
            raise ValueError("only the vectorised path of normal_ (n >= 16 values) is reproduced")
        data = self.uniform(n)

        def box_muller16(d):
            u1, u2 = np.float32(1) - d[:8], d[8:16].copy()
            radius = np.sqrt(np.float32(-2) * np.log(u1))
            theta = np.float32(2.0 * math.pi) * u2
            d[:8], d[8:16] = radius * np.cos(theta), radius * np.sin(theta)

        for i in range(0, n - 15, 16):
            box_muller16(data[i:i + 16])
        if n % 16:
            tail = data[n - 16:]
            tail[:] = self.uniform(16)
            box_muller16(tail)
        return data


def conv_init(gen: Generator, c_out: int, c_in: int, kh: int, kw: int) -> tuple[np.ndarray, np.ndarray]:
    """``nn.Conv2d`` default init drawn from ``gen``: weight (out, in, kh, kw) by ``kaiming_uniform_(a=sqrt 5)``,
    then bias U(+-1/sqrt(fan_in)), with PyTorch's double-precision bounds."""
    fan_in = c_in * kh * kw
    bound = math.sqrt(3.0) * math.sqrt(2.0 / (1 + 5)) / math.sqrt(fan_in)
    w = gen.uniform(c_out * fan_in, -bound, bound).reshape(c_out, c_in, kh, kw)
    b = gen.uniform(c_out, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
    return w, b


def flow_init_draws(sf: int, n_blocks: int = 5, n_hidden: int = 1) -> int:
    """Uniform draws the original ``KernelPrior(...)`` constructor makes (its nn.Linear inits; t_net is a deep
    copy, batch norm draws nothing) between ``torch.manual_seed(5)`` and the latent draw (spec 4.1, 6.4)."""
    d, h = min(4 * sf + 3, 21) ** 2, min((sf + 1) * 5, 25)
    per_block = (d * h + h) + n_hidden * (h * h + h) + (h * d + d)
    return n_blocks * per_block


def original_start(hr_hw: tuple[int, int], sf: int, input_channels: int = 3,
                   noise_scale: float = 0.1) -> tuple[np.ndarray, dict, np.ndarray]:
    """The released DIP-FKP's initial state for an HR size (H, W) at scale sf: (DIP input (1, H, W, C) float32,
    the DIP's PyTorch state dict {name: array} (all 142 parameters; `fkp_jax.dip.params_from_torch` reads it), the
    latent (k^2,) before its first projection). Bit-exact except the latent (<= 1 ulp, module docstring)."""
    from fkp_jax import dip

    gen = Generator(1)  # util.fill_noise: torch.manual_seed(1), U[0, 1) * 0.1
    h, w = hr_hw
    z = gen.uniform(input_channels * h * w).reshape(1, input_channels, h, w) * np.float32(noise_scale)
    # batch-norm parameters draw nothing: PyTorch's defaults, as dip.init sets them (scale 1, bias 0; 0 / 0 for
    # the non-local output BN); every convolution is then overwritten from the stream
    state = {n: np.asarray(a) for n, a in dip.named_parameters(dip.init(jax.random.key(0), (1, h, w, input_channels)))}
    for name, shape in dip.torch_construction_order():
        state[name + ".weight"], state[name + ".bias"] = conv_init(gen, *shape)
    gen = Generator(5)  # model.py: seed 5, the flow's constructor, then base_dist.sample((1, 1))
    gen.uniform(flow_init_draws(sf))
    latent = gen.normal(min(4 * sf + 3, 21) ** 2)
    return z.transpose(0, 2, 3, 1), state, latent
