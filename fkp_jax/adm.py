"""OpenAI guided-diffusion's ADM UNet and its noisy-image classifier (DKP_SPEC 8; golden_diffdkp README 2-3), JAX/Flax.

The backbone prior of Diff-DKP: the class-conditional 256x256 ADM (learned sigma: 6 output channels, eps then
the variance interpolation values v) and the encoder classifier with attention pooling used for guidance.

Public API (images NHWC, RGB, in [-1, 1]; ``t`` in ORIGINAL diffusion steps 0..999 as the sampler passes them,
i.e. ``timestep_map[t]``; ``y`` int class labels):

- ``ADMConfig`` / ``ClassifierConfig``: frozen hyper-parameters; defaults = the real 256x256 models
  (``inet256.yml``); ``TINY_ADM`` / ``TINY_CLASSIFIER`` = the golden tiny models (README 2).
- ``UNet(config, dtype)`` / ``Classifier(config)``: thin Flax modules; ``unet_apply``, ``classifier_logits``,
  ``classifier_log_prob``, ``classifier_grad`` (``main.py``'s ``cond_fn``, scale 1): pure functions of params.
- ``unet_params_from_state_dict`` / ``classifier_params_from_state_dict`` / ``params_from_state_dict``: the
  PyTorch state dicts -> our params (float32 NumPy), every key and shape checked (``ConvertError``);
  they accept ``LazyTensor`` values (``torch_state.load_state_dict(path, lazy=True)``) and read one tensor at a
  time. ``layout(config)`` lists (torch key, our path, kind, torch shape) in the file's order.
- ``save_adm`` / ``load_adm``: orbax checkpoints written by ``python -m fkp_jax.convert``.

Conventions that differ from the PyTorch original: activations are NHWC (the original NCHW); attention runs on
(B, T, C) tokens with T = H*W in row-major order (= the original's flattening of (C, H, W) to (C, H*W)); 1x1
Conv1d layers are Dense. Numerics follow the original: GroupNorm(32, eps 1e-5) and the attention softmax in (at
least) float32 and cast back; the sinusoidal embedding in the computation dtype (float32 frequencies in float32).
Attention: LEGACY qkv channel order (q, k, v interleaved per head) in every ``AttentionBlock`` of both networks
(``use_new_attention_order: false``), the NEW order (q | k | v first, then heads) in the classifier's
``AttentionPool2d`` (README 3). ``dtype`` (e.g. ``jnp.bfloat16`` on accelerators, ``jnp.float16`` as the
original's ``convert_to_fp16``) runs only the torso (input / middle / output blocks' convolutions and attention
projections) in half precision; embeddings, GroupNorm statistics, softmax and the final ``out`` stay float32.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

PRECISION = lax.Precision.HIGHEST
GROUPS = 32
GN_EPS = 1e-5


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class ADMConfig:
    """The class-conditional ADM UNet; defaults = ``256x256_diffusion.pt`` (inet256.yml, README 3).
    ``attention_ds``: down-sampling factors with attention (256 // (32, 16, 8)). ``num_head_channels`` fixes
    the head width (heads = ch // it); -1 uses ``num_heads`` heads everywhere."""
    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 256
    out_channels: int = 6  # learn_sigma: eps (3) + variance values (3)
    num_res_blocks: int = 2
    attention_ds: tuple[int, ...] = (8, 16, 32)
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_head_channels: int = 64
    num_heads: int = 4
    num_classes: int | None = 1000
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    new_attention_order: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ADMConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """The noisy-image classifier (guided-diffusion's EncoderUNetModel, attention pooling); defaults =
    ``256x256_classifier.pt`` (``create_classifier`` with inet256.yml: width 128, depth 2, 64 ch/head)."""
    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 1000
    num_res_blocks: int = 2
    attention_ds: tuple[int, ...] = (8, 16, 32)
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_head_channels: int = 64
    num_heads: int = 1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    new_attention_order: bool = False  # of the AttentionBlocks; the pooling always uses the new order

    to_dict = ADMConfig.to_dict

    @classmethod
    def from_dict(cls, d: Mapping) -> "ClassifierConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


REAL_ADM = ADMConfig()
REAL_CLASSIFIER = ClassifierConfig()
# golden_diffdkp README 2 (attention_resolutions "8,4,2" at 64 px = down-sampling factors 8, 16, 32)
TINY_ADM = ADMConfig(image_size=64, model_channels=32, num_res_blocks=1, channel_mult=(1, 1, 2, 2, 2, 2),
                     num_head_channels=16)
TINY_CLASSIFIER = ClassifierConfig(image_size=64, model_channels=32, num_res_blocks=1,
                                   channel_mult=(1, 1, 2, 2, 2, 2), num_head_channels=16)
KNOWN_CONFIGS = {"real_adm": REAL_ADM, "tiny_adm": TINY_ADM,
                 "real_classifier": REAL_CLASSIFIER, "tiny_classifier": TINY_CLASSIFIER}


# ----------------------------------------------------------------------------- architecture plan
# A block is a tuple of layers: ("conv", in, out), ("res", in, out, updown), ("attn", ch, heads). The modules
# and the converter's key layout are both built from this one plan (the original's constructor loops).


def _heads(cfg, ch: int) -> int:
    return ch // cfg.num_head_channels if cfg.num_head_channels != -1 else cfg.num_heads


def plan(cfg) -> dict[str, list[tuple]]:
    """{'input': [...], 'middle': [...], 'output': [...] (UNet only)} blocks of ``cfg``."""
    mc = cfg.model_channels
    ch = mc * cfg.channel_mult[0]
    inputs = [(("conv", cfg.in_channels, ch),)]
    chans, ds = [ch], 1
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            block = [("res", ch, mult * mc, "none")]
            ch = mult * mc
            if ds in cfg.attention_ds:
                block.append(("attn", ch, _heads(cfg, ch)))
            inputs.append(tuple(block))
            chans.append(ch)
        if level != len(cfg.channel_mult) - 1:
            if not cfg.resblock_updown:
                raise NotImplementedError("only resblock_updown=True (the released models) is implemented")
            inputs.append((("res", ch, ch, "down"),))
            chans.append(ch)
            ds *= 2
    middle = (("res", ch, ch, "none"), ("attn", ch, _heads(cfg, ch)), ("res", ch, ch, "none"))
    out = {"input": inputs, "middle": [middle], "ds": ds, "ch": ch}
    if isinstance(cfg, ADMConfig):
        outputs = []
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                block = [("res", ch + chans.pop(), mc * mult, "none")]
                ch = mc * mult
                if ds in cfg.attention_ds:
                    block.append(("attn", ch, _heads(cfg, ch)))
                if level and i == cfg.num_res_blocks:
                    block.append(("res", ch, ch, "up"))
                    ds //= 2
                outputs.append(tuple(block))
        out["output"] = outputs
    return out


# ----------------------------------------------------------------------------- pure pieces


def timestep_embedding(t, dim: int, dtype=jnp.float32, max_period: float = 10000.0):
    """Sinusoidal embedding [cos(t f_k), sin(t f_k)], f_k = exp(-ln(max_period) k / (dim/2)), k < dim/2 (cos half
    first; zero-padded for odd dim), computed in ``dtype`` as the original (float32 there)."""
    half = dim // 2
    freqs = jnp.exp(jnp.asarray(-math.log(max_period), dtype) * jnp.arange(half, dtype=dtype) / half)
    args = jnp.asarray(t).astype(dtype)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def group_norm(x, scale, bias, groups: int = GROUPS, eps: float = GN_EPS):
    """GroupNorm over the last (channel) axis of (B, ..., C), statistics and affine in at least float32
    (the original's GroupNorm32), result in x's dtype."""
    ct = jnp.promote_types(x.dtype, jnp.float32)
    shape = x.shape
    h = x.astype(ct).reshape(shape[0], -1, groups, shape[-1] // groups)
    mean = h.mean(axis=(1, 3), keepdims=True)
    var = jnp.square(h - mean).mean(axis=(1, 3), keepdims=True)
    h = ((h - mean) * lax.rsqrt(var + eps)).reshape(shape)
    return (h * scale.astype(ct) + bias.astype(ct)).astype(x.dtype)


def qkv_attention(qkv, heads: int, legacy_order: bool):
    """Multi-head self-attention of (B, T, 3C) projections -> (B, T, C) (output channel = head * c + j).
    Legacy order: channel = head * 3c + {q, k, v} * c + j; new order: channel = {q, k, v} * C + head * c + j.
    Weights softmax(q k^T / sqrt(c)) over keys, in at least float32."""
    b, t, c3 = qkv.shape
    c = c3 // (3 * heads)
    split = qkv.reshape(b, t, heads, 3, c) if legacy_order else qkv.reshape(b, t, 3, heads, c).swapaxes(2, 3)
    q, k, v = (split[:, :, :, i] for i in range(3))  # (B, T, heads, c)
    scale = 1 / math.sqrt(math.sqrt(c))
    w = jnp.einsum("bthc,bshc->bhts", q * scale, k * scale, precision=PRECISION)
    w = jax.nn.softmax(w.astype(jnp.promote_types(w.dtype, jnp.float32)), axis=-1).astype(w.dtype)
    return jnp.einsum("bhts,bshc->bthc", w, v, precision=PRECISION).reshape(b, t, heads * c)


def resample(x, updown: str):
    """NHWC 2x2 average pooling ("down") or nearest x2 up-sampling ("up")."""
    b, h, w, c = x.shape
    if updown == "down":
        return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


# ----------------------------------------------------------------------------- Flax modules (NHWC)


class GroupNorm32(nn.Module):
    """``group_norm`` with parameters ``scale`` / ``bias`` (the original's GroupNorm weight / bias)."""

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        return group_norm(x, self.param("scale", nn.initializers.ones, (c,), jnp.float32),
                          self.param("bias", nn.initializers.zeros, (c,), jnp.float32))


def _conv(features: int, k: int, name: str, dtype=None) -> nn.Conv:
    return nn.Conv(features, (k, k), padding=((k // 2, k // 2),) * 2, dtype=dtype, precision=PRECISION, name=name)


def _dense(features: int, name: str, dtype=None) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, precision=PRECISION, name=name)


class ResBlock(nn.Module):
    """ADM residual block: GN-SiLU-(resample)-conv3, emb -> (scale, shift) on the second GN (or added before
    it without scale-shift), SiLU-conv3; skip = identity or 1x1 conv (of the resampled input)."""
    out_channels: int
    updown: str = "none"
    scale_shift: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, x, emb):
        o = self.out_channels
        h = nn.silu(GroupNorm32(name="in_layers_0")(x))
        if self.updown != "none":
            h, x = resample(h, self.updown), resample(x, self.updown)
        h = _conv(o, 3, "in_layers_2", self.dtype)(h)
        e = _dense(2 * o if self.scale_shift else o, "emb_layers_1")(nn.silu(emb)).astype(h.dtype)[:, None, None]
        if self.scale_shift:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = GroupNorm32(name="out_layers_0")(h) * (1 + scale) + shift
        else:
            h = GroupNorm32(name="out_layers_0")(h + e)
        h = _conv(o, 3, "out_layers_3", self.dtype)(nn.silu(h))
        skip = x if x.shape[-1] == o else _conv(o, 1, "skip_connection", self.dtype)(x)
        return skip + h


class AttentionBlock(nn.Module):
    """Residual self-attention over the H*W positions: x + proj_out(attention(qkv(GN(x))))."""
    heads: int
    legacy_order: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        t = x.reshape(b, hh * ww, c)
        qkv = _dense(3 * c, "qkv", self.dtype)(GroupNorm32(name="norm")(t))
        a = _dense(c, "proj_out", self.dtype)(qkv_attention(qkv, self.heads, self.legacy_order))
        return (t + a).reshape(b, hh, ww, c)


class TimestepBlock(nn.Module):
    """One of ``input_blocks.{i}`` / ``middle_block`` / ``output_blocks.{j}``: its layers named "0", "1", ..."""
    layers: tuple
    scale_shift: bool = True
    legacy_order: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, h, emb):
        for i, layer in enumerate(self.layers):
            if layer[0] == "conv":
                h = _conv(layer[2], 3, str(i), self.dtype)(h)
            elif layer[0] == "res":
                h = ResBlock(layer[2], layer[3], self.scale_shift, self.dtype, name=str(i))(h, emb)
            else:
                h = AttentionBlock(layer[2], self.legacy_order, self.dtype, name=str(i))(h)
        return h


def _time_embed(cfg, t, dtype):
    emb = timestep_embedding(t, cfg.model_channels, dtype)
    emb = _dense(4 * cfg.model_channels, "time_embed_0")(emb)
    return _dense(4 * cfg.model_channels, "time_embed_2")(nn.silu(emb))


class UNet(nn.Module):
    """ADM UNet: (x (B, H, W, 3) NHWC in [-1, 1], t (B,) in 0..999, y (B,) labels) -> (B, H, W, 6): eps, v.
    ``dtype``: torso computation dtype (None: that of x)."""
    config: ADMConfig = REAL_ADM
    dtype: Any = None

    @nn.compact
    def __call__(self, x, t, y=None):
        cfg, p = self.config, plan(self.config)
        emb = _time_embed(cfg, t, x.dtype)
        if cfg.num_classes is not None:
            emb = emb + nn.Embed(cfg.num_classes, 4 * cfg.model_channels, name="label_emb")(y)
        kw = dict(scale_shift=cfg.use_scale_shift_norm, legacy_order=not cfg.new_attention_order, dtype=self.dtype)
        h, hs = x.astype(self.dtype or x.dtype), []
        for i, layers in enumerate(p["input"]):
            h = TimestepBlock(layers, name=f"input_blocks_{i}", **kw)(h, emb)
            hs.append(h)
        h = TimestepBlock(p["middle"][0], name="middle_block", **kw)(h, emb)
        for j, layers in enumerate(p["output"]):
            h = TimestepBlock(layers, name=f"output_blocks_{j}", **kw)(jnp.concatenate([h, hs.pop()], -1), emb)
        h = nn.silu(GroupNorm32(name="out_0")(h.astype(x.dtype)))
        return _conv(cfg.out_channels, 3, "out_2")(h)


class AttentionPool2d(nn.Module):
    """Classifier head: tokens = [spatial mean, H*W positions] + positional embedding (stored (C, T+1) as the
    original), NEW-order multi-head attention, c_proj, token 0 -> (B, out)."""
    heads: int
    out_features: int

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        t = x.reshape(b, hh * ww, c)
        t = jnp.concatenate([t.mean(axis=1, keepdims=True), t], axis=1)
        pos = self.param("positional_embedding", nn.initializers.normal(c ** -0.5), (c, hh * ww + 1), jnp.float32)
        t = t + pos.T.astype(t.dtype)
        a = qkv_attention(_dense(3 * c, "qkv_proj")(t), self.heads, legacy_order=False)
        return _dense(self.out_features, "c_proj")(a)[:, 0]


class Classifier(nn.Module):
    """Noisy-image classifier: (x (B, H, W, 3) in [-1, 1], t (B,) in 0..999) -> logits (B, 1000).
    H = W = ``config.image_size`` (the pooling's positional embedding fixes the size)."""
    config: ClassifierConfig = REAL_CLASSIFIER
    dtype: Any = None

    @nn.compact
    def __call__(self, x, t):
        cfg, p = self.config, plan(self.config)
        emb = _time_embed(cfg, t, x.dtype)
        kw = dict(scale_shift=cfg.use_scale_shift_norm, legacy_order=not cfg.new_attention_order, dtype=self.dtype)
        h = x.astype(self.dtype or x.dtype)
        for i, layers in enumerate(p["input"]):
            h = TimestepBlock(layers, name=f"input_blocks_{i}", **kw)(h, emb)
        h = TimestepBlock(p["middle"][0], name="middle_block", **kw)(h, emb)
        h = nn.silu(GroupNorm32(name="out_0")(h.astype(x.dtype)))
        return AttentionPool2d(p["ch"] // cfg.num_head_channels, cfg.out_channels, name="out_2")(h)


# ----------------------------------------------------------------------------- pure entry points


@partial(jax.jit, static_argnames=("config", "dtype"))
def unet_apply(params, x, t, y, config: ADMConfig = REAL_ADM, dtype=None):
    """ADM forward, pure and jitted: NHWC x in [-1, 1], t (B,) original steps, y (B,) labels -> (B, H, W, 6).
    Runs in x's dtype (float64 under ``jax.enable_x64`` with float64 params); ``dtype`` = torso dtype."""
    return UNet(config, dtype).apply({"params": params}, x, t, y)


@partial(jax.jit, static_argnames=("config",))
def classifier_logits(params, x, t, config: ClassifierConfig = REAL_CLASSIFIER):
    """Classifier logits (B, out) of NHWC x in [-1, 1] at original steps t (B,)."""
    return Classifier(config).apply({"params": params}, x, t)


def classifier_log_prob(params, x, t, y, config: ClassifierConfig = REAL_CLASSIFIER):
    """log softmax(logits)[b, y_b] (B,)."""
    logp = jax.nn.log_softmax(Classifier(config).apply({"params": params}, x, t), axis=-1)
    return jnp.take_along_axis(logp, jnp.asarray(y)[:, None], axis=-1)[:, 0]


@partial(jax.jit, static_argnames=("config",))
def classifier_grad(params, x, t, y, scale=1.0, config: ClassifierConfig = REAL_CLASSIFIER):
    """Guidance gradient d sum_b log p(y_b | x_b, t_b) / dx * scale (Diff-DKP ``main.py``'s ``cond_fn``)."""
    return jax.grad(lambda x_: classifier_log_prob(params, x_, t, y, config).sum())(x) * scale


def init_shapes(config) -> dict:
    """Parameter shapes of ``config`` (jax.ShapeDtypeStruct pytree) without materialising any parameter."""
    s = min(config.image_size, 2 ** len(config.channel_mult))
    if isinstance(config, ClassifierConfig):
        s = config.image_size  # the positional embedding depends on it
        module, args = Classifier(config), (jnp.zeros((1, s, s, config.in_channels)), jnp.zeros((1,), jnp.int32))
    else:
        module = UNet(config)
        args = (jnp.zeros((1, s, s, config.in_channels)), jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *args))["params"]


# ----------------------------------------------------------------------------- converter (README 3)
# kinds: "conv" (O, I, kh, kw) -> (kh, kw, I, O); "conv1d" (O, I, 1) -> (I, O); "linear" (O, I) -> (I, O);
# "copy": GroupNorm weight -> scale, biases, label embedding, positional embedding, as they are.

_TO_OURS = {"conv": lambda a: a.transpose(2, 3, 1, 0), "conv1d": lambda a: a[:, :, 0].T,
            "linear": lambda a: a.T, "copy": lambda a: a}


def _layout_blocks(out, cfg, blocks, key, path):
    E = 4 * cfg.model_channels

    def add(k, p, kind, shape, bias=True, scale=False):
        out.append((f"{k}.weight", p + ("scale" if scale else "kernel",), kind, shape))
        if bias:
            out.append((f"{k}.bias", p + ("bias",), "copy", shape[:1]))

    for i, layers in enumerate(blocks):
        bkey, bpath = (f"{key}.{i}", (f"{key}_{i}",)) if key != "middle_block" else (key, (key,))
        for j, layer in enumerate(layers):
            k, p = f"{bkey}.{j}", bpath + (str(j),)
            if layer[0] == "conv":
                add(k, p, "conv", (layer[2], layer[1], 3, 3))
            elif layer[0] == "res":
                c, o = layer[1], layer[2]
                add(f"{k}.in_layers.0", p + ("in_layers_0",), "copy", (c,), scale=True)
                add(f"{k}.in_layers.2", p + ("in_layers_2",), "conv", (o, c, 3, 3))
                add(f"{k}.emb_layers.1", p + ("emb_layers_1",), "linear", (2 * o if cfg.use_scale_shift_norm else o, E))
                add(f"{k}.out_layers.0", p + ("out_layers_0",), "copy", (o,), scale=True)
                add(f"{k}.out_layers.3", p + ("out_layers_3",), "conv", (o, o, 3, 3))
                if c != o:
                    add(f"{k}.skip_connection", p + ("skip_connection",), "conv", (o, c, 1, 1))
            else:
                c = layer[1]
                add(f"{k}.norm", p + ("norm",), "copy", (c,), scale=True)
                add(f"{k}.qkv", p + ("qkv",), "conv1d", (3 * c, c, 1))
                add(f"{k}.proj_out", p + ("proj_out",), "conv1d", (c, c, 1))


def layout(cfg) -> list[tuple[str, tuple[str, ...], str, tuple[int, ...]]]:
    """(torch key, our params path, kind, torch shape) of every tensor of ``cfg``'s state dict, in file order."""
    mc, E = cfg.model_channels, 4 * cfg.model_channels
    out = [("time_embed.0.weight", ("time_embed_0", "kernel"), "linear", (E, mc)),
           ("time_embed.0.bias", ("time_embed_0", "bias"), "copy", (E,)),
           ("time_embed.2.weight", ("time_embed_2", "kernel"), "linear", (E, E)),
           ("time_embed.2.bias", ("time_embed_2", "bias"), "copy", (E,))]
    p = plan(cfg)
    if isinstance(cfg, ADMConfig) and cfg.num_classes is not None:
        out.append(("label_emb.weight", ("label_emb", "embedding"), "copy", (cfg.num_classes, E)))
    _layout_blocks(out, cfg, p["input"], "input_blocks", ())
    _layout_blocks(out, cfg, p["middle"], "middle_block", ())
    ch = p["ch"]
    if isinstance(cfg, ADMConfig):
        _layout_blocks(out, cfg, p["output"], "output_blocks", ())
        c0 = mc * cfg.channel_mult[0]
        out += [("out.0.weight", ("out_0", "scale"), "copy", (c0,)), ("out.0.bias", ("out_0", "bias"), "copy", (c0,)),
                ("out.2.weight", ("out_2", "kernel"), "conv", (cfg.out_channels, c0, 3, 3)),
                ("out.2.bias", ("out_2", "bias"), "copy", (cfg.out_channels,))]
    else:
        n_tok = (cfg.image_size // p["ds"]) ** 2 + 1
        out += [("out.0.weight", ("out_0", "scale"), "copy", (ch,)), ("out.0.bias", ("out_0", "bias"), "copy", (ch,)),
                ("out.2.positional_embedding", ("out_2", "positional_embedding"), "copy", (ch, n_tok)),
                ("out.2.qkv_proj.weight", ("out_2", "qkv_proj", "kernel"), "conv1d", (3 * ch, ch, 1)),
                ("out.2.qkv_proj.bias", ("out_2", "qkv_proj", "bias"), "copy", (3 * ch,)),
                ("out.2.c_proj.weight", ("out_2", "c_proj", "kernel"), "conv1d", (cfg.out_channels, ch, 1)),
                ("out.2.c_proj.bias", ("out_2", "c_proj", "bias"), "copy", (cfg.out_channels,))]
    return out


def _convert_error(msg: str) -> ValueError:
    from fkp_jax.convert import ConvertError  # convert imports this module lazily: no cycle

    return ConvertError(msg)


def is_adm_state_dict(sd: Mapping[str, Any]) -> bool:
    """True if the keys look like a guided-diffusion UNet or classifier (right or not)."""
    return isinstance(sd, Mapping) and "time_embed.0.weight" in sd and any(
        str(k).startswith("input_blocks.") for k in sd)


def is_classifier_state_dict(sd: Mapping[str, Any]) -> bool:
    return is_adm_state_dict(sd) and "out.2.c_proj.weight" in sd


def _shape(v) -> tuple:
    return tuple(getattr(v, "shape", np.shape(v)))


def _matches(sd, cfg) -> bool:
    lay = layout(cfg)
    return len(lay) == len(sd) and all(k in sd and _shape(sd[k]) == s for k, _, _, s in lay)


def detect_config(sd: Mapping[str, Any], where: str = "state dict"):
    """The known config (real / tiny, UNet / classifier) whose every key and shape ``sd`` has."""
    if not is_adm_state_dict(sd):
        raise _convert_error(f"{where}: not a guided-diffusion ADM state dict (no 'time_embed.0.weight' / "
                             "'input_blocks.*' keys)")
    kind = "classifier" if is_classifier_state_dict(sd) else "adm"
    for name, cfg in KNOWN_CONFIGS.items():
        if name.endswith(kind) and _matches(sd, cfg):
            return cfg
    return REAL_CLASSIFIER if kind == "classifier" else REAL_ADM  # the check then names the first mismatch


def params_from_state_dict(sd: Mapping[str, Any], config=None, where: str = "state dict") -> dict:
    """A UNet or classifier state dict (name -> array or ``LazyTensor``) -> our params, float32 NumPy.
    ``config`` None: one of ``KNOWN_CONFIGS`` recognised by keys and shapes. Every key and shape is checked
    before any tensor data is read; then tensors are read, checked finite and converted one at a time."""
    if not isinstance(sd, Mapping) or not is_adm_state_dict(sd):
        raise _convert_error(f"{where}: not a guided-diffusion ADM state dict (no 'time_embed.0.weight' / "
                             "'input_blocks.*' keys)")
    config = detect_config(sd, where) if config is None else config
    what = "classifier" if isinstance(config, ClassifierConfig) else "ADM UNet"
    lay = layout(config)
    expected = {k for k, _, _, _ in lay}
    missing = [k for k, _, _, _ in lay if k not in sd]
    extra = [k for k in sd if k not in expected]
    if missing or extra:
        raise _convert_error(f"{where}: not the expected {what} state dict (missing {missing[:3]}, unexpected "
                             f"{extra[:3]}{' ...' if len(missing) > 3 or len(extra) > 3 else ''})")
    for key, _, _, shape in lay:
        if _shape(sd[key]) != shape:
            raise _convert_error(f"{where}: {key} has shape {_shape(sd[key])}, expected {shape} ({what})")
        if not np.issubdtype(np.dtype(getattr(sd[key], "dtype", np.float32)), np.floating):
            raise _convert_error(f"{where}: {key} is not a floating-point tensor")
    params: dict = {}
    for key, path, kind, _ in lay:
        a = np.asarray(sd[key])  # a LazyTensor is read here, one at a time
        if not np.isfinite(a).all():
            raise _convert_error(f"{where}: {key} has non-finite values")
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = np.ascontiguousarray(_TO_OURS[kind](a), dtype=np.float32)
        del a
    return params


def unet_params_from_state_dict(sd, config: ADMConfig | None = None, where: str = "state dict") -> dict:
    """``params_from_state_dict`` insisting on a UNet (e.g. ``256x256_diffusion.pt``)."""
    if isinstance(sd, Mapping) and is_classifier_state_dict(sd):
        raise _convert_error(f"{where}: a classifier state dict, not an ADM UNet")
    return params_from_state_dict(sd, config, where)


def classifier_params_from_state_dict(sd, config: ClassifierConfig | None = None, where: str = "state dict") -> dict:
    """``params_from_state_dict`` insisting on a classifier (e.g. ``256x256_classifier.pt``)."""
    if isinstance(sd, Mapping) and is_adm_state_dict(sd) and not is_classifier_state_dict(sd):
        raise _convert_error(f"{where}: an ADM UNet state dict, not a classifier")
    return params_from_state_dict(sd, config, where)


def model_name(config) -> str:
    return "adm_classifier" if isinstance(config, ClassifierConfig) else "adm_unet"


def count_params(params) -> int:
    return int(sum(np.size(a) for a in jax.tree.leaves(params)))


def save_adm(params, config, dest, overwrite: bool = False) -> Path:
    """Write params as an orbax checkpoint (meta {"model": "adm_unet" | "adm_classifier", "config": ...})."""
    from fkp_jax import checkpoint

    return checkpoint.save(dest, params, {"model": model_name(config), "config": config.to_dict()},
                           overwrite=overwrite)


def load_adm(path, config=None) -> tuple[dict, Any]:
    """(params, config) from a converted orbax folder or straight from a PyTorch ``.pt`` (read lazily)."""
    path = Path(path)
    if path.is_dir():
        from fkp_jax import checkpoint

        params, meta = checkpoint.restore(path)
        if meta.get("model") not in ("adm_unet", "adm_classifier"):
            raise _convert_error(f"{path}: not an ADM checkpoint (model {meta.get('model')!r})")
        cls = ClassifierConfig if meta["model"] == "adm_classifier" else ADMConfig
        return params, cls.from_dict(meta["config"])
    from fkp_jax.torch_state import load_state_dict

    sd = load_state_dict(path, lazy=True)
    config = detect_config(sd, str(path)) if config is None else config
    return params_from_state_dict(sd, config, str(path)), config
