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
import torch

from train.inference import checkpoint_denoiser, load_run, sampling_steps
from train.evaluator import class_accuracy, write_metrics
from train.latents import class_samples, guided
from train.ldm_figures import write_autoencoder_report, write_cfg_sweep, write_latent_strips
from utils.config import check_positive, given_constants, resolve_constants
from utils.device import resolve_device, resolve_precision, seed_everything
from utils.cli import run_cli
from utils.errors import UserError
from utils.run_index import write_indexes
from utils.samples import draw_samples, save_samples_npz

RUN = "latest"  # LDM run name or number, or latest
SCALES = (0.0, 1.0, 2.0, 3.0, 5.0, 7.5)  # guidance scales of the sweep (columns)
GUIDANCE = 2.0  # CFG scale (Ho & Salimans 2022) of samples.npz and the strip (a student: 1)
STEPS = 50  # DDIM steps (a distilled student: its own, unless given)
NOISED_T = (100, 250, 400, 550, 700, 850, 999)  # t a test latent is noised to, then denoised
STRIP_IMAGES = 4  # test images in the noised-real strip
STRIP_COLUMNS = 10  # timesteps in the forward strip
PER_CLASS = 100  # samples per class in samples.npz (0: none)
METRICS = True  # score the samples (FID, KID, precision/recall vs held-out data) to metrics.json
EXTRACTOR = "evaluator"  # features: evaluator (the project's classifier) or inception (online)
RECIPE = None  # a named set of these constants, e.g. "gpu64" (docs/recipes.md); --NAME wins
SEED = 0  # seeds the noise drawn here
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where fast), bf16, fp32
SAVE_ROOT = "."  # folder holding saved_plots/ and saved_models/
DATA_ROOT = "data"  # torchvision's downloads, or the image folder of DATASET="folder"


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
    given = given_constants(argv)
    const.STEPS, grid = sampling_steps(ldm.state, const.STEPS, "STEPS" in given)
    if "distilled" in ldm.state and "GUIDANCE" not in given:
        const.GUIDANCE = 1.0  # the teacher's guidance is in the student's weights
    test = ldm.data.held_out(512, const.DATA_ROOT)
    classes, latent_shape = test.class_names, tuple(ldm.state["fixed_noise"].shape[1:])
    out, title = ldm.run.plots / "eval", ldm.title
    write_cfg_sweep(denoiser, net, ae, scale, latent_shape, classes, const.SCALES, const.STEPS,
                    out / "cfg_sweep.png", title)
    write_latent_strips(denoiser, net, ae, scale, test, out, title, images=const.STRIP_IMAGES,
                        columns=const.STRIP_COLUMNS, noised_t=const.NOISED_T,
                        guidance=const.GUIDANCE, steps=const.STEPS)
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
                                 const.STEPS, timesteps=grid)

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


if __name__ == "__main__":
    run_cli(main)
