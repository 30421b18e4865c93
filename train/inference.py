"""Inference: a finished run loaded and sampled without the training loops. One loader for every
family's checkpoint (load_run: the networks rebuilt from its model_args with their inference
weights, eval mode, no optimizer), the denoiser of a diffusion run, and the small pieces each
family samples or reconstructs with. Eval scripts, benchmarks and the figure builders import this
module; the loops (train/gan.py, vae.py, diffusion.py, autoencoder.py) build on it too.

Each family's checkpoint is built by one function in its train/ module (gan_checkpoint,
vae_checkpoint, diffusion_checkpoint, autoencoder_checkpoint), which documents its keys.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from models.autoencoder import Autoencoder
from models.diffusion import PREDICTION_TYPES, Denoiser, NoiseSchedule
from models.dit import DiT
from models.text_to_image import TextConditionedUNet
from models.flow import FlowSchedule
from models.guidance import autoguidance
from models.gan import Discriminator, Generator
from models.samplers import FLOW_SAMPLERS, SAMPLERS
from models.unet import UNet
from models.vae import VAE
from utils.config import check_choice
from utils.data import DataSpec, to_uint8
from utils.device import autocast
from utils.errors import UserError
from utils.runs import Run, find_run, load_checkpoint, load_state


def ema_network(state: dict, model: torch.nn.Module, key: str = "ema") -> torch.nn.Module:
    """`model` with the EMA weights of a training checkpoint (no optimizer is built); `key`
    names another copy of them in the same format (a diffusion run's "guide")."""
    ema = state[key]
    weights = {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}
    load_state(model, weights, "EMA weights")
    return model.eval().requires_grad_(False)


# ---- diffusion: the network, its schedule, its Denoiser ----

# model_args names the denoising network's class
NETWORKS = {"unet": UNet, "dit": DiT, "text_unet": TextConditionedUNet}


def build_network(model_args: dict) -> torch.nn.Module:
    """The denoising network of model_args ({"unet": kwargs} or {"dit": kwargs}); sizes that do
    not fit together are one UserError line."""
    (name, kwargs), = model_args.items()
    try:
        return NETWORKS[name](**kwargs)
    except ValueError as err:
        raise UserError(f"{name}: {err}") from None


def build_schedule(prediction_type: str, kind: str, timesteps: int, logit_mean: float = 0.0,
                   logit_std: float = 1.0, *, min_snr_gamma: float = 0.0,
                   sampler: str = "ddim") -> NoiseSchedule | FlowSchedule:
    """The flow path for prediction 'flow', else the linear or cosine noise schedule; a choice
    that does not fit (an unknown kind, min-SNR or a noise-schedule sampler with flow) is one
    UserError line."""
    check_choice("PREDICTION", prediction_type, PREDICTION_TYPES)
    if prediction_type != "flow":
        check_choice("SCHEDULE", kind, ("linear", "cosine"))
        check_choice("SAMPLER", sampler, tuple(SAMPLERS))
        return NoiseSchedule(kind, timesteps)
    check_choice("SAMPLER (flow)", sampler, FLOW_SAMPLERS)
    if min_snr_gamma:
        raise UserError("MIN_SNR_GAMMA weights a noise schedule's SNR; use 0 with flow")
    try:
        return FlowSchedule(timesteps, logit_mean, logit_std)
    except ValueError as err:
        raise UserError(str(err)) from None


def make_denoiser(net: torch.nn.Module, schedule: NoiseSchedule, prediction_type: str, *,
                  amp_dtype: torch.dtype | None = None, clip_x0: bool = True) -> Denoiser:
    """The Denoiser of a network used for inference (eval mode, autocast, float32 output).
    clip_x0 for pixels in [-1, 1]; off for latents."""
    device = next(net.parameters()).device
    net.eval()

    def net_fn(x, t, labels):
        with autocast(device, amp_dtype):
            return net(x, t, labels).float()
    return Denoiser(net_fn, schedule, prediction_type, clip_x0)


def checkpoint_denoiser(state: dict, net: torch.nn.Module, *, amp_dtype=None,
                        clip_x0: bool = True) -> Denoiser:
    """The Denoiser of a loaded network with the schedule and prediction type it trained with."""
    process = state["diffusion"]
    schedule = build_schedule(process["prediction"], process["schedule"], process["timesteps"],
                              process.get("logit_mean", 0.0), process.get("logit_std", 1.0))
    return make_denoiser(net, schedule, process["prediction"], amp_dtype=amp_dtype,
                         clip_x0=clip_x0)


def sampling_steps(state: dict, steps: int, given: bool) -> tuple[int, list[int] | None]:
    """The steps and grid to sample a diffusion run with: a distilled student's own (the steps
    and grid it was distilled for) unless `steps` was `given`; else `steps` on the sampler's
    grid (None). A student asked for its own number of steps keeps its grid."""
    record = state.get("distilled")
    if record and (not given or steps == record["steps"]):
        return record["steps"], record["timesteps"]
    return steps, None


def run_denoiser(loaded, amp_dtype=None, autoguidance_weight: float = 1.0,
                 interval: tuple[float, float] | None = None) -> Denoiser:
    """A pixel diffusion run's EMA denoiser as DiffusionEval samples it: autoguided by the
    run's guide at `autoguidance_weight` (within `interval`) where it kept one (1: plain)."""
    denoiser = checkpoint_denoiser(loaded.state, loaded.nets["net"], amp_dtype=amp_dtype)
    if autoguidance_weight != 1 and "guide" in loaded.nets:
        guide = checkpoint_denoiser(loaded.state, loaded.nets["guide"], amp_dtype=amp_dtype)
        denoiser = autoguidance(denoiser, guide, autoguidance_weight, interval)
    return denoiser


def load_diffusion_networks(state: dict, device: torch.device) -> dict[str, torch.nn.Module]:
    """{"net": the denoising network with the checkpoint's EMA weights, and "guide": the same
    network with the guide's weights where the run kept one}, in eval mode."""
    nets = {"net": ema_network(state, build_network(state["model_args"]).to(device))}
    if state.get("guide") is not None:
        nets["guide"] = ema_network(state, build_network(state["model_args"]).to(device),
                                    "guide")
    return nets


# ---- DCGAN ----

def load_gan(state: dict, device: torch.device) -> dict[str, torch.nn.Module]:
    """The networks of a GAN checkpoint, weights loaded, in eval mode (no optimizer); the
    generator holds the EMA weights when the run kept them."""
    args = state["model_args"]
    nets = {"generator": Generator(**args["generator"]),
            "discriminator": Discriminator(**args["discriminator"])}
    for name, net in nets.items():
        load_state(net, state[name], name)
        net.to(device).eval().requires_grad_(False)
    if state.get("ema") is not None:
        ema_network(state, nets["generator"])
    return nets


@torch.no_grad()
def recalibrate_batchnorm(generator: Generator, batches: int = 16, batch_size: int = 256,
                          seed: int = 0) -> None:
    """Set the generator's BatchNorm running statistics to their average over z ~ N(0, I).

    Training updates them with momentum 0.1 while G keeps changing, so they lag behind; the
    exact population statistics make eval-mode samples match the current generator. A private
    RNG keeps the global one (and so resumed runs) untouched.
    """
    device = next(generator.parameters()).device
    rng = torch.Generator(device=device).manual_seed(seed)
    norms = [m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    generator.train()
    for _ in range(batches):
        generator(torch.randn(batch_size, generator.latent_dim, device=device, generator=rng))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum


@torch.no_grad()
def generate(generator: Generator, z: torch.Tensor, amp_dtype=None) -> torch.Tensor:
    """Images for latents z, generator in eval mode, as uint8 on the CPU."""
    was_training = generator.training
    generator.eval()
    with autocast(z.device, amp_dtype):
        images = to_uint8(generator(z).float()).cpu()
    generator.train(was_training)
    return images


# ---- beta-VAE ----

def load_vae(state: dict, device: torch.device) -> dict[str, torch.nn.Module]:
    """The VAE of a checkpoint, weights loaded, in eval mode (no optimizer)."""
    model = VAE(**state["model_args"]["vae"])
    load_state(model, state["model"], "VAE")
    return {"vae": model.to(device).eval().requires_grad_(False)}


@torch.no_grad()
def posterior_means(model: VAE, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """E_q[z | x] for [-1, 1] images, in eval mode: (N, D) on the CPU."""
    device = next(model.parameters()).device
    return torch.cat([model.encode(images[i:i + batch_size].to(device))[0].float().cpu()
                      for i in range(0, len(images), batch_size)])


# ---- the LDM autoencoder ----

def load_autoencoder_networks(state: dict, device: torch.device) -> dict[str, torch.nn.Module]:
    """{"autoencoder": its inference weights (EMA if trained with one)}, in eval mode. The
    discriminator only serves training; PatchDiscriminator(**model_args["discriminator"])
    rebuilds it."""
    ae = Autoencoder(**state["model_args"]["autoencoder"]).to(device)
    if "ema" in state:
        ema_network(state, ae)
    else:
        load_state(ae, state["ae"], "autoencoder")
    return {"autoencoder": ae.eval().requires_grad_(False)}


@torch.no_grad()
def reconstruct(ae: Autoencoder, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Decode the posterior means (deterministic reconstructions), clamped to [-1, 1]."""
    device = next(ae.parameters()).device
    ae.eval()
    out = [ae.decode(ae.encode(x[i:i + batch_size].to(device))[0]).float().clamp(-1, 1).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def psnr(mse_minus1_1: float) -> float:
    """PSNR (dB) of images in [-1, 1]: 10 log10(1 / MSE) on the [0, 1] scale (MSE / 4)."""
    return 10 * math.log10(4.0 / max(mse_minus1_1, 1e-12))


# ---- any run ----

LOADERS = {"gan": load_gan, "vae": load_vae, "diffusion": load_diffusion_networks,
           "ldm": load_diffusion_networks, "ldm_autoencoder": load_autoencoder_networks,
           "t2i": load_diffusion_networks}


@dataclass
class Loaded:
    """A trained run: where it lives, its checkpoint, its rebuilt networks and its data."""
    run: Run
    state: dict
    nets: dict[str, torch.nn.Module]
    data: DataSpec

    @property
    def title(self) -> str:
        return f"{self.run.name} (epoch {self.state['epoch']})"


def load_run(save_root: str | Path, family: str, which: str, device: torch.device) -> Loaded:
    """The run named `which` (or the latest with a checkpoint) of a family, rebuilt on device."""
    run = find_run(save_root, family, which)
    state = load_checkpoint(run.checkpoint, family)
    try:
        return Loaded(run, state, LOADERS[family](state, device), DataSpec.of(state))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        # model_args a network cannot be built from, or a part of the dict missing
        raise UserError(f"checkpoint {run.checkpoint} cannot be rebuilt ({type(err).__name__}: "
                        f"{str(err).strip()[:100]}): it is damaged or was written by another "
                        f"version") from None
