"""Between the stages of latent diffusion: the latent cache and its statistics (written at the end
of stage 1), the finished stage-1 run and its held-out latents, scaled latent batches for stage 2,
and decoding (class-conditional, guided) samples.
"""
from typing import Iterator

import torch

from models.autoencoder import Autoencoder
from models.diffusion import Denoiser
from models.guidance import classifier_free_guidance
from models.samplers import sample
from models.vae import reparameterize
from train.inference import Loaded, load_run
from utils import distributed
from utils.data import ImageData, iterate_batches, to_uint8
from utils.errors import UserError
from utils.runs import CHECKPOINT_VERSION, Run, load_checkpoint, save_checkpoint

CACHE = "latent_cache.pt"  # in the autoencoder run's saved_models folder


@torch.no_grad()
def encode_dataset(ae: Autoencoder, data: ImageData, batch_size: int = 256) -> dict:
    """The posterior (mean, logvar) of every image, with its label, on the CPU (the cache)."""
    device = next(ae.parameters()).device
    ae.eval()
    means, logvars, labels = [], [], []
    for x, y in iterate_batches(data, batch_size, device, shuffle=False, drop_last=False):
        mean, logvar = ae.encode(x)
        means.append(mean.float().cpu())
        logvars.append(logvar.float().cpu())
        labels.append(y.cpu())
    return {"mean": torch.cat(means), "logvar": torch.cat(logvars), "labels": torch.cat(labels)}


def latent_statistics(cache: dict, seed: int = 0) -> dict:
    """Per-channel mean and std of posterior samples z = mean + sigma * eps over the cache, and
    the scale factor s = 1 / std over all latent elements (Rombach et al. 2022, sec. G)."""
    generator = torch.Generator().manual_seed(seed)
    z = reparameterize(cache["mean"].double(), cache["logvar"].double(), generator)
    return {"channel_mean": z.mean(dim=(0, 2, 3)).tolist(),
            "channel_std": z.std(dim=(0, 2, 3)).tolist(),
            "mean": z.mean().item(), "std": z.std().item(), "scale_factor": 1 / z.std().item()}


def save_cache(cache: dict, run: Run, config: dict) -> None:
    """The encoded training set (mean, logvar, label), written atomically."""
    save_checkpoint({**cache, "version": CHECKPOINT_VERSION, "kind": "latent_cache",
                     "config": config}, run.models / CACHE)


def load_cache(run: Run) -> dict:
    path = run.models / CACHE
    if not path.is_file():
        raise UserError(f"{run.name} has no latent cache ({path}); finish LDMAutoencoderMain "
                        f"for it (or resume it) first")
    return load_checkpoint(path, "latent_cache")


def latent_batches(cache: dict, scale: float, batch_size: int, device: torch.device
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of scaled posterior samples s * (mean + sigma * eps), shuffled, with labels;
    batch_size is the global batch (each rank takes its slice under torchrun)."""
    n = len(cache["labels"])
    order = torch.randperm(n)
    for start in range(0, n - n % batch_size if n >= batch_size else n, batch_size):
        index = distributed.shard(order[start:start + batch_size])
        mean, logvar = cache["mean"][index].to(device), cache["logvar"][index].to(device)
        z = reparameterize(mean, logvar, noise=distributed.randn)
        yield scale * z, cache["labels"][index].to(device)


@torch.no_grad()
def decode_latents(ae: Autoencoder, z: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1]."""
    return ae.decode(z / scale).float().clamp(-1, 1)


def guided(denoiser: Denoiser, net: torch.nn.Module, guidance: float) -> Denoiser:
    """A latent denoiser with classifier-free guidance at `guidance` (the net's null class); at
    1, the conditional denoiser itself (one pass instead of two)."""
    if guidance == 1:
        return denoiser
    return classifier_free_guidance(denoiser, guidance, net.null_class)


@torch.no_grad()
def class_samples(denoiser: Denoiser, ae: Autoencoder, scale: float, noise: torch.Tensor,
                  labels: torch.Tensor, steps: int = 50, timesteps: list[int] | None = None
                  ) -> torch.Tensor:
    """Decoded DDIM samples of a (guided) latent denoiser for the given labels, uint8 on the CPU
    (`timesteps`: a grid to visit, as a distilled student's)."""
    z = sample(denoiser, noise.clone(), "ddim", steps, labels=labels, timesteps=timesteps).x
    return to_uint8(decode_latents(ae, z, scale)).cpu()


def finished_stage1(save_root: str, which: str, device: torch.device) -> tuple[Loaded, dict]:
    """The stage-1 run (its frozen autoencoder, latent statistics and data) and its cache."""
    stage1 = load_run(save_root, "ldm_autoencoder", which, device)
    if "latent_stats" not in stage1.state:
        raise UserError(f"{stage1.run.name} has not finished training (no latent statistics); "
                        f"finish or resume LDMAutoencoderMain first")
    cache = load_cache(stage1.run)
    print(f"autoencoder {stage1.run.name}: {len(cache['labels'])} cached latents of shape "
          f"{tuple(cache['mean'].shape[1:])}, scale factor "
          f"{stage1.state['latent_stats']['scale_factor']:.4f}")
    return stage1, cache


@torch.no_grad()
def held_out_latents(stage1: Loaded, data_root: str, n: int = 512) -> torch.Tensor:
    """Scaled posterior means of held-out images (for the held-out loss), encoded once."""
    ae = stage1.nets["autoencoder"]
    x = stage1.data.held_out(n, data_root).first(n)[0].to(next(ae.parameters()).device)
    return stage1.state["latent_stats"]["scale_factor"] * ae.encode(x)[0].float()
