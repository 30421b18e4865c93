"""Evaluate a latent diffusion run (stage 2) with its frozen autoencoder.

    python -m LDM_run_scripts.LDMEval                      # the latest LDM run
    python -m LDM_run_scripts.LDMEval --RUN=002 --SCALES="(0, 1, 3, 7.5)" --PER_CLASS=200

Writes to saved_plots/ldm/<run>/eval/: cfg_sweep.png (rows classes, columns guidance scales),
forward_latent.png (a test image's latent noised to t, decoded), noised_real.png (test latents
noised to t, denoised with their class, decoded: where the model stops reconstructing and starts
inventing), reconstructions.png, latent_stats.json (with METRICS also the evaluator's class
accuracy on held-out reconstructions: the ceiling the autoencoder sets for the samples) and
samples.npz (PER_CLASS per class at GUIDANCE, uint8 NHWC `images` with `labels`), metrics.json
(FID, KID, precision, recall and class accuracy by the evaluator classifier, with the
real-vs-real floor).
"""
import json
from pathlib import Path

import torch

from models.autoencoder import Autoencoder
from models.diffusion import Denoiser
from models.vae import reparameterize
from train.autoencoder import psnr, reconstruct
from train.checkpoints import Loaded, load_run
from train.diffusion import checkpoint_denoiser
from train.diffusion_figures import forward_strip, noised_and_denoised, strip_timesteps
from train.evaluator import class_accuracy, write_metrics
from train.latents import class_samples, decode_latents, guided
from utils.config import check_positive, resolve_constants
from utils.device import resolve_device, resolve_precision, seed_everything
from utils.errors import UserError, run_cli
from utils.plots import save_labelled_grid
from utils.run_index import write_indexes
from utils.samples import draw_samples, save_samples_npz

RUN = "latest"  # LDM run name or number, or latest
SCALES = (0.0, 1.0, 2.0, 3.0, 5.0, 7.5)  # guidance scales of the sweep (columns)
GUIDANCE = 2.0  # CFG scale of samples.npz and the noised-real strip (shapes: the best of 1-5)
STEPS = 50  # DDIM steps
NOISED_T = (100, 250, 400, 550, 700, 850, 999)  # t a test latent is noised to, then denoised
STRIP_IMAGES = 4  # test images in the noised-real strip
STRIP_COLUMNS = 10  # timesteps in the forward strip
PER_CLASS = 100  # samples per class in samples.npz (0: none)
METRICS = True  # score the samples (FID, KID, precision/recall vs held-out data) to metrics.json
EXTRACTOR = "evaluator"  # features: evaluator (the project's classifier) or inception (online)
SEED = 0  # seeds the noise drawn here
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where fast), bf16, fp32
SAVE_ROOT = "."  # folder holding saved_plots/ and saved_models/
DATA_ROOT = "data"  # where torchvision datasets are downloaded


def main(argv=None) -> dict:
    const = resolve_constants(globals(), argv)
    check_positive(const, "STEPS", "STRIP_IMAGES", "STRIP_COLUMNS")
    seed_everything(const.SEED)
    device = resolve_device(const.DEVICE)
    ldm = load_run(const.SAVE_ROOT, "ldm", const.RUN, device)
    stage1 = load_run(const.SAVE_ROOT, "ldm_autoencoder", ldm.state["autoencoder_run"], device)
    net, ae, scale = ldm.nets["net"], stage1.nets["autoencoder"], ldm.state["scale_factor"]
    denoiser = checkpoint_denoiser(ldm.state, net, clip_x0=False,
                                   amp_dtype=resolve_precision(const.PRECISION, device))
    if any(not 0 <= t < denoiser.schedule.timesteps for t in const.NOISED_T):
        raise UserError(f"NOISED_T values must lie in [0, {denoiser.schedule.timesteps - 1}]")
    test = ldm.data.held_out(512, const.DATA_ROOT)
    classes, latent_shape = test.class_names, tuple(ldm.state["fixed_noise"].shape[1:])
    out, title = ldm.run.plots / "eval", ldm.title
    write_cfg_sweep(denoiser, net, ae, scale, latent_shape, classes, const, out / "cfg_sweep.png",
                    title)
    write_latent_strips(denoiser, net, ae, scale, test, const, out, title)
    x, y = test.first(512)
    classify = (lambda images: class_accuracy(  # noqa: E731
        images, y, ldm.data.dataset, device, save_root=const.SAVE_ROOT,
        data_root=const.DATA_ROOT, seed=ldm.data.seed)) if const.METRICS else None
    report = write_autoencoder_report(ae, scale, stage1, x, out, classify)
    if const.PER_CLASS > 0:
        def generate(start: int, k: int) -> torch.Tensor:  # classes in order, PER_CLASS each
            labels = (torch.arange(start, start + k) // const.PER_CLASS).to(device)
            z = torch.randn(k, *latent_shape, device=device)
            return class_samples(guided(denoiser, net, const.GUIDANCE), ae, scale, z, labels,
                                 const.STEPS)

        n = const.PER_CLASS * len(classes)
        images, ms = draw_samples(generate, n, 100, device)
        sample_labels = torch.arange(n) // const.PER_CLASS
        save_samples_npz(images, out / "samples.npz", sample_labels)
        if const.METRICS:
            report["metrics"] = write_metrics(
                images, sample_labels, ldm.data.dataset, out, device, extractor=const.EXTRACTOR,
                save_root=const.SAVE_ROOT, data_root=const.DATA_ROOT, seed=ldm.data.seed,
                sampling={"sampler": f"ddim-{const.STEPS}, CFG {const.GUIDANCE:g}, decoded",
                          "ms_per_image": ms})
    write_indexes(out.parent)  # the run's index.html and saved_plots/index.html
    recon_acc = report.get("reconstruction_class_accuracy")
    print(f"held-out PSNR {report['held_out_psnr']:.2f} dB"
          + (f", reconstructions' class accuracy {recon_acc:.3f}" if recon_acc is not None else "")
          + f", held-out scaled latents mean {report['held_out_scaled_mean']:.3f} std "
          f"{report['held_out_scaled_std']:.3f}; done: figures in {out}")
    return report


def write_cfg_sweep(denoiser: Denoiser, net, ae: Autoencoder, scale: float, latent_shape: tuple,
                    classes: list[str], const, path: Path, title: str) -> None:
    """One sample per class (rows) at each guidance scale (columns), the same noise per row."""
    device = next(net.parameters()).device
    labels = torch.arange(len(classes), device=device)
    noise = torch.randn(len(classes), *latent_shape, device=device)
    sweep = torch.stack([class_samples(guided(denoiser, net, w), ae, scale, noise, labels,
                                       const.STEPS) for w in const.SCALES], dim=1)
    # sweep: (classes, scales, C, H, W)
    save_labelled_grid(sweep, path, classes, [f"w={w:g}" for w in const.SCALES],
                       title=f"{title}: classifier-free guidance sweep (same noise per row)",
                       xlabel="guidance scale (0: unconditional, 1: conditional)")


def write_latent_strips(denoiser: Denoiser, net, ae: Autoencoder, scale: float, test, const,
                        out: Path, title: str) -> None:
    """A test latent's forward diffusion, decoded; test latents noised to t and denoised."""
    device = next(net.parameters()).device
    x, y = test.first(const.STRIP_IMAGES)
    z0 = scale * ae.encode(x.to(device))[0].float()
    decode = lambda z: decode_latents(ae, z, scale).cpu()  # noqa: E731
    ts = strip_timesteps(denoiser.schedule.timesteps, const.STRIP_COLUMNS)
    strip = forward_strip(denoiser.schedule, z0[:1], ts, torch.randn_like(z0[:1]), decode)
    save_labelled_grid(strip, out / "forward_latent.png", col_labels=[f"t={t}" for t in ts],
                       title=f"{title}: forward diffusion of a latent, decoded")
    rows, row_labels = noised_and_denoised(guided(denoiser, net, const.GUIDANCE), z0,
                                           list(const.NOISED_T), sampler="ddim", steps=const.STEPS,
                                           decode=decode, labels=y.to(device))
    save_labelled_grid(rows, out / "noised_real.png", row_labels,
                       ["x0"] + [f"t={t}" for t in const.NOISED_T],
                       title=f"{title}: test latents noised to t, denoised with their class "
                       f"(CFG {const.GUIDANCE:g}), decoded")


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
    (out / "latent_stats.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    run_cli(main)
