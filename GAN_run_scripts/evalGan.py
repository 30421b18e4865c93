"""Evaluate a trained DCGAN run.

    python -m GAN_run_scripts.evalGan                    # the latest run
    python -m GAN_run_scripts.evalGan --RUN=001 --N_SAMPLES=5000

Writes to saved_plots/gan/<run>/eval/: samples_grid.png, interpolations.png, progression.png,
losses.png, samples.npz (uint8 NHWC `images`) and metrics.json (FID, KID, precision, recall
against held-out images, with the real-vs-real floor).
"""
import torch

from train.evaluator import write_metrics
from train.gan import build_gan, sample, write_figures
from utils.config import resolve_constants
from utils.device import resolve_device, seed_everything
from utils.errors import UserError, run_cli
from utils.plots import save_grid, save_labelled_grid
from utils.runs import MetricsLog, find_run, load_checkpoint, load_state
from utils.samples import draw_samples, save_samples_npz, slerp

RUN = "latest"  # run name or number (e.g. 001), or latest
N_SAMPLES = 1000  # images saved to samples.npz (0: none)
GRID_SIZE = 10  # the sample grid is GRID_SIZE x GRID_SIZE
N_PAIRS = 8  # latent pairs interpolated (rows)
STEPS = 10  # images per interpolation (columns)
METRICS = True  # score the samples (FID, KID, precision/recall vs held-out data) to metrics.json
EXTRACTOR = "evaluator"  # features: evaluator (the project's classifier) or inception (online)
SEED = 0  # seeds the latents drawn here
DEVICE = "auto"  # auto, cpu, cuda
SAVE_ROOT = "."  # folder holding saved_plots/ and saved_models/
DATA_ROOT = "data"  # where torchvision datasets are downloaded


def main(argv=None) -> None:
    c = resolve_constants(globals(), argv)
    run = find_run(c.SAVE_ROOT, "gan", c.RUN)
    state = load_checkpoint(run.checkpoint)
    if "model_args" not in state:
        raise UserError(f"{run.checkpoint} is not a GAN checkpoint (no model_args)")
    seed_everything(c.SEED)
    device = resolve_device(c.DEVICE)
    s = build_gan(**state["model_args"], lr=0.0, betas=(0.5, 0.999), device=device)
    load_state(s.generator, state["generator"], "generator")
    out = run.plots / "eval"

    latent_dim = s.generator.latent_dim
    z = torch.randn(c.GRID_SIZE ** 2, latent_dim, device=device)
    save_grid(sample(s.generator, z), out / "samples_grid.png", nrow=c.GRID_SIZE,
              title=f"{run.name}: {c.GRID_SIZE ** 2} samples (epoch {state['epoch']})")
    ends = torch.randn(2, c.N_PAIRS, latent_dim, device=device)
    path = slerp(ends[0], ends[1], c.STEPS)  # (P, S, D)
    images = sample(s.generator, path.flatten(0, 1)).unflatten(0, (c.N_PAIRS, c.STEPS))
    save_labelled_grid(images, out / "interpolations.png", title="Spherical interpolation "
                       "between latent pairs", xlabel="from z_a (left) to z_b (right)")
    write_figures(out, list(state["frames"]), MetricsLog(run.metrics_path).read(), run.name)
    if c.N_SAMPLES > 0:
        images, ms = draw_samples(
            lambda _, k: sample(s.generator, torch.randn(k, latent_dim, device=device)),
            c.N_SAMPLES, 500, device)
        save_samples_npz(images, out / "samples.npz")
        if c.METRICS:
            write_metrics(images, None, state["config"]["DATASET"], out, device,
                          extractor=c.EXTRACTOR, save_root=c.SAVE_ROOT, data_root=c.DATA_ROOT,
                          sampling={"sampler": "generator", "ms_per_image": ms})
    print(f"done: figures in {out}")


if __name__ == "__main__":
    run_cli(main)
