"""PyTorch state dicts of the original code -> fkp_jax pytrees, read without executing pickle code.

One section per model. Every converter checks every key and shape of the state dict and raises
``ConvertError`` (a ``ValueError``) with a one-line message when the file is not what it expects.
Dense kernels are the PyTorch Linear weights transposed ((out, in) -> (in, out)).

Command line (the model is recognised by the state dict's keys; ``--model`` insists on one)::

    python -m fkp_jax.convert SRC.pt DEST_DIR     # e.g. FKP_x4.pt -> orbax checkpoint for load_prior
    python -m fkp_jax.convert usrnet_tiny.pth DEST_DIR   # -> orbax checkpoint for usrnet.load_usrnet
    python -m fkp_jax.convert latest_G.pth DEST_DIR      # KULNet (x2/x3/x4) -> kulnet.load_kulnet
    python -m fkp_jax.convert 256x256_diffusion.pt DEST_DIR   # ADM UNet (or its classifier), streamed -> adm.load_adm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from fkp_jax import checkpoint
from fkp_jax.flow import SCALES, FlowConfig, FlowPrior, mask
from fkp_jax.torch_state import CheckpointError, load_state_dict


class ConvertError(ValueError):
    """A state dict whose keys / shapes / buffers do not match the expected model."""


def load_params(path, model: str, title: str, named_parameters, params_from_state_dict) -> dict:
    """Params of a network kept in its PyTorch layout (USRNet, KULNet) from the official ``.pth`` (read by
    `torch_state`, no pickle code run) or from the orbax folder ``python -m fkp_jax.convert`` wrote (its meta
    ``model`` must be ``model``); ``named_parameters`` / ``params_from_state_dict`` are the model's two-way key
    mapping, which checks every key and shape. FileNotFoundError, ``CheckpointError`` or ``ConvertError``, each
    with a one-line message."""
    path = Path(path)
    if path.is_dir():
        variables, meta = checkpoint.restore(path)
        if meta.get("model") != model:
            raise ConvertError(f"{path}: checkpoint of model {meta.get('model')!r}, not {model!r}")
        try:
            sd = dict(named_parameters(variables))
        except (KeyError, TypeError, ValueError, IndexError):
            raise ConvertError(f"{path}: {model} checkpoint with an unexpected parameter tree") from None
        return params_from_state_dict(sd, where=str(path))
    if not path.exists():
        raise FileNotFoundError(f"no such {title} checkpoint file or folder: {path}")
    return params_from_state_dict(load_state_dict(path), where=str(path))


def params_from_layout(sd, layout, to_ours, title: str, where: str) -> dict:
    """A state dict -> our params tree through a fixed layout: entries (torch key, our param path, kind, PyTorch
    shape), ``to_ours[kind]`` maps a PyTorch array to our layout. Every key and shape is checked and every tensor
    must be finite floating point; anything else raises ``ConvertError`` with a one-line message naming ``title``."""
    expected = {key: shape for key, _, _, shape in layout}
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    if missing or extra:
        raise ConvertError(f"{where}: not a {title} state dict (missing {missing[:3]}, unexpected "
                           f"{extra[:3]}{' ...' if len(missing) > 3 or len(extra) > 3 else ''})")
    params: dict = {}
    for key, path, kind, shape in layout:
        a = np.asarray(sd[key])
        if a.shape != shape:
            raise ConvertError(f"{where}: {key} has shape {a.shape}, expected {shape} (not {title})")
        if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
            raise ConvertError(f"{where}: {key} is not a finite floating-point tensor")
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = jnp.asarray(np.ascontiguousarray(to_ours[kind](a)), jnp.float32)
    return params


def _model_state(path) -> dict:
    """The flat name -> array dict of a checkpoint, unwrapping a top-level {'model_state': ...}."""
    sd = load_state_dict(path)
    if isinstance(sd, dict) and isinstance(sd.get("model_state"), dict):
        sd = sd["model_state"]
    if not isinstance(sd, dict) or not all(isinstance(v, np.ndarray) for v in sd.values()):
        raise ConvertError(f"{path}: not a state dict of tensors")
    return sd


# --------------------------------------------------------------------------------------------
# FKP flow (spec 10.1 / 10.2)


def _fkp_expected_shapes(config: FlowConfig) -> dict[str, tuple]:
    D, H = config.D, config.hidden
    shapes = {"kernel_size": (1,), "alpha": (1,), "normalization": (1,),
              "base_dist_mean": (D,), "base_dist_var": (D,)}
    for j in range(config.n_blocks):
        c, b = f"net.{2 * j}", f"net.{2 * j + 1}"
        shapes[f"{c}.mask"] = (D,)
        for net in ("s_net", "t_net"):
            for i, (o, n) in {0: (H, D), 2: (H, H), 4: (D, H)}.items():
                shapes[f"{c}.{net}.{i}.weight"] = (o, n)
                shapes[f"{c}.{net}.{i}.bias"] = (o,)
        for name in ("log_gamma", "beta", "running_mean", "running_var"):
            shapes[f"{b}.{name}"] = (D,)
    return shapes


def fkp_variables_from_state_dict(sd: dict, where: str = "state dict") -> tuple[dict, FlowConfig]:
    """An FKP ``model_state`` -> (variables {'params', 'batch_stats'}, FlowConfig); checks everything."""
    if "kernel_size" not in sd:
        raise ConvertError(f"{where}: not an FKP state dict (no 'kernel_size' buffer)")
    k = int(round(float(np.asarray(sd["kernel_size"]).reshape(-1)[0])))
    sf = next((s for s in SCALES if min(4 * s + 3, 21) == k), None)
    if sf is None:
        raise ConvertError(f"{where}: kernel_size {k} matches no supported scale {SCALES}")
    exp_shapes = _fkp_expected_shapes(FlowConfig(sf=sf))
    missing = sorted(set(exp_shapes) - set(sd))
    extra = sorted(set(sd) - set(exp_shapes))
    if missing or extra:
        raise ConvertError(f"{where}: not an FKP x{sf} state dict (missing {missing[:3]}, "
                           f"unexpected {extra[:3]}{' ...' if len(missing) + len(extra) > 6 else ''})")
    for key, shape in exp_shapes.items():
        if tuple(sd[key].shape) != shape:
            raise ConvertError(f"{where}: {key} has shape {tuple(sd[key].shape)}, expected {shape}")
    config = FlowConfig(sf=sf, alpha=float(np.float32(sd["alpha"][0])),
                        normalization=float(np.float32(sd["normalization"][0])))
    if not (np.all(sd["base_dist_mean"] == 0) and np.all(sd["base_dist_var"] == 1)):
        raise ConvertError(f"{where}: base distribution is not N(0, I)")
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    params, stats = {}, {}
    for j in range(config.n_blocks):
        c, b = f"net.{2 * j}", f"net.{2 * j + 1}"
        if not np.array_equal(sd[f"{c}.mask"], np.asarray(mask(config, j))):
            raise ConvertError(f"{where}: {c}.mask is not the alternating mask of block {j}")
        params[f"net{2 * j}"] = {
            net: {str(i): {"kernel": f32(sd[f"{c}.{net}.{i}.weight"].T),
                           "bias": f32(sd[f"{c}.{net}.{i}.bias"])} for i in (0, 2, 4)}
            for net in ("s_net", "t_net")}
        params[f"net{2 * j + 1}"] = {n: f32(sd[f"{b}.{n}"]) for n in ("log_gamma", "beta")}
        stats[f"net{2 * j + 1}"] = {n: f32(sd[f"{b}.{n}"]) for n in ("running_mean", "running_var")}
    return {"params": params, "batch_stats": stats}, config


def prior_from_torch(path) -> FlowPrior:
    """Read an official FKP_x{2,3,4}.pt (no code execution; CUDA-saved tensors fine) -> FlowPrior."""
    variables, config = fkp_variables_from_state_dict(_model_state(path), where=str(path))
    return FlowPrior.from_variables(variables, config)


def save_prior(prior: FlowPrior, dest, overwrite: bool = False) -> Path:
    """Write ``prior`` as an orbax checkpoint that ``fkp_jax.flow.load_prior(dest)`` reads."""
    return checkpoint.save(dest, prior.variables, {"model": "fkp_flow",
                                                   "flow_config": prior.config.to_dict()},
                           overwrite=overwrite)


# --------------------------------------------------------------------------------------------
# DIP image generator (FKP_SPEC 6.2; key layout in golden README Appendix A)


def dip_params_from_torch(path) -> dict:
    """Read a state dict of the original DIP skip generator (e.g. golden dip_skip_state.pt or
    dipfkp_init_x2.pt; its BatchNorm buffers are ignored) -> ``fkp_jax.dip`` parameters."""
    from fkp_jax import dip

    return dip.params_from_torch(_model_state(path))


# --------------------------------------------------------------------------------------------
# USRNet-tiny (FKP_SPEC 8, 10.3; the key mapping lives in fkp_jax.usrnet)


def usrnet_params_from_torch(path) -> dict:
    """Read the official usrnet_tiny.pth (legacy torch format, no code execution) -> ``fkp_jax.usrnet`` params."""
    from fkp_jax import usrnet

    return usrnet.params_from_state_dict(_model_state(path), where=str(path))


# --------------------------------------------------------------------------------------------
# KULNet (KULNET_SPEC 1-2; the key mapping lives in fkp_jax.kulnet)


def kulnet_params_from_torch(path) -> dict:
    """Read an official KULNet latest_G.pth (x2 / x3 / x4 share one layout) -> ``fkp_jax.kulnet`` params."""
    from fkp_jax import kulnet

    return kulnet.params_from_state_dict(_model_state(path), where=str(path))


# --------------------------------------------------------------------------------------------
# guided-diffusion ADM UNet / noisy-image classifier (DKP_SPEC 8; golden_diffdkp README 3; key map in fkp_jax.adm)


def adm_params_from_torch(path, config=None) -> tuple[dict, object]:
    """Read 256x256_diffusion.pt or 256x256_classifier.pt (or the golden tiny ones) tensor by tensor (peak memory
    ~ the converted params + the largest tensor) -> (``fkp_jax.adm`` params, config)."""
    from fkp_jax import adm

    return adm.load_adm(Path(path), config)


def _convert_adm(src, dest: Path, required: bool) -> str | None:
    """Convert ``src`` if it is an ADM UNet / classifier state dict (streamed); None if it is not (unless required)."""
    from fkp_jax import adm

    sd = load_state_dict(src, lazy=True)
    if not adm.is_adm_state_dict(sd):
        if required:
            raise ConvertError(f"{src}: not a guided-diffusion ADM state dict (no 'time_embed.0.weight' / "
                               "'input_blocks.*' keys)")
        return None
    config = adm.detect_config(sd, str(src))
    params = adm.params_from_state_dict(sd, config, where=str(src))
    adm.save_adm(params, config, dest)
    return f"{adm.model_name(config)} ({adm.count_params(params)} parameters, image size {config.image_size})"


# --------------------------------------------------------------------------------------------
# Command line


def _convert(src, dest: Path, model: str) -> str:
    """Convert ``src`` into ``dest`` (which must not exist); returns what was written, for the message."""
    from fkp_jax import usrnet

    if dest.exists():
        raise FileExistsError(f"destination already exists: {dest}")
    if model in ("auto", "adm") and (what := _convert_adm(src, dest, required=model == "adm")):
        return what
    sd = _model_state(src)
    from fkp_jax import kulnet

    if model == "auto":
        if usrnet.is_usrnet_state_dict(sd):
            model = "usrnet"
        elif kulnet.is_kulnet_state_dict(sd):
            model = "kulnet"
        elif "kernel_size" in sd:
            model = "fkp"
        else:
            raise ConvertError(f"{src}: not a state dict of a known model: FKP (a 'kernel_size' buffer), USRNet "
                               "('p.m_*' / 'h.mlp.*'), KULNet ('kernel_extra.*' / 'SR_net.*') or ADM ('input_blocks.*')")
    if model == "kulnet":
        kulnet.save_kulnet(kulnet.params_from_state_dict(sd, where=str(src)), dest)
        return f"KULNet ({kulnet.N_PARAMS} parameters; any scale)"
    if model == "usrnet":
        usrnet.save_usrnet(usrnet.params_from_state_dict(sd, where=str(src)), dest)
        return f"USRNet-tiny ({usrnet.N_PARAMS} parameters)"
    variables, config = fkp_variables_from_state_dict(sd, where=str(src))
    save_prior(FlowPrior.from_variables(variables, config), dest)
    return f"FKP x{config.sf} prior (D={config.D})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fkp_jax.convert",
                                     description="Convert an official FKP_x{2,3,4}.pt or usrnet_tiny.pth to an "
                                                 "orbax checkpoint.")
    parser.add_argument("src", help="PyTorch checkpoint, e.g. FKP_x2.pt or usrnet_tiny.pth")
    parser.add_argument("dest", help="output directory (must not exist)")
    parser.add_argument("--model", choices=("auto", "fkp", "usrnet", "kulnet", "adm"), default="auto",
                        help="what SRC must be (default: recognised by its keys)")
    args = parser.parse_args(argv)
    try:
        what = _convert(args.src, Path(args.dest), args.model)
    except (OSError, CheckpointError, ConvertError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {what} to {args.dest}")
    return 0


if __name__ == "__main__":
    # run the imported module's main, not this __main__ copy: ConvertError raised by fkp_jax.usrnet is the
    # class of the module fkp_jax.convert, which `python -m` would otherwise load a second time
    from fkp_jax.convert import main as _main

    sys.exit(_main())
