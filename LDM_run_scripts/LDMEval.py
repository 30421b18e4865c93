"""Evaluate a latent diffusion run (stage 2) with its frozen autoencoder.

    python -m LDM_run_scripts.LDMEval                      # the latest LDM run
    python -m LDM_run_scripts.LDMEval --RUN=002 --SCALES="(0, 1, 3, 7.5)" --PER_CLASS=200

Writes to saved_plots/ldm/<run>/eval/: cfg_sweep.png (rows classes, columns guidance scales),
forward_latent.png (a test image's latent noised to t, decoded), noised_real.png (test latents
noised to t, denoised with their class, decoded: where the model stops reconstructing and starts
inventing), reconstructions.png, latent_stats.json and samples.npz (PER_CLASS per class at
GUIDANCE, uint8 NHWC `images` with `labels`), metrics.json (FID, KID, precision, recall and
class accuracy by the evaluator classifier, with the real-vs-real floor).
"""
import json

import torch

from models.diffusion import NoiseSchedule
from models.unet import UNet
from train.autoencoder import psnr, reconstruct
from train.diffusion import ema_network, make_denoiser
from train.diffusion_figures import forward_strip, noised_and_denoised, strip_timesteps
from train.evaluator import write_metrics
from models.samplers import classifier_free_guidance
from train.latents import class_samples, decode_latents, load_autoencoder
from utils.config import check_positive, resolve_constants
from utils.data import load_dataset
from utils.device import resolve_device, resolve_precision, seed_everything
from utils.errors import UserError, run_cli
from utils.plots import save_labelled_grid
from utils.runs import find_run, load_checkpoint
from utils.samples import draw_samples, save_samples_npz

RUN = "latest"  # LDM run name or number, or latest
SCALES = (0.0, 1.0, 2.0, 3.0, 5.0, 7.5)  # guidance scales of the sweep (columns)
GUIDANCE = 3.0  # guidance scale of samples.npz and the noised-real strip
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
    c = resolve_constants(globals(), argv)
    check_positive(c, "STEPS", "STRIP_IMAGES", "STRIP_COLUMNS")
    run = find_run(c.SAVE_ROOT, "ldm", c.RUN)
    state = load_checkpoint(run.checkpoint)
    if "scale_factor" not in state or "ema" not in state:
        raise UserError(f"{run.checkpoint} is not an LDM checkpoint")
    cfg = state["config"]
    if any(not 0 <= t < cfg["TIMESTEPS"] for t in c.NOISED_T):
        raise UserError(f"NOISED_T values must lie in [0, {cfg['TIMESTEPS'] - 1}]")
    seed_everything(c.SEED)
    device = resolve_device(c.DEVICE)
    ae, ae_state = load_autoencoder(find_run(c.SAVE_ROOT, "ldm_autoencoder",
                                             cfg["AUTOENCODER_RUN"]), device)
    scale, schedule = state["scale_factor"], NoiseSchedule(cfg["SCHEDULE"], cfg["TIMESTEPS"])
    net = ema_network(state, UNet(**state["model_args"]).to(device))
    denoiser = make_denoiser(net, schedule, cfg["PREDICTION"], clip_x0=False,
                             amp_dtype=resolve_precision(c.PRECISION, device))
    def guided(scale_w: float):
        return classifier_free_guidance(denoiser, scale_w, net.null_class)
    ae_cfg = ae_state["config"]
    test = load_dataset(ae_cfg["DATASET"], "test", image_size=ae_cfg["IMAGE_SIZE"],
                        channels=ae_state["model_args"]["channels"], root=c.DATA_ROOT,
                        seed=ae_cfg["SEED"], n=512)
    classes, latent_shape = test.class_names, tuple(state["fixed_noise"].shape[1:])
    out, title = run.plots / "eval", f"{run.name} (epoch {state['epoch']})"

    labels = torch.arange(len(classes), device=device)
    noise = torch.randn(len(classes), *latent_shape, device=device)
    sweep = torch.stack([class_samples(guided(w), ae, scale, noise, labels, c.STEPS)
                         for w in c.SCALES], dim=1)  # (classes, scales, C, H, W)
    save_labelled_grid(sweep, out / "cfg_sweep.png", classes, [f"w={w:g}" for w in c.SCALES],
                       title=f"{title}: classifier-free guidance sweep (same noise per row)",
                       xlabel="guidance scale (0: unconditional, 1: conditional)")

    x, y = test.first(c.STRIP_IMAGES)
    z0 = scale * ae.encode(x.to(device))[0].float()
    decode = lambda z: decode_latents(ae, z, scale).cpu()  # noqa: E731
    ts = strip_timesteps(schedule.timesteps, c.STRIP_COLUMNS)
    strip = forward_strip(schedule, z0[:1], ts, torch.randn_like(z0[:1]), decode)
    save_labelled_grid(strip, out / "forward_latent.png", col_labels=[f"t={t}" for t in ts],
                       title=f"{title}: forward diffusion of a latent, decoded")
    rows, row_labels = noised_and_denoised(guided(c.GUIDANCE), z0, list(c.NOISED_T),
                                           sampler="ddim", steps=c.STEPS, decode=decode,
                                           labels=y.to(device))
    save_labelled_grid(rows, out / "noised_real.png", row_labels,
                       ["x0"] + [f"t={t}" for t in c.NOISED_T],
                       title=f"{title}: test latents noised to t, denoised with their class "
                       f"(CFG {c.GUIDANCE:g}), decoded")

    test_x = test.first(512)[0]
    recon = reconstruct(ae, test_x)
    with torch.no_grad():
        mean, logvar = ae.encode(test_x.to(device))
        z = scale * (mean + (0.5 * logvar).exp() * torch.randn_like(mean))
    save_labelled_grid(torch.stack([test_x[:10], recon[:10]]), out / "reconstructions.png",
                       ["original", "reconstruction"], title="autoencoder reconstructions")
    report = {**ae_state["latent_stats"], "autoencoder": cfg["AUTOENCODER_RUN"],
              "held_out_psnr": psnr((recon - test_x).pow(2).mean().item()),
              "held_out_scaled_mean": z.mean().item(), "held_out_scaled_std": z.std().item(),
              "held_out_images": len(test_x)}
    (out / "latent_stats.json").write_text(json.dumps(report, indent=2))

    if c.PER_CLASS > 0:
        def generate(start: int, k: int) -> torch.Tensor:  # classes in order, PER_CLASS each
            lab = (torch.arange(start, start + k) // c.PER_CLASS).to(device)
            z = torch.randn(k, *latent_shape, device=device)
            return class_samples(guided(c.GUIDANCE), ae, scale, z, lab, c.STEPS)

        n = c.PER_CLASS * len(classes)
        images, ms = draw_samples(generate, n, 100, device)
        sample_labels = torch.arange(n) // c.PER_CLASS
        save_samples_npz(images, out / "samples.npz", sample_labels)
        if c.METRICS:
            report["metrics"] = write_metrics(
                images, sample_labels, ae_cfg["DATASET"], out, device, extractor=c.EXTRACTOR,
                save_root=c.SAVE_ROOT, data_root=c.DATA_ROOT, seed=ae_cfg["SEED"],
                sampling={"sampler": f"ddim-{c.STEPS}, CFG {c.GUIDANCE:g}, decoded",
                          "ms_per_image": ms})
    print(f"held-out PSNR {report['held_out_psnr']:.2f} dB, held-out scaled latents mean "
          f"{report['held_out_scaled_mean']:.3f} std {report['held_out_scaled_std']:.3f}; "
          f"done: figures in {out}")
    return report


if __name__ == "__main__":
    run_cli(main)
