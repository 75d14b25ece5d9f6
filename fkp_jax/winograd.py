"""Winograd F(m x m, 3 x 3) convolutions, m = 2 or 4, NHWC inputs, HWIO taps, correlation (no kernel flip).

- `conv3x3_winograd`: one map with a hand-written VJP, VALID or reflection-padded "same" (the DIP
  generator's convs, `fkp_jax.dip.conv3x3`).
- `conv3x3_valid`: VALID correlation whose forward, input-gradient and weight-gradient maps are custom-VJP
  functions of each other, so derivatives of ANY order stay in the Winograd domain (KernelGAN's
  discriminator, whose gradient penalty needs the second derivative: `fkp_jax.kernelgan`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

PRECISION = lax.Precision.HIGHEST

# Winograd F(m x m, 3 x 3) (Lavin & Gray 2016): an output tile of m x m from an input tile of a x a, a = m + 2,
# as a^2 independent matmuls over channels: Y = A^T [ (B^T d B) (G g G^T) ] A per tile, summed over C.
# Toom-Cook construction at the interpolation points (and infinity) 0, 1, -1 for m = 2 and 0, 1, -1, 1/2, -2
# for m = 4: A^T and G evaluate the output and tap polynomials there, B^T is the transposed interpolation
# matrix, its rows scaled to small integers (the scales moved into G). The m = 4 points round 2.5 times less
# in float32 than Lavin's 0, +-1, +-2 (as Barabasz et al. 2020, "Error analysis and improving the accuracy
# of Winograd convolution for deep neural networks", found; measured here, see `conv3x3_winograd`).
WINOGRAD = {
    2: dict(BT=((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
            G=((1, 0, 0), (1 / 2, 1 / 2, 1 / 2), (1 / 2, -1 / 2, 1 / 2), (0, 0, 1)),
            AT=((1, 1, 1, 0), (0, 1, -1, -1))),
    4: dict(BT=((2, -3, -4, 3, 2, 0), (0, -2, 1, 5, 2, 0), (0, -2, 5, -1, -2, 0),
                (0, 2, 1, -2, -1, 0), (0, 1, -2, -1, 2, 0), (0, 2, -3, -4, 3, 2)),
            G=((1 / 2, 0, 0), (1 / 6, 1 / 6, 1 / 6), (1 / 6, -1 / 6, 1 / 6),
               (16 / 15, 8 / 15, 4 / 15), (1 / 30, -1 / 15, 2 / 15), (0, 0, 1 / 2)),
            AT=((1, 1, 1, 1, 1, 0), (0, 1, -1, 1 / 2, -2, 0), (0, 1, 1, 1 / 4, 4, 0), (0, 1, -1, 1 / 8, -8, 1))),
}
WINOGRAD = {m: {k: np.asarray(v, np.float64) for k, v in mats.items()} for m, mats in WINOGRAD.items()}


def _combine(coefs, terms):
    """sum_i coefs[i] terms[i] as elementwise ops (zeros skipped, +-1 without a multiply)."""
    acc = None
    for c, t in zip(coefs, terms):
        if c != 0:
            t = t if c == 1 else (-t if c == -1 else float(c) * t)  # Python float: keeps the array's dtype
            acc = t if acc is None else acc + t
    return acc


def _wino_taps(x, axis, m, tiles, reflect):
    """Tap i = 0..a-1 of every tile along ``axis``: sample m k + i of x padded by one reflected sample at both
    ends (``reflect``, PyTorch ReflectionPad) or not, then with zeros up to m * tiles + 2 samples. Strided
    slices of x joined with single reflected / zero samples, so that the padding fuses into the transform."""
    n = x.shape[axis]
    off = 1 if reflect else 0
    taps = []
    for i in range(m + 2):
        src = [m * k + i - off for k in range(tiles)]
        inside = [k for k in range(tiles) if 0 <= src[k] < n]
        pieces = []
        for k in range(tiles):
            if inside and k == inside[0]:
                pieces.append(lax.slice_in_dim(x, src[k], src[inside[-1]] + 1, m, axis))
            elif not (inside and inside[0] < k <= inside[-1]):
                j = src[k]
                j = 1 if (reflect and j == -1) else (n - 2 if (reflect and j == n) else None)
                if j is None:
                    shape = list(x.shape)
                    shape[axis] = 1
                    pieces.append(jnp.zeros(shape, x.dtype))
                else:
                    pieces.append(lax.slice_in_dim(x, j, j + 1, 1, axis))
        taps.append(pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=axis))
    return taps


def _wino_untaps(d, axis, n, reflect):
    """Transpose of the padding in `_wino_taps`: gradient of the padded samples -> gradient of x (n samples)."""
    if not reflect:
        return lax.slice_in_dim(d, 0, n, 1, axis)
    pad = lambda t, lo, hi: jnp.pad(t, [(lo, hi) if k == axis else (0, 0) for k in range(d.ndim)])  # noqa: E731
    return (lax.slice_in_dim(d, 1, n + 1, 1, axis) + pad(lax.slice_in_dim(d, 0, 1, 1, axis), 1, n - 2)
            + pad(lax.slice_in_dim(d, n + 1, n + 2, 1, axis), n - 2, 1))


def _wino_in(x, axis, m, tiles, reflect, out_axis=0):
    """B^T along ``axis``: the a components of every tile (`_wino_taps`), stacked on ``out_axis``."""
    taps = _wino_taps(x, axis, m, tiles, reflect)
    return jnp.stack([_combine(row, taps) for row in WINOGRAD[m]["BT"]], axis=out_axis)


def _wino_in_t(parts, axis, m, tiles):
    """Transpose of `_wino_in` (B, then overlap-add of the tiles): a components -> m * (tiles + 1) samples."""
    bt = WINOGRAD[m]["BT"]
    c = [_combine(bt[:, i], parts) for i in range(m + 2)]  # tap i of every tile, at sample m k + i
    phases = []
    for q in range(m):  # samples m k + q collect taps q and q + m (of the previous tile)
        terms = []
        for i in range(q, m + 2, m):
            pad = [(0, 0)] * c[i].ndim
            pad[axis] = (i // m, 1 - i // m)
            terms.append(jnp.pad(c[i], pad))
        phases.append(sum(terms[1:], terms[0]))
    shape = list(phases[0].shape)
    shape[axis] *= m
    return jnp.stack(phases, axis=axis + 1).reshape(shape)


def _wino_out(parts, axis, m):
    """A^T along ``axis``: a components (tiles on ``axis``) -> m * tiles samples."""
    ys = [_combine(row, parts) for row in WINOGRAD[m]["AT"]]
    shape = list(ys[0].shape)
    shape[axis] *= m
    return jnp.stack(ys, axis=axis + 1).reshape(shape)


def _wino_out_t(dy, axis, m, out_axis=0):
    """Transpose of `_wino_out`: m * tiles samples on ``axis`` -> a components stacked on ``out_axis``."""
    at = WINOGRAD[m]["AT"]
    shape = list(dy.shape)
    shape[axis:axis + 1] = [shape[axis] // m, m]
    dy = dy.reshape(shape)
    ys = [lax.index_in_dim(dy, j, axis + 1, keepdims=False) for j in range(m)]
    return jnp.stack([_combine(at[:, r], ys) for r in range(m + 2)], axis=out_axis)


def _wino_weights(w, m):
    """HWIO (3, 3, C, D) -> G w G^T as (a^2, C, D), component (r, s) at r a + s: ONE small matmul with the
    (a^2, 9) matrix G (x) G (a few dozen separate elementwise ops cost more in launches than in work)."""
    gg = jnp.asarray(np.kron(WINOGRAD[m]["G"], WINOGRAD[m]["G"]), w.dtype)
    return jnp.dot(gg, w.reshape(9, -1), precision=PRECISION).reshape(-1, *w.shape[2:])


def _wino_weights_t(du, m):
    """Transpose of `_wino_weights`: (a^2, C, D) -> G^T du G as (3, 3, C, D)."""
    gg = jnp.asarray(np.kron(WINOGRAD[m]["G"], WINOGRAD[m]["G"]), du.dtype)
    return jnp.dot(gg.T, du.reshape(gg.shape[0], -1), precision=PRECISION).reshape(3, 3, *du.shape[1:])


def _wino_tiles(shape, m, reflect):
    n, h, w = shape[:3]
    if not reflect:
        h, w = h - 2, w - 2
    return n, h, w, -(-h // m), -(-w // m)


def _wino_forward(x, w, m, reflect):
    n, h, w_, th, tw = _wino_tiles(x.shape, m, reflect)
    a, c = m + 2, x.shape[-1]
    v = _wino_in(_wino_in(x, 1, m, th, reflect), 3, m, tw, reflect, out_axis=1)  # (a, a, N, th, tw, C)
    v = v.reshape(a * a, n * th * tw, c)
    u = _wino_weights(w, m)
    prod = jnp.einsum("ktc,kcd->ktd", v, u, precision=PRECISION).reshape(a, a, n, th, tw, -1)
    cols = [_wino_out([prod[r, s] for s in range(a)], 2, m) for r in range(a)]  # (N, th, m tw, D) each
    return _wino_out(cols, 1, m)[:, :h, :w_], (v, u)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv3x3_winograd(x, w, m=2, reflect=False):
    """3x3 correlation, stride 1, NHWC ``x``, HWIO ``w``, by Winograd F(m x m, 3 x 3), m = 2 or 4: VALID
    (``x`` already padded) or, with ``reflect``, of ``x`` reflection-padded by 1 (same size out; the padding
    is folded into the input transform and its transpose instead of costing passes of its own).

    The input and the taps are transformed tile by tile, multiplied by a^2 batched matmuls
    (tiles x C) @ (C x D), a = m + 2, and transformed back: 4 / 9 (m = 2) or 1 / 4 (m = 4) of the
    multiplications of the direct sums. The map is padded with zeros to whole tiles (cropped after).
    The VJP stays in the transformed domain: d taps = G^T (V^T dM) G, d input = the transposed input
    transform (with overlap-add of the tiles) of dM U^T, dM = the transposed output transform of dy.

    float32 error (max |error| / max |exact| vs float64; 48^2 and 96^2, 144 -> 128, leaky-ReLU'd normal
    input, PyTorch-default weights; y / dx / dw): m = 2 like the direct sums, 4.5e-7 / 4.4e-7 / 6e-7
    (`conv3x3_rows` 7e-7 / 6.5e-7 / 2e-6, XLA's conv 1.4e-6 / 3e-7 / 3.6e-6); m = 4 3.2e-6 / 2.5e-6 /
    2.8e-6 (with Lavin's points 0, +-1, +-2: 7.9e-6 / 5.1e-6 / 7e-6)."""
    return _wino_forward(x, w, m, reflect)[0]


def _conv3x3_winograd_fwd(x, w, m, reflect):
    y, (v, u) = _wino_forward(x, w, m, reflect)
    return y, (v, u, x.shape)


def _conv3x3_winograd_bwd(m, reflect, res, dy):
    v, u, shape = res
    n, h, w_, th, tw = _wino_tiles(shape, m, reflect)
    a = m + 2
    dy = jnp.pad(dy, ((0, 0), (0, m * th - h), (0, m * tw - w_), (0, 0)))
    dm = _wino_out_t(_wino_out_t(dy, 1, m), 3, m, out_axis=1)  # (a, a, N, th, tw, D)
    dm = dm.reshape(a * a, n * th * tw, -1)
    dw = _wino_weights_t(jnp.einsum("ktc,ktd->kcd", v, dm, precision=PRECISION), m)
    dv = jnp.einsum("ktd,kcd->ktc", dm, u, precision=PRECISION).reshape(a, a, n, th, tw, -1)
    # (N, th, W, C) each
    cols = [_wino_untaps(_wino_in_t([dv[r, s] for s in range(a)], 2, m, tw), 2, shape[2], reflect) for r in range(a)]
    return _wino_untaps(_wino_in_t(cols, 1, m, th), 1, shape[1], reflect), dw


conv3x3_winograd.defvjp(_conv3x3_winograd_fwd, _conv3x3_winograd_bwd)


# ----------------------------------------------------------------------------- VALID maps, any-order derivatives
# y = conv(x, w), dx = conv^T(dy, w) and dw = conv_w(x, dy) are bilinear and each one's VJP is made of the
# others: conv: (x, w) <- (conv^T(g, w), conv_w(x, g)); conv^T: (dy, w) <- (conv(g, w), conv_w(g, dy));
# conv_w: (x, dy) <- (conv^T(dy, c), conv(x, c)). Written as three custom VJPs that call each other, every
# derivative JAX takes of them (the gradient penalty's second derivative included) is again these three maps
# in the Winograd domain, instead of autodiff through a VJP rule's reshapes, pads and stacks.


def _valid_tiles(shape, m):
    """(N, H, W) of an input -> (N, tiles down, tiles across) of its VALID output, m x m per tile."""
    n, h, w = shape[:3]
    return n, -(-(h - 2) // m), -(-(w - 2) // m)


def _valid_in(x, m):
    """B^T x B per tile of x (N, H, W, C) (zeros past its edge) -> (a^2, tiles, C)."""
    n, th, tw = _valid_tiles(x.shape, m)
    v = _wino_in(_wino_in(x, 1, m, th, False), 3, m, tw, False, out_axis=1)
    return v.reshape((m + 2) ** 2, n * th * tw, x.shape[-1])


def _valid_in_t(dv, shape, m):
    """Transpose of `_valid_in`: (a^2, tiles, C) -> the input's shape."""
    n, th, tw = _valid_tiles(shape, m)
    a = m + 2
    dv = dv.reshape(a, a, n, th, tw, -1)
    cols = [_wino_untaps(_wino_in_t([dv[r, s] for s in range(a)], 2, m, tw), 2, shape[2], False) for r in range(a)]
    return _wino_untaps(_wino_in_t(cols, 1, m, th), 1, shape[1], False)


def _valid_out(prod, shape, m):
    """A^T M A per tile: (a^2, tiles, D) -> the VALID output (N, H - 2, W - 2, D) of an input of ``shape``."""
    n, th, tw = _valid_tiles(shape, m)
    a = m + 2
    prod = prod.reshape(a, a, n, th, tw, -1)
    cols = [_wino_out([prod[r, s] for s in range(a)], 2, m) for r in range(a)]
    return _wino_out(cols, 1, m)[:, :shape[1] - 2, :shape[2] - 2]


def _valid_out_t(dy, shape, m):
    """Transpose of `_valid_out`: (N, H - 2, W - 2, D) -> (a^2, tiles, D)."""
    n, th, tw = _valid_tiles(shape, m)
    dy = jnp.pad(dy, ((0, 0), (0, m * th - dy.shape[1]), (0, m * tw - dy.shape[2]), (0, 0)))
    dm = _wino_out_t(_wino_out_t(dy, 1, m), 3, m, out_axis=1)
    return dm.reshape((m + 2) ** 2, n * th * tw, -1)


# The forward map uses F(2x2, 3x3), the two gradient maps F(4x4, 3x3). Measured on KernelGAN's discriminator
# (golden kernelgan_d, float32 against the golden float32 gradients, inputs as jit arguments): with F(4x4, 3x3)
# in the forward map its D-loss gradients are off by up to 1.9e-3 of a tensor's largest entry, with F(2x2,
# 3x3) by 8e-6 (the direct sums: 6.7e-6), whichever the gradient maps use. The cause is LeakyReLU's kink, not
# a general loss of accuracy: the golden batch holds pre-activations (batch-norm outputs, std 0.6) within
# 1.4e-6 (penalty batch, block 3) and 5.2e-7 (fake batch, block 1) of zero; F(4x4, 3x3) rounds about 7 times
# more than F(2x2, 3x3) (max error / output std 6.3e-6 vs 8.6e-7, XLA's conv 1.6e-6) and moves the first one
# across, and that single slope decision (1 vs 0.2) moves tail.weight's gradient by exactly the 1.87e-3 seen
# (flipped alone in a float64 run: 1.87e-3; the other one: 1.88e-3 on block1's weight). F(3x3, 3x3) rounds as
# much as F(4x4, 3x3) whatever its points. F(2x2, 3x3), whose transforms are exact in binary, flips neither.
FORWARD_M = 2
GRADIENT_M = 4


@jax.custom_vjp
def conv3x3_valid(x, w):
    """VALID 3x3 correlation, stride 1: x (N, H, W, C), w HWIO (3, 3, C, D) -> (N, H - 2, W - 2, D), by
    Winograd F(2x2, 3x3) (`FORWARD_M`; the map padded with zeros to whole tiles, cropped after).
    Differentiable to any order in the Winograd domain (`conv3x3_valid_t`, `conv3x3_valid_w`)."""
    m = FORWARD_M
    return _valid_out(jnp.einsum("ktc,kcd->ktd", _valid_in(x, m), _wino_weights(w, m), precision=PRECISION),
                      x.shape, m)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3_valid_t(dy, w, shape):
    """The adjoint of ``conv3x3_valid(., w)``: an output cotangent (N, H - 2, W - 2, D) -> the input's
    gradient, ``shape`` (N, H, W, C); Winograd F(4x4, 3x3) (`GRADIENT_M`)."""
    m = GRADIENT_M
    return _valid_in_t(jnp.einsum("ktd,kcd->ktc", _valid_out_t(dy, shape, m), _wino_weights(w, m),
                                  precision=PRECISION), shape, m)


@jax.custom_vjp
def conv3x3_valid_w(x, dy):
    """The weight gradient of ``conv3x3_valid``: dw[i, j, c, d] = sum_{n, h, w} x[n, h + i, w + j, c]
    dy[n, h, w, d], as (3, 3, C, D); Winograd F(4x4, 3x3) (`GRADIENT_M`)."""
    m = GRADIENT_M
    return _wino_weights_t(jnp.einsum("ktc,ktd->kcd", _valid_in(x, m), _valid_out_t(dy, x.shape, m),
                                      precision=PRECISION), m)


conv3x3_valid.defvjp(lambda x, w: (conv3x3_valid(x, w), (x, w)),
                     lambda res, g: (conv3x3_valid_t(g, res[1], res[0].shape), conv3x3_valid_w(res[0], g)))
conv3x3_valid_t.defvjp(lambda dy, w, shape: (conv3x3_valid_t(dy, w, shape), (dy, w)),
                       lambda shape, res, g: (conv3x3_valid(g, res[1]), conv3x3_valid_w(g, res[0])))
conv3x3_valid_w.defvjp(lambda x, dy: (conv3x3_valid_w(x, dy), (x, dy)),
                       lambda res, c: (conv3x3_valid_t(res[1], c, res[0].shape), conv3x3_valid(res[0], c)))
