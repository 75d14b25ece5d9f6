"""DIP "skip" image generator with non-local blocks (FKP_SPEC 6.2), Flax linen, NHWC.

Public API: ``init(key, input_shape) -> params``, ``apply(params, x) -> y`` (pure functions),
``params_from_torch(state_dict)``, ``named_parameters(params)``, ``count_params(params)``.
``x`` is (N, H, W, 3), N = 1 for DIP-FKP, H, W >= 33 (reflection padding at the deepest level);
``y`` has the same shape, in (0, 1).

Deliberate deviations from the original, none of which changes the function computed:
- BatchNorm is ALWAYS in training mode (statistics of the batch over N, H, W; biased variance;
  eps 1e-5) and keeps NO running statistics: DIP-FKP never switches the net to eval mode, so the
  running buffers of the original are never read. The network is therefore state-free.
- The non-local block computes theta (phi^T g) / N instead of (theta phi^T / N) g (there is no
  softmax, so the product is associative): O(HW C'^2) instead of O(HW N C'), and no HW x N matrix.
- Bilinear x2 upsampling (align_corners=False, PyTorch nn.Upsample) is written as its fixed 2-tap
  stencil (weights 1/4, 3/4, edge replicated) instead of a generic resize.
- 3x3 convs are computed by the algorithm fastest on the machine (``conv_algorithm``: XLA's
  convolution, im2col + one matmul, or `conv3x3_rows`), chosen per backend and CPU instruction set.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fkp_jax.winograd import conv3x3_winograd

N_SCALES = 5
CH = 128  # channels down = up at every scale
SKIP = 16  # skip channels at every scale
NL_CH = 64  # inner channels of the non-local blocks
NL_LEVELS = (2, 3, 4)
BN_EPS = 1e-5
SLOPE = 0.2
PRECISION = lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- primitive ops (NHWC)

def reflect_pad1(x):
    """Reflection padding by one pixel on H and W (PyTorch ReflectionPad2d(1))."""
    return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")


IM2COL_MIN_POSITIONS = 128 * 128 + 1  # stride 2: AVX-512 crossover, 2 cores (benchmarks/dip_net_speed.py)
WINOGRAD_MIN_POSITIONS = 6 * 6  # stride 1: F(2x2, 3x3) from here on (below, XLA's own convolution)
WINOGRAD4_MIN_POSITIONS = 48 * 48  # stride 1: F(4x4, 3x3) from here on
CONV_ALGORITHMS = ("xla", "im2col", "rows", "winograd", "winograd4")


def conv_algorithm(out_positions: int, stride: int) -> str:
    """How `conv3x3` computes a 3x3 convolution with ``out_positions`` = OH * OW outputs, chosen per
    backend at run time (forward + backward, 2 cores):

    - accelerators: "xla" (the platform's convolution).
    - CPUs, stride 1: Winograd (`conv3x3_winograd`), F(4x4, 3x3) from 48^2 outputs on, F(2x2, 3x3) from
      6^2, "xla" below, on AVX2 and AVX-512 alike. Measured on 2 AMD EPYC Zen 3 cores (AVX2, shared with
      another job) against "rows" (`conv3x3_rows`, the choice before), one conv fwd + bwd, 144 -> 128
      channels: 96^2 123 -> 56 ms, 256^2 913 -> 506 ms; 128 -> 128: 48^2 22.4 -> 13.7 ms, 24^2 9.3 ->
      4.4-6.7 ms, 12^2 3.2 -> 1.9 ms (F(2, 3)); the whole DIP-FKP step (x2, FKP prior) 96^2 0.339 -> 0.261 s,
      256^2 4.26 -> 2.73 s (`benchmarks/dip_net_speed.py --convs ...`, docs/benchmarks.md). On 2 AMD EPYC
      Zen 4 cores (AVX-512), the whole step against the earlier AVX-512 choice ("xla" up to 128^2 outputs,
      "im2col" above), two alternating rounds: 96^2 0.215 / 0.223 -> 0.203 / 0.156 s, 256^2 2.11 / 1.67 ->
      1.02 / 1.08 s (docs/benchmarks.md, "AVX-512 machine"). The F(4, 3) threshold is not sharp: from
      12^2, 24^2 or 48^2 the 96^2 step differs by less than the noise.
    - CPUs, stride 2: "xla" up to 128^2 outputs, "im2col" above (the choice measured on AVX-512: whole step
      256x256 1.10 s vs 1.33 s, 480x320 2.47 s vs 3.42 s).
    """
    if jax.default_backend() != "cpu":
        return "xla"
    if stride == 1:
        if out_positions >= WINOGRAD4_MIN_POSITIONS:
            return "winograd4"
        return "winograd" if out_positions >= WINOGRAD_MIN_POSITIONS else "xla"
    return "im2col" if out_positions >= IM2COL_MIN_POSITIONS else "xla"


def _shift_columns(xp, width):
    """(N, H, width + 2, C) -> (N, H, width, 3C): the three column shifts of each row side by side."""
    return jnp.concatenate([xp[:, :, dx:dx + width] for dx in range(3)], axis=-1)


def _taps_by_column(w):
    """HWIO (3, 3, C, D) -> (3C, 3D): rows [dx, c], columns [dy, d]."""
    c, d = w.shape[2:]
    return w.transpose(1, 2, 0, 3).reshape(3 * c, 3 * d)


@jax.custom_vjp
def conv3x3_rows(xp, w):
    """VALID 3x3 correlation, stride 1, of an already padded NHWC ``xp`` with an HWIO ``w``, as ONE matmul.

    The three column shifts are concatenated on channels (K = 3C, one third of im2col's memory) and
    multiplied by the taps of all three kernel rows at once (N = 3D); output row y sums row y + dy of
    block dy. Same sums as the convolution in another order (float32 rounding differs). The VJP is
    written out as the two matmuls it needs, in the shapes XLA:CPU runs fastest (autodiff of the
    forward transposes large buffers first: 96^2 fwd + bwd 140 ms autodiff vs 93 ms here)."""
    return _rows_product(_shift_columns(xp, xp.shape[2] - 2), w)


def _rows_product(cols, w):
    """Output of `conv3x3_rows` from the column shifts ``cols`` (N, H + 2, W, 3C)."""
    n, hp, width, c3 = cols.shape
    h, d = hp - 2, w.shape[-1]
    p = jnp.dot(cols.reshape(n * hp * width, c3), _taps_by_column(w), precision=PRECISION)
    p = p.reshape(n, hp, width, 3 * d)
    return p[:, 0:h, :, 0:d] + p[:, 1:h + 1, :, d:2 * d] + p[:, 2:h + 2, :, 2 * d:]


def _conv3x3_rows_fwd(xp, w):
    cols = _shift_columns(xp, xp.shape[2] - 2)  # kept for the backward pass rather than built twice
    return _rows_product(cols, w), (cols, w)


def _conv3x3_rows_bwd(res, dy):
    cols, w = res
    n, hp, width, c3 = cols.shape
    c, d = c3 // 3, w.shape[-1]
    # block r of the matmul output feeds output rows shifted by r: its cotangent is dy shifted by r
    dp = jnp.concatenate([jnp.pad(dy, ((0, 0), (r, 2 - r), (0, 0), (0, 0))) for r in range(3)], axis=-1)
    dp = dp.reshape(n * hp * width, 3 * d)
    cols = cols.reshape(n * hp * width, 3 * c)
    d_taps = jnp.dot(cols.T, dp, precision=PRECISION)  # (3C, 3D)
    d_cols = jnp.dot(dp, _taps_by_column(w).T, precision=PRECISION).reshape(n, hp, width, 3 * c)
    dxp = sum(jnp.pad(d_cols[..., s * c:(s + 1) * c], ((0, 0), (0, 0), (s, 2 - s), (0, 0))) for s in range(3))
    return dxp, d_taps.reshape(3, c, 3, d).transpose(2, 0, 1, 3)


conv3x3_rows.defvjp(_conv3x3_rows_fwd, _conv3x3_rows_bwd)


def conv3x3(x, w, b, stride=1, algorithm=None):
    """Reflection pad 1 + 3x3 conv (HWIO kernel) with bias; stride 1 or 2; NHWC.

    ``algorithm`` (default: `conv_algorithm`): "xla" = ``lax.conv_general_dilated``; "im2col" = the 9
    shifted views concatenated on channels + ONE matmul with K = 9 C_in (XLA:CPU's convolution, above all
    its backward, slows down on large maps, its matmul does not); "rows" = `conv3x3_rows`; "winograd" /
    "winograd4" = `conv3x3_winograd` F(2x2, 3x3) / F(4x4, 3x3) with the padding folded in. The last three
    are for stride 1 (stride 2 falls back to "xla"). All compute the same function; they differ in float32
    rounding only (F(4x4, 3x3) about five times the others, see `conv3x3_winograd`)."""
    oh, ow = (x.shape[1] - 1) // stride + 1, (x.shape[2] - 1) // stride + 1
    algorithm = conv_algorithm(oh * ow, stride) if algorithm is None else algorithm
    if algorithm in ("winograd", "winograd4") and stride == 1:
        return conv3x3_winograd(x, w, 4 if algorithm == "winograd4" else 2, True) + b
    xp = reflect_pad1(x)
    c = xp.shape[-1]
    if algorithm == "rows" and stride == 1:
        return conv3x3_rows(xp, w) + b
    if algorithm in ("xla", "rows", "winograd", "winograd4"):
        y = lax.conv_general_dilated(xp, w, (stride, stride), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=PRECISION)
        return y + b
    if algorithm != "im2col":
        raise ValueError(f"algorithm must be one of {CONV_ALGORITHMS}, not {algorithm!r}")
    cols = jnp.concatenate([xp[:, dy:dy + stride * (oh - 1) + 1:stride, dx:dx + stride * (ow - 1) + 1:stride]
                            for dy in range(3) for dx in range(3)], axis=-1)
    return jnp.einsum("nhwk,kd->nhwd", cols, w.reshape(9 * c, w.shape[-1]), precision=PRECISION) + b


def conv1x1(x, w, b):
    """1x1 conv as a matmul over channels; ``w`` is (1, 1, in, out)."""
    return jnp.einsum("nhwc,cd->nhwd", x, w[0, 0], precision=PRECISION) + b


def batch_norm(x, scale, bias):
    """Train-mode BatchNorm2d: batch statistics over (N, H, W), biased variance, eps 1e-5."""
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    return (x - mean) * (lax.rsqrt(var + BN_EPS) * scale) + bias


def leaky_relu(x):
    return jnp.where(x >= 0, x, SLOPE * x)


def max_pool2(x):
    """2x2 max-pool, stride 2, floor mode."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _upsample_axis(x, axis):
    """x2 along ``axis``: out[2k] = x[k-1]/4 + 3x[k]/4, out[2k+1] = 3x[k]/4 + x[k+1]/4, edges clamped."""
    n = x.shape[axis]
    take = lambda a, b: lax.slice_in_dim(x, a, b, axis=axis)
    prev = jnp.concatenate([take(0, 1), take(0, n - 1)], axis=axis)
    nxt = jnp.concatenate([take(1, n), take(n - 1, n)], axis=axis)
    even = 0.25 * prev + 0.75 * x
    odd = 0.75 * x + 0.25 * nxt
    out = jnp.stack([even, odd], axis=axis + 1)
    return out.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])


def upsample2(x):
    """Bilinear x2 upsampling, align_corners=False, exactly as PyTorch nn.Upsample (NHWC)."""
    return _upsample_axis(_upsample_axis(x, 1), 2)


def crop_concat(skip, deep):
    """Centre-crop both to the smaller H, W (offset floor((size - min)/2)) and concat [skip, deep]."""
    h = min(skip.shape[1], deep.shape[1])
    w = min(skip.shape[2], deep.shape[2])

    def crop(t):
        dh, dw = (t.shape[1] - h) // 2, (t.shape[2] - w) // 2
        return t[:, dh:dh + h, dw:dw + w]

    return jnp.concatenate([crop(skip), crop(deep)], axis=-1)


# ----------------------------------------------------------------------------- Flax modules

def _torch_uniform(bound):
    def initializer(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return initializer


class Conv(nn.Module):
    """Conv with bias and PyTorch default init (U(+-1/sqrt(fan_in))); 3x3 convs reflection-padded."""
    features: int
    size: int = 1
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        c_in = x.shape[-1]
        init_fn = _torch_uniform(1.0 / np.sqrt(c_in * self.size * self.size))
        w = self.param("kernel", init_fn, (self.size, self.size, c_in, self.features))
        b = self.param("bias", init_fn, (self.features,))
        if self.size == 1:
            return conv1x1(x, w, b)
        return conv3x3(x, w, b, self.stride)


class BatchNorm(nn.Module):
    """Train-mode BatchNorm2d without running statistics; ``zero_init`` for the non-local output."""
    zero_init: bool = False

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.zeros if self.zero_init else nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        return batch_norm(x, scale, bias)


class NonLocal(nn.Module):
    """Embedded dot-product non-local block, sub-sampled, no softmax, BN on the output (zero init)."""

    @nn.compact
    def __call__(self, x):
        n, h, w, c = x.shape
        g = max_pool2(Conv(NL_CH, name="g")(x))
        theta = Conv(NL_CH, name="theta")(x)
        phi = max_pool2(Conv(NL_CH, name="phi")(x))
        m = phi.shape[1] * phi.shape[2]
        # (theta phi^T / M) g == theta (phi^T g) / M: no HW x M matrix.
        pg = jnp.einsum("npc,npd->ncd", phi.reshape(n, m, NL_CH), g.reshape(n, m, NL_CH),
                        precision=PRECISION) / m
        y = jnp.einsum("nhwc,ncd->nhwd", theta, pg, precision=PRECISION)
        return BatchNorm(zero_init=True, name="W_bn")(Conv(c, name="W")(y)) + x


class Level(nn.Module):
    """One scale: ``encode`` gives the skip branch and the deep branch before the next level,
    ``decode`` upsamples the deep result, concatenates and applies the post-concat convs."""
    index: int

    def setup(self):
        self.skip_conv, self.skip_bn = Conv(SKIP), BatchNorm()
        self.down_conv, self.down_bn = Conv(CH, 3, 2), BatchNorm()
        self.nl = NonLocal() if self.index in NL_LEVELS else None
        self.conv2, self.bn2 = Conv(CH, 3), BatchNorm()
        self.cat_bn = BatchNorm()
        self.up_conv, self.up_bn = Conv(CH, 3), BatchNorm()
        self.conv1x1, self.bn1x1 = Conv(CH), BatchNorm()

    def encode(self, x):
        skip = leaky_relu(self.skip_bn(self.skip_conv(x)))
        d = leaky_relu(self.down_bn(self.down_conv(x)))
        if self.nl is not None:
            d = self.nl(d)
        return skip, leaky_relu(self.bn2(self.conv2(d)))

    def decode(self, skip, deep):
        y = self.cat_bn(crop_concat(skip, upsample2(deep)))
        y = leaky_relu(self.up_bn(self.up_conv(y)))
        return leaky_relu(self.bn1x1(self.conv1x1(y)))


class SkipNet(nn.Module):
    """The DIP-FKP generator: 5 levels, 128/128/16 channels, sigmoid output (spec 6.2)."""

    def setup(self):
        self.levels = [Level(i, name=f"level{i}") for i in range(N_SCALES)]
        self.out_conv = Conv(3)

    def __call__(self, x):
        skips = []
        for level in self.levels:
            skip, x = level.encode(x)
            skips.append(skip)
        for level, skip in zip(reversed(self.levels), reversed(skips)):
            x = level.decode(skip, x)
        return jax.nn.sigmoid(self.out_conv(x))


_NET = SkipNet()


def apply(params, x):
    """Forward pass; ``x`` (N, H, W, 3) -> (N, H, W, 3) in (0, 1). H, W >= 33."""
    return _NET.apply({"params": params}, x)


def count_params(params) -> int:
    return int(sum(np.size(p) for p in jax.tree_util.tree_leaves(params)))


# ----------------------------------------------------------------------------- PyTorch names

def _torch_layout() -> list[tuple[str, tuple[str, ...]]]:
    """(torch parameter name, flax path) in the original's named_parameters() order (golden App. A)."""
    out = []

    def conv(tname, path):
        out.extend([(tname + ".weight", path + ("kernel",)), (tname + ".bias", path + ("bias",))])

    def bn(tname, path):
        out.extend([(tname + ".weight", path + ("scale",)), (tname + ".bias", path + ("bias",))])

    def level(i, p):
        lv = (f"level{i}",)
        conv(p + "1.0.1.1", lv + ("skip_conv",))
        bn(p + "1.0.2", lv + ("skip_bn",))
        conv(p + "1.1.1.1", lv + ("down_conv",))
        bn(p + "1.1.2", lv + ("down_bn",))
        if i in NL_LEVELS:
            nl = lv + ("nl",)
            conv(p + "1.1.4.g.0", nl + ("g",))
            conv(p + "1.1.4.W.0", nl + ("W",))
            bn(p + "1.1.4.W.1", nl + ("W_bn",))
            conv(p + "1.1.4.theta", nl + ("theta",))
            conv(p + "1.1.4.phi.0", nl + ("phi",))
            conv(p + "1.1.5.1", lv + ("conv2",))
            bn(p + "1.1.6", lv + ("bn2",))
            nxt = p + "1.1.8."
        else:
            conv(p + "1.1.4.1", lv + ("conv2",))
            bn(p + "1.1.5", lv + ("bn2",))
            nxt = p + "1.1.7."
        if i + 1 < N_SCALES:
            level(i + 1, nxt)
        bn(p + "2", lv + ("cat_bn",))
        conv(p + "3.1", lv + ("up_conv",))
        bn(p + "4", lv + ("up_bn",))
        conv(p + "6.1", lv + ("conv1x1",))
        bn(p + "7", lv + ("bn1x1",))

    level(0, "")
    conv("9.1", ("out_conv",))
    return out


TORCH_LAYOUT = _torch_layout()


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree, path, value):
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def torch_construction_order() -> list[tuple[str, tuple[int, int, int, int]]]:
    """The original's convolutions as (torch name, weight shape (out, in, kh, kw)) in the order its ``skip()``
    creates them, i.e. draws their default init (not ``named_parameters()`` order): per level its skip,
    down and (levels with one) non-local g / W / theta / phi convs, conv2, then that level's up and 1x1
    convs, before the next level; the output conv last. Checked against golden dipfkp_init_x2.pt
    (`fkp_jax.torch_rng.original_start`)."""
    shapes = jax.eval_shape(lambda: _NET.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))["params"]
    names = {path[:-1]: tname[: -len(".weight")] for tname, path in TORCH_LAYOUT if path[-1] == "kernel"}
    order = []
    for i in range(N_SCALES):
        nl = [("nl", "g"), ("nl", "W"), ("nl", "theta"), ("nl", "phi")] if i in NL_LEVELS else []
        parts = [("skip_conv",), ("down_conv",), *nl, ("conv2",), ("up_conv",), ("conv1x1",)]
        order += [(f"level{i}",) + part for part in parts]
    order.append(("out_conv",))
    out = []
    for path in order:
        kh, kw, c_in, c_out = _get(shapes, path + ("kernel",)).shape
        out.append((names[path], (c_out, c_in, kh, kw)))
    return out


def params_from_torch(state_dict: Mapping[str, Any], dtype=jnp.float32) -> dict:
    """Map the 142 parameter tensors of the original state dict (buffers ignored) to ``params``.

    Conv weights (out, in, kh, kw) become HWIO (kh, kw, in, out)."""
    params: dict = {}
    for tname, path in TORCH_LAYOUT:
        a = np.asarray(state_dict[tname])
        if a.ndim == 4:
            a = a.transpose(2, 3, 1, 0)
        _set(params, path, jnp.asarray(a, dtype))
    return params


def init(key, input_shape: Sequence[int] = (1, 64, 64, 3)) -> dict:
    """PyTorch-default initialised parameters (nested dict); ``input_shape`` is NHWC.

    Same distribution as ``SkipNet().init`` (conv weights and biases U(+-1/sqrt(fan_in)), BN 1/0,
    non-local output BN 0/0) but drawn as ONE flat uniform array: the 142 separate threefry draws
    of ``Module.init`` take ~15 s to compile on CPU, this takes well under a second."""
    shapes = jax.eval_shape(lambda: _NET.init(jax.random.key(0), jnp.zeros(tuple(input_shape)))["params"])
    convs = [p for _, p in TORCH_LAYOUT if p[-1] == "kernel"]
    sizes = [int(np.prod(_get(shapes, p).shape)) + _get(shapes, p).shape[-1] for p in convs]
    u = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    offset = 0
    for path, size in zip(convs, sizes):
        shape = _get(shapes, path).shape
        bound = 1.0 / np.sqrt(np.prod(shape[:3]))
        chunk = u[offset:offset + size] * bound
        offset += size
        _set(params, path, chunk[: size - shape[-1]].reshape(shape))
        _set(params, path[:-1] + ("bias",), chunk[size - shape[-1]:])
    for _, path in TORCH_LAYOUT:
        if path[-1] == "scale" and path[-2] != "W_bn":
            _set(params, path, jnp.ones_like(_get(params, path)))
    return params


def named_parameters(params) -> list[tuple[str, Any]]:
    """[(torch name, array in the original's layout)] in the original's named_parameters() order."""
    out = []
    for tname, path in TORCH_LAYOUT:
        a = _get(params, path)
        out.append((tname, a.transpose(3, 2, 0, 1) if a.ndim == 4 else a))
    return out
