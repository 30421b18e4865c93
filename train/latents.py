"""Between the stages of latent diffusion: the frozen autoencoder, scaled latents, the cache,
and decoding (class-conditional, guided) samples."""
import torch
from tqdm.auto import tqdm

from models.autoencoder import Autoencoder
from models.diffusion import Denoiser
from models.samplers import classifier_free_guidance, sample
from train.common import until_out_of_time
from train.diffusion import DiffusionSetup, ema_denoiser
from utils.data import to_uint8
from utils.errors import UserError
from utils.runs import Run, load_checkpoint, load_state, save_checkpoint

CACHE = "latent_cache.pt"  # in the autoencoder run's saved_models folder


def save_cache(cache: dict, run: Run, config: dict) -> None:
    """The encoded training set (mean, logvar, label), written atomically."""
    save_checkpoint({**cache, "config": config}, run.models / CACHE)


def load_cache(run: Run) -> dict:
    path = run.models / CACHE
    if not path.is_file():
        raise UserError(f"{run.name} has no latent cache ({path}); finish LDMAutoencoderMain "
                        f"for it (or resume it) first")
    cache = load_checkpoint(path)
    if not {"mean", "logvar", "labels"} <= set(cache):
        raise UserError(f"{path} is not a latent cache")
    return cache


def load_autoencoder(run: Run, device: torch.device) -> tuple[Autoencoder, dict]:
    """The frozen (EMA if trained with one) autoencoder of a finished stage-1 run, and its
    checkpoint (with latent_stats)."""
    state = load_checkpoint(run.checkpoint)
    if "ae_final" not in state or "latent_stats" not in state:
        raise UserError(f"{run.checkpoint} is not a finished LDM autoencoder checkpoint (no "
                        f"latent statistics); finish or resume LDMAutoencoderMain first")
    ae = Autoencoder(**state["model_args"]).to(device)
    load_state(ae, state["ae_final"], "autoencoder")
    ae.eval().requires_grad_(False)
    return ae, state


def latent_batches(cache: dict, scale: float, batch_size: int, device: torch.device,
                   epoch: int, epochs: int):
    """One epoch of scaled posterior samples s * (mean + sigma * eps), shuffled, with labels."""
    n = len(cache["labels"])
    order = torch.randperm(n)

    def batches():
        for start in range(0, n - n % batch_size if n >= batch_size else n, batch_size):
            index = order[start:start + batch_size]
            mean = cache["mean"][index].to(device)
            std = (0.5 * cache["logvar"][index].to(device)).exp()
            yield scale * (mean + std * torch.randn_like(mean)), cache["labels"][index].to(device)
    return tqdm(until_out_of_time(batches()), total=max(1, n // batch_size),
                desc=f"epoch {epoch}/{epochs}", leave=False, dynamic_ncols=True, mininterval=1.0)


@torch.no_grad()
def decode_latents(ae: Autoencoder, z: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1]."""
    return ae.decode(z / scale).float().clamp(-1, 1)


def guided_denoiser(s: DiffusionSetup, guidance: float) -> Denoiser:
    """The EMA latent denoiser (no clipping) with classifier-free guidance at `guidance`."""
    return classifier_free_guidance(ema_denoiser(s, clip_x0=False), guidance,
                                    s.model.null_class)


@torch.no_grad()
def class_samples(denoiser: Denoiser, ae: Autoencoder, scale: float, noise: torch.Tensor,
                  labels: torch.Tensor, steps: int = 50) -> torch.Tensor:
    """Decoded DDIM samples of a (guided) latent denoiser for the given labels, uint8 on the CPU."""
    z = sample(denoiser, noise.clone(), "ddim", steps, labels=labels).x
    return to_uint8(decode_latents(ae, z, scale)).cpu()
