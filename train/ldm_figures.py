"""The latent diffusion model's evaluation figures and report (LDMEval): the guidance sweep, the
forward and noised-then-denoised strips of test latents, and the autoencoder's held-out report."""
from pathlib import Path
from typing import Sequence

import torch

from models.autoencoder import Autoencoder
from models.diffusion import Denoiser
from models.vae import reparameterize
from train.inference import psnr, reconstruct
from train.inference import Loaded
from train.diffusion_figures import forward_strip, noised_and_denoised, strip_timesteps
from train.latents import class_samples, decode_latents, guided
from utils.data import ImageData
from utils.plots import save_labelled_grid
from utils.runs import write_json


def write_cfg_sweep(denoiser: Denoiser, net, ae: Autoencoder, scale: float, latent_shape: tuple,
                    classes: list[str], scales: Sequence[float], steps: int, path: Path,
                    title: str) -> None:
    """One sample per class (rows) at each guidance scale (columns), the same noise per row,
    `steps` DDIM steps."""
    device = next(net.parameters()).device
    labels = torch.arange(len(classes), device=device)
    noise = torch.randn(len(classes), *latent_shape, device=device)
    sweep = torch.stack([class_samples(guided(denoiser, net, w), ae, scale, noise, labels,
                                       steps) for w in scales], dim=1)
    # sweep: (classes, scales, C, H, W)
    save_labelled_grid(sweep, path, classes, [f"w={w:g}" for w in scales],
                       title=f"{title}: classifier-free guidance sweep (same noise per row)",
                       xlabel="guidance scale (0: unconditional, 1: conditional)")


def write_latent_strips(denoiser: Denoiser, net, ae: Autoencoder, scale: float, test: ImageData,
                        out: Path, title: str, *, images: int, columns: int,
                        noised_t: Sequence[int], guidance: float, steps: int) -> None:
    """A test latent's forward diffusion over `columns` timesteps, decoded; `images` test
    latents noised to each t of noised_t and denoised with their class (CFG `guidance`,
    `steps` DDIM steps), decoded."""
    device = next(net.parameters()).device
    x, y = test.first(images)
    z0 = scale * ae.encode(x.to(device))[0].float()
    decode = lambda z: decode_latents(ae, z, scale).cpu()  # noqa: E731
    ts = strip_timesteps(denoiser.schedule.timesteps, columns)
    strip = forward_strip(denoiser.schedule, z0[:1], ts, torch.randn_like(z0[:1]), decode)
    save_labelled_grid(strip, out / "forward_latent.png", col_labels=[f"t={t}" for t in ts],
                       title=f"{title}: forward diffusion of a latent, decoded")
    rows, row_labels = noised_and_denoised(guided(denoiser, net, guidance), z0,
                                           list(noised_t), sampler="ddim", steps=steps,
                                           decode=decode, labels=y.to(device))
    save_labelled_grid(rows, out / "noised_real.png", row_labels,
                       ["x0"] + [f"t={t}" for t in noised_t],
                       title=f"{title}: test latents noised to t, denoised with their class "
                       f"(CFG {guidance:g}), decoded")


@torch.no_grad()
def write_autoencoder_report(ae: Autoencoder, scale: float, stage1: Loaded, test_x: torch.Tensor,
                             out: Path, classify=None) -> dict:
    """Held-out reconstructions and how close the scaled held-out latents are to N(0, 1);
    with `classify`, the evaluator's class accuracy on the reconstructions (the most a
    class-conditional stage 2 can reach through this autoencoder)."""
    recon = reconstruct(ae, test_x)
    mean, logvar = ae.encode(test_x.to(next(ae.parameters()).device))
    z = scale * reparameterize(mean, logvar)
    save_labelled_grid(torch.stack([test_x[:10], recon[:10]]), out / "reconstructions.png",
                       ["original", "reconstruction"], title="autoencoder reconstructions")
    report = {**stage1.state["latent_stats"], "autoencoder": stage1.run.name,
              "held_out_psnr": psnr((recon - test_x).pow(2).mean().item()),
              "held_out_scaled_mean": z.mean().item(), "held_out_scaled_std": z.std().item(),
              "held_out_images": len(test_x)}
    if classify is not None:
        report["reconstruction_class_accuracy"] = classify(recon)
    write_json(out / "latent_stats.json", report)
    return report
