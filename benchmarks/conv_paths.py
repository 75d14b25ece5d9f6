"""One KernelGAN discriminator body convolution (VALID 3x3, NHWC, 64 x 25 x 25 x 32 -> 32) by each path
XLA:CPU offers, in one process: milliseconds for the forward map, the input gradient, the weight gradient
and the penalty-like second derivative (the gradient in taps and cotangent of <c, input gradient>).

    python -m benchmarks.conv_paths                 # prints a markdown table (docs/benchmarks.md, "Intel Xeon")
    python -m benchmarks.conv_paths --repeats 50 --batch 64 --size 25 --channels 32

Paths:
- "xla": ``lax.conv_general_dilated`` and JAX's autodiff of it, compiled with XLA's defaults (jax 0.10.2
  hands unpadded convolutions to a YNNPACK fusion, padded ones to its Eigen convolution);
- "xla, YNN dot only": the same, compiled with ``compiler_options={"xla_cpu_experimental_ynn_fusion_type":
  "LIBRARY_FUSION_TYPE_DOT"}`` (convolutions on Eigen);
- "xla triple, YNN dot only": the three maps (forward, input gradient as a padded convolution with the flipped
  taps, weight gradient) as custom-VJP functions of each other, so that the second derivative is again these
  maps (the structure of `fkp_jax.winograd.conv3x3_valid`), compiled as the previous row;
- "xla triple, padded": the same triple with default options, its forward map given one zero row of padding
  (the extra output row sliced off), which keeps it on Eigen instead of YNNPACK; the input gradient is padded
  anyway; the weight gradient is the Winograd one (XLA's is 2-4x slower);
- "winograd": `fkp_jax.winograd.conv3x3_valid` and its two adjoint maps (the library's CPU default for the
  discriminator), default options.
``--products``: a second table, the batched matrix product of the Winograd weight gradient (a^2 products
(tiles x C)^T (tiles x D), contracting the tiles axis of both operands) against the same FLOPs with the
operands as the forward map has them, a pre-transposed operand, and the transpose itself.
A benchmark only: the library uses neither triple (docs/benchmarks.md says why).
"""

from __future__ import annotations

import argparse
import sys

YNN_DOT_ONLY = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def xla_valid(x, w):
    """VALID 3x3 correlation by ``lax.conv_general_dilated`` (NHWC, HWIO, float32 at HIGHEST precision)."""
    from jax import lax

    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


def xla_padded_valid(x, w):
    """`xla_valid` computed with one zero row padded below and the extra output row dropped: the same numbers
    (bit for bit), but XLA:CPU (jax 0.10.2) runs a padded convolution on Eigen, an unpadded one on YNNPACK."""
    from jax import lax

    y = lax.conv_general_dilated(x, w, (1, 1), [(0, 1), (0, 0)], dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 precision=lax.Precision.HIGHEST)
    return y[:, :-1]


def xla_input_grad(dy, w):
    """The adjoint of `xla_valid` in its input: a fully padded convolution with the flipped, transposed taps."""
    import jax.numpy as jnp
    from jax import lax

    k = w.shape[0]
    return lax.conv_general_dilated(dy, jnp.flip(w, (0, 1)).swapaxes(2, 3), (1, 1), [(k - 1, k - 1)] * 2,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST)


def xla_weight_grad(x, dy):
    """The adjoint of `xla_valid` in its taps, as one convolution (batch as the contracted feature axis)."""
    from jax import lax

    return lax.conv_general_dilated(x, dy, (1, 1), "VALID", dimension_numbers=("CHWN", "IHWO", "HWNC"),
                                    precision=lax.Precision.HIGHEST)


def xla_triple(fwd_map=xla_valid, input_map=xla_input_grad, weight_map=xla_weight_grad):
    """(fwd, input_grad, weight_grad): the three VALID 3x3 correlation maps (default: ``lax.conv_general_dilated``
    each) as custom-VJP functions whose VJPs are made of each other (fwd <- (input_grad, weight_grad), and so
    on), so that every derivative is again one of these maps."""
    import jax

    @jax.custom_vjp
    def fwd(x, w):
        return fwd_map(x, w)

    @jax.custom_vjp
    def input_grad(dy, w):
        return input_map(dy, w)

    @jax.custom_vjp
    def weight_grad(x, dy):
        return weight_map(x, dy)

    fwd.defvjp(lambda x, w: (fwd(x, w), (x, w)), lambda r, g: (input_grad(g, r[1]), weight_grad(r[0], g)))
    input_grad.defvjp(lambda dy, w: (input_grad(dy, w), (dy, w)), lambda r, g: (fwd(g, r[1]), weight_grad(g, r[0])))
    weight_grad.defvjp(lambda x, dy: (weight_grad(x, dy), (x, dy)),
                       lambda r, c: (input_grad(r[1], c), fwd(r[0], c)))
    return fwd, input_grad, weight_grad


def autodiff_maps(conv):
    """(fwd, input_grad, weight_grad) of a forward map by JAX's VJP."""
    import jax

    def input_grad(dy, w, shape):
        return jax.vjp(lambda x: conv(x, w), jax.numpy.zeros(shape, dy.dtype))[1](dy)[0]

    def weight_grad(x, dy, w):
        return jax.vjp(lambda w_: conv(x, w_), w)[1](dy)[0]

    return conv, input_grad, weight_grad


def time_ms(fn, args, repeats: int, options=None) -> float:
    """Median milliseconds of ``fn(*args)`` jitted with ``options`` (`kulnet_speed.timed`: first call dropped)."""
    import jax

    from benchmarks.kulnet_speed import timed

    f = jax.jit(fn, compiler_options=options)
    return 1e3 * timed(lambda: f(*args), repeats)[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=25, help="input side (output side - 2)")
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--products", action="store_true", help="also time the weight gradient's matrix products")
    args = ap.parse_args(argv)

    from fkp_jax import runtime

    runtime.configure()
    import jax
    import jax.numpy as jnp

    from fkp_jax import winograd

    n, s, c = args.batch, args.size, args.channels
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (n, s, s, c))
    w = 0.1 * jax.random.normal(keys[1], (3, 3, c, c))
    dy = jax.random.normal(keys[2], (n, s - 2, s - 2, c))
    cot = jax.random.normal(keys[3], x.shape)

    ad_fwd, ad_in, ad_w = autodiff_maps(xla_valid)
    tr_fwd, tr_in, tr_w = xla_triple()
    pd_fwd, pd_in, pd_w = xla_triple(xla_padded_valid, xla_input_grad, winograd.conv3x3_valid_w)
    paths = {
        "xla (defaults)": (ad_fwd, lambda g, k: ad_in(g, k, x.shape), lambda a, g: ad_w(a, g, w), None),
        "xla, YNN dot only": (ad_fwd, lambda g, k: ad_in(g, k, x.shape), lambda a, g: ad_w(a, g, w), YNN_DOT_ONLY),
        "xla triple, YNN dot only": (tr_fwd, tr_in, tr_w, YNN_DOT_ONLY),
        "xla triple, padded (Eigen), winograd weight gradient": (pd_fwd, pd_in, pd_w, None),
        "winograd (library default)": (winograd.conv3x3_valid, lambda g, k: winograd.conv3x3_valid_t(g, k, x.shape),
                                       winograd.conv3x3_valid_w, None),
    }
    rows = []
    for name, (fwd, in_grad, w_grad, options) in paths.items():
        def second(g, k, in_grad=in_grad):
            return jax.grad(lambda k_, g_: jnp.vdot(cot, in_grad(g_, k_)), argnums=(0, 1))(k, g)

        ms = [time_ms(fwd, (x, w), args.repeats, options), time_ms(in_grad, (dy, w), args.repeats, options),
              time_ms(w_grad, (x, dy), args.repeats, options), time_ms(second, (dy, w), args.repeats, options)]
        rows.append(f"| {name} | " + " | ".join(f"{m:.1f}" for m in ms) + " |")
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"Body convolution {n} x {s} x {s} x {c} -> {c}, ms (median of {args.repeats}), "
          f"{runtime.cpu_name()}, jax {jax.__version__}\n")
    print("| path | forward | input gradient | weight gradient | second derivative |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    if args.products:
        print("\n" + products_table(n, s, c, args.repeats))
    return 0


def products_table(n: int, s: int, c: int, repeats: int) -> str:
    """Markdown table: the a^2 matrix products of the F(4x4, 3x3) weight gradient (`winograd.conv3x3_valid_w`)
    of a body convolution in the operand layout the library has, the same FLOPs in the forward map's layout,
    a pre-transposed operand, and that transpose."""
    import jax
    import jax.numpy as jnp

    from fkp_jax import runtime

    hi = jax.lax.Precision.HIGHEST
    tiles = n * (-(-(s - 2) // 4)) ** 2
    k = jax.random.split(jax.random.key(1), 3)
    v = jax.random.normal(k[0], (36, tiles, c))
    dm = jax.random.normal(k[1], (36, tiles, c))
    u = jax.random.normal(k[2], (36, c, c))
    vt = jax.block_until_ready(jnp.swapaxes(v, 1, 2) + 0)  # materialised outside the timed function

    def product(spec):
        return lambda a, b: jnp.einsum(spec, a, b, precision=hi)

    cases = [("weight gradient as the library has it: ktc,ktd->kcd", product("ktc,ktd->kcd"), (v, dm)),
             ("same FLOPs in the forward map's layout: ktc,kcd->ktd", product("ktc,kcd->ktd"), (v, u)),
             ("first operand pre-transposed: kct,ktd->kcd", product("kct,ktd->kcd"), (vt, dm)),
             ("the transpose ktc -> kct alone", lambda a: jnp.swapaxes(a, 1, 2), (v,))]
    lines = [f"Weight-gradient products, 36 x ({tiles} tiles x {c}) x {c}, {2 * 36 * tiles * c * c / 1e6:.0f} MFLOP "
             f"each, ms (median of {repeats}), {runtime.cpu_name()}", "", "| product | ms |", "| --- | ---: |"]
    for name, fn, operands in cases:
        lines.append(f"| {name} | {time_ms(fn, operands, repeats):.2f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
