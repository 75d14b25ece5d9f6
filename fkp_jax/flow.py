"""The FKP kernel prior: a RealNVP-style normalising flow over flattened kernels (spec section 4).

Conventions: flow-space vectors are (..., D) with D = k^2, a kernel (k, k) flattened row-major;
kernels are (..., k, k). "forward" is the spec's density direction x -> u (net.0 ... net.9),
"inverse" the generative direction u -> x. In distrax terms the per-layer bijectors below use the
spec's convention (their ``forward`` is x -> u); the flow handed to ``distrax.Transformed`` is the
``distrax.Inverse`` of their chain, so that its ``forward`` samples and its ``log_prob`` is the
density of x.

Parameters are plain dicts (Flax naming, Dense kernels (in, out) = PyTorch weight transposed):

    params      = {'net0': {'s_net': {'0': {'kernel', 'bias'}, '2': ..., '4': ...}, 't_net': ...},
                   'net1': {'log_gamma', 'beta'}, 'net2': ..., ..., 'net9': ...}
    batch_stats = {'net1': {'running_mean', 'running_var'}, 'net3': ..., ..., 'net9': ...}

Couplings sit at even module indices, batch norms at odd ones, as in the original ``net.i``. The
binary masks are not stored: block j uses b_i = i mod 2 for even j and 1 - (i mod 2) for odd j.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import distrax
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

SCALES = (2, 3, 4)
BN_EPS = 1e-5
BN_RETENTION = 0.9  # running <- 0.9 running + 0.1 batch (spec 4.3)
DEQUANT_SCALE = 720.0  # dequantisation noise U[0, 1) / 720 (spec 5)
WEIGHTS_ENV = "FKP_JAX_WEIGHTS"

# (peak of the sharpest training kernel) + 0.01, as the float32 checkpoint buffers (spec 4.6).
_NORMALIZATION = {2: float(np.float32(0.2335)), 3: float(np.float32(0.31311)),
                  4: float(np.float32(0.16908))}


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """Shape and pre-processing constants of one FKP prior; defaults are the original's (spec 4)."""

    sf: int
    n_blocks: int = 5
    alpha: float = float(np.float32(1e-6))
    normalization: float | None = None  # None -> the value of spec 4.6 for sf

    def __post_init__(self):
        if self.sf not in SCALES:
            raise ValueError(f"unsupported scale factor {self.sf!r}; FKP exists for {SCALES}")
        if self.normalization is None:
            object.__setattr__(self, "normalization", _NORMALIZATION[self.sf])

    @property
    def k(self) -> int:
        return min(4 * self.sf + 3, 21)

    @property
    def D(self) -> int:  # noqa: N802 (the spec's name)
        return self.k * self.k

    @property
    def hidden(self) -> int:
        return min(5 * self.sf + 5, 25)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FlowConfig":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def mask(config: FlowConfig, block: int) -> jnp.ndarray:
    """Binary mask of coupling block ``block`` (1 = passes through and conditions), spec 4.1."""
    b = np.arange(config.D) % 2
    return jnp.asarray(b if block % 2 == 0 else 1 - b, jnp.float32)


# --------------------------------------------------------------------------------------------
# Bijectors (spec convention: forward = density direction x -> u)


def _mlp(p: dict, x, act):
    h = act(x @ p["0"]["kernel"] + p["0"]["bias"])
    h = act(h @ p["2"]["kernel"] + p["2"]["bias"])
    return h @ p["4"]["kernel"] + p["4"]["bias"]


class Coupling(distrax.Bijector):
    """Masked affine coupling (spec 4.2); the s-net output is the log-scale, used directly."""

    def __init__(self, params: dict, b: jnp.ndarray):
        super().__init__(event_ndims_in=1)
        self.params, self.b = params, b

    def _scale_shift(self, y):
        m = y * self.b
        return m, _mlp(self.params["s_net"], m, jnp.tanh), _mlp(self.params["t_net"], m, jax.nn.relu)

    def forward_and_log_det(self, x):
        m, log_s, t = self._scale_shift(x)
        u = m + (1 - self.b) * (x - t) * jnp.exp(-log_s)
        return u, -jnp.sum((1 - self.b) * log_s, axis=-1)

    def inverse_and_log_det(self, u):
        m, log_s, t = self._scale_shift(u)
        x = m + (1 - self.b) * (u * jnp.exp(log_s) + t)
        return x, jnp.sum((1 - self.b) * log_s, axis=-1)


class BatchNorm(distrax.Bijector):
    """Flow batch norm with given statistics (spec 4.3): y = exp(log_gamma)(x - mean)/sqrt(var + eps) + beta."""

    def __init__(self, params: dict, mean, var):
        super().__init__(event_ndims_in=1, is_constant_jacobian=True)
        self.params, self.mean, self.var = params, mean, var

    def _log_scale(self):
        return self.params["log_gamma"] - 0.5 * jnp.log(self.var + BN_EPS)

    def forward_and_log_det(self, x):
        log_scale = self._log_scale()
        y = (x - self.mean) * jnp.exp(log_scale) + self.params["beta"]
        return y, jnp.broadcast_to(jnp.sum(log_scale), x.shape[:-1])

    def inverse_and_log_det(self, y):
        log_scale = self._log_scale()
        x = (y - self.params["beta"]) * jnp.exp(-log_scale) + self.mean
        return x, jnp.broadcast_to(-jnp.sum(log_scale), y.shape[:-1])


def _names(config: FlowConfig):
    """Module names in forward order with their kind: ('net0', 'coupling', 0), ('net1', 'bn', 0), ..."""
    for j in range(config.n_blocks):
        yield f"net{2 * j}", "coupling", j
        yield f"net{2 * j + 1}", "bn", j


# --------------------------------------------------------------------------------------------
# Parameters


def _torch_linear(key, fan_in: int, fan_out: int) -> dict:
    """PyTorch's default Linear init: weight and bias uniform in +-1/sqrt(fan_in)."""
    kw, kb = jax.random.split(key)
    bound = 1.0 / np.sqrt(fan_in)
    return {"kernel": jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound)}


def init_params(key, config: FlowConfig) -> dict:
    """Fresh variables {'params', 'batch_stats'} for training from scratch (spec 4.7).

    Matches the original's quirk: the t-net is a deep copy of the s-net, so both start with
    IDENTICAL weights (only their activations differ). BN: log_gamma 0, beta 0, running 0 / 1.
    """
    D, H = config.D, config.hidden
    params, stats = {}, {}
    keys = jax.random.split(key, config.n_blocks)
    for name, kind, j in _names(config):
        if kind == "coupling":
            k0, k2, k4 = jax.random.split(keys[j], 3)
            s_net = {"0": _torch_linear(k0, D, H), "2": _torch_linear(k2, H, H),
                     "4": _torch_linear(k4, H, D)}
            params[name] = {"s_net": s_net, "t_net": jax.tree.map(jnp.copy, s_net)}
        else:
            params[name] = {"log_gamma": jnp.zeros(D), "beta": jnp.zeros(D)}
            stats[name] = {"running_mean": jnp.zeros(D), "running_var": jnp.ones(D)}
    return {"params": params, "batch_stats": stats}


# --------------------------------------------------------------------------------------------
# Kernel <-> flow space


def postprocess(config: FlowConfig, x):
    """Flow space (..., D) -> kernels (..., k, k): norm (sigmoid(x) - alpha)/(1 - 2 alpha), spec 4.5.

    Like the original, NOT renormalised to unit sum and not clipped.
    """
    a, k = config.alpha, config.k
    kern = config.normalization * (jax.nn.sigmoid(x) - a) / (1 - 2 * a)
    return kern.reshape(x.shape[:-1] + (k, k))


def preprocess(config: FlowConfig, kernels, key=None):
    """Kernels (..., k, k) -> flow space (..., D), the training pre-processing (spec 5).

    Clamp at 0, divide by normalization, [with a key: add U[0,1)/720 dequantisation noise per
    pixel, as the original training does], logit(alpha + (1 - 2 alpha) v).
    """
    a = config.alpha
    v = jnp.maximum(kernels, 0.0) / config.normalization
    v = v.reshape(v.shape[:-2] + (config.D,))
    if key is not None:
        v = v + jax.random.uniform(key, v.shape, v.dtype) / DEQUANT_SCALE
    p = a + (1 - 2 * a) * v
    return jnp.log(p) - jnp.log1p(-p)


# --------------------------------------------------------------------------------------------
# The prior


@struct.dataclass
class FlowPrior:
    """An FKP prior (parameters + running statistics + static config); a JAX pytree, jit-friendly."""

    params: dict
    batch_stats: dict
    config: FlowConfig = struct.field(pytree_node=False)

    @classmethod
    def from_variables(cls, variables: dict, config: FlowConfig) -> "FlowPrior":
        return cls(params=variables["params"], batch_stats=variables["batch_stats"], config=config)

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}

    # -- distrax objects (eval-mode batch norm) ---------------------------------------------

    def layers(self) -> list[distrax.Bijector]:
        """The 10 modules net.0 ... net.9 as bijectors in forward (x -> u) order, eval-mode BN."""
        out = []
        for name, kind, j in _names(self.config):
            if kind == "coupling":
                out.append(Coupling(self.params[name], mask(self.config, j)))
            else:
                s = self.batch_stats[name]
                out.append(BatchNorm(self.params[name], s["running_mean"], s["running_var"]))
        return out

    def base(self) -> distrax.Distribution:
        D = self.config.D
        return distrax.MultivariateNormalDiag(jnp.zeros(D), jnp.ones(D))

    def distribution(self) -> distrax.Transformed:
        """Density over flow space x: base N(0, I) pushed through u -> x (eval-mode BN).

        distrax.Chain applies its list in reverse, so Chain(reversed(layers)) runs net.0 first,
        i.e. it is the x -> u map; its Inverse is the generative u -> x map Transformed wants.
        """
        return distrax.Transformed(self.base(), distrax.Inverse(distrax.Chain(self.layers()[::-1])))

    # -- flow space ------------------------------------------------------------------------

    def inverse(self, z):
        """Latent z (..., D) -> (x (..., D), log|det dx/dz|), modules net.9^-1 ... net.0^-1, eval BN."""
        return distrax.Chain(self.layers()[::-1]).inverse_and_log_det(z)

    def forward(self, x, train: bool = False):
        """x (..., D) -> (u, log|det du/dx|, new_batch_stats) (spec 4.2-4.4).

        train=True: every BN uses the batch mean and UNBIASED batch variance over the leading
        axis of x (shape (N, D)) and returns running stats updated as 0.9 running + 0.1 batch;
        train=False: running stats, returned unchanged.
        """
        if not train:
            u, logdet = distrax.Chain(self.layers()[::-1]).forward_and_log_det(x)
            return u, logdet, self.batch_stats
        new_stats, logdet = {}, jnp.zeros(x.shape[:-1], x.dtype)
        for name, kind, j in _names(self.config):
            if kind == "coupling":
                layer = Coupling(self.params[name], mask(self.config, j))
            else:
                mean, var = jnp.mean(x, axis=0), jnp.var(x, axis=0, ddof=1)
                old = self.batch_stats[name]
                new_stats[name] = {
                    "running_mean": BN_RETENTION * old["running_mean"] + (1 - BN_RETENTION) * mean,
                    "running_var": BN_RETENTION * old["running_var"] + (1 - BN_RETENTION) * var}
                layer = BatchNorm(self.params[name], mean, var)
            x, ld = layer.forward_and_log_det(x)
            logdet = logdet + ld
        return x, logdet, new_stats

    def log_prob_x(self, x, train: bool = False):
        """log p(x) of flow-space vectors (..., D) (spec 4.4); train=True uses batch statistics."""
        if not train:
            return self.distribution().log_prob(x)
        u, logdet, _ = self.forward(x, train=True)
        return self.base().log_prob(u) + logdet

    # -- kernel space ----------------------------------------------------------------------

    def postprocess(self, x):
        """Flow space (..., D) -> kernels (..., k, k); see :func:`postprocess`."""
        return postprocess(self.config, x)

    def preprocess(self, kernels, key=None):
        """Kernels (..., k, k) -> flow space (..., D); see :func:`preprocess`."""
        return preprocess(self.config, kernels, key)

    def kernel(self, z):
        """Latent z (..., D) -> kernels (..., k, k) in eval mode (inverse + post-processing)."""
        return self.postprocess(self.inverse(z)[0])

    def log_prob(self, kernels):
        """log p of kernels (..., k, k): pre-processing WITHOUT dequantisation noise, eval-mode BN."""
        return self.log_prob_x(self.preprocess(kernels))

    def sample(self, key, n: int):
        """n kernels (n, k, k) from z ~ N(0, I) (eval mode)."""
        return self.kernel(jax.random.normal(key, (n, self.config.D)))


# --------------------------------------------------------------------------------------------
# Shipped weights


def weights_dir() -> Path:
    """Root of the shipped weights: $FKP_JAX_WEIGHTS if set, else the repository's weights/."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1] / "weights"


def load_prior(sf_or_path: int | str | os.PathLike) -> FlowPrior:
    """Load a prior: an int sf -> our shipped weights_dir()/fkp_x{sf}; a path -> an orbax checkpoint written
    by fkp_jax.checkpoint (``python -m fkp_jax.convert``, ``experiments.train_fkp``) or an official
    ``FKP_x{2,3,4}.pt`` (read by ``fkp_jax.convert.prior_from_torch``, no pickle code run). One-line
    FileNotFoundError / ValueError for a missing path or a checkpoint of another model."""
    from fkp_jax import checkpoint

    if isinstance(sf_or_path, (int, np.integer)) and not isinstance(sf_or_path, bool):
        if sf_or_path not in SCALES:
            raise ValueError(f"unsupported scale factor {sf_or_path}; FKP exists for {SCALES}")
        path = weights_dir() / f"fkp_x{sf_or_path}"
    else:
        path = Path(sf_or_path)
    if path.is_file() and path.suffix in (".pt", ".pth"):
        from fkp_jax.convert import prior_from_torch

        return prior_from_torch(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no FKP checkpoint directory (or official .pt) at {path}")
    variables, meta = checkpoint.restore(path)
    if meta.get("model") != "fkp_flow" or "flow_config" not in meta:
        raise ValueError(f"{path}: checkpoint of model {meta.get('model')!r}, not an FKP prior ('fkp_flow')")
    return FlowPrior.from_variables(jax.tree.map(jnp.asarray, variables),
                                    FlowConfig.from_dict(meta["flow_config"]))
