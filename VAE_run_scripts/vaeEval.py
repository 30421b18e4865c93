"""Evaluate a trained beta-VAE run.

    python -m VAE_run_scripts.vaeEval                       # the latest run
    python -m VAE_run_scripts.vaeEval --RUN=002 --DIM=3 --N_VALUES=15

Writes to saved_plots/vae/<run>/eval/: traversal_dims.png (one image, a row per active latent by
KL, labelled with its KL and the factor it captures best), traversal_z<DIM>.png (one latent,
N_IMAGES images as rows), reconstructions.png, prior_samples.png, report.json (MIG per factor,
active dims), samples.npz (decoded prior samples, uint8 NHWC `images`) and metrics.json
(FID, KID, precision, recall against held-out images, with the real-vs-real floor).
"""
import torch

from train.evaluator import write_metrics
from train.vae import build_vae
from train.vae_figures import decode, write_vae_figures
from utils.config import check_positive, resolve_constants
from utils.data import load_dataset, to_uint8
from utils.device import resolve_device, seed_everything
from utils.errors import UserError, run_cli
from utils.runs import MetricsLog, find_run, load_checkpoint, load_state
from utils.samples import draw_samples, save_samples_npz

RUN = "latest"  # run name or number (e.g. 002), or latest
DIM = None  # latent for the single-latent traversal (None: the one with the largest KL)
N_IMAGES = 8  # test images in reconstructions and the single-latent traversal
N_VALUES = 11  # traversal columns, from -3 to +3 prior std
N_SAMPLES = 1000  # prior samples saved to samples.npz (0: none)
METRICS = True  # score the samples (FID, KID, precision/recall vs held-out data) to metrics.json
EXTRACTOR = "evaluator"  # features: evaluator (the project's classifier) or inception (online)
SEED = 0  # seeds the prior samples
DEVICE = "auto"  # auto, cpu, cuda
SAVE_ROOT = "."  # folder holding saved_plots/ and saved_models/
DATA_ROOT = "data"  # where torchvision datasets are downloaded


def main(argv=None) -> dict:
    c = resolve_constants(globals(), argv)
    check_positive(c, "N_IMAGES", "N_VALUES")
    run = find_run(c.SAVE_ROOT, "vae", c.RUN)
    state = load_checkpoint(run.checkpoint)
    if "model_args" not in state or "model" not in state:
        raise UserError(f"{run.checkpoint} is not a VAE checkpoint")
    args, cfg = state["model_args"], state["config"]
    if c.DIM is not None and not 0 <= c.DIM < args["latent_dim"]:
        raise UserError(f"DIM={c.DIM} is not a latent index (0..{args['latent_dim'] - 1})")
    seed_everything(c.SEED)
    device = resolve_device(c.DEVICE)
    s = build_vae(args, device, lr=0.0, beta_mode="fixed")
    load_state(s.model, state["model"], "VAE")
    test = load_dataset(cfg["DATASET"], "test", image_size=cfg["IMAGE_SIZE"],
                        channels=args["channels"], root=c.DATA_ROOT, seed=cfg["SEED"])
    records = MetricsLog(run.metrics_path).read()[:state["epoch"]]
    kl_dims = records[-1]["test_kl_dims"] if records else [0.0] * args["latent_dim"]
    out = run.plots / "eval"
    report = write_vae_figures(s.model, test, kl_dims, out, f"{run.name} (epoch {state['epoch']})",
                               n_images=c.N_IMAGES, n_values=c.N_VALUES, seed=c.SEED, dim=c.DIM)
    if c.N_SAMPLES > 0:
        images, ms = draw_samples(
            lambda _, k: to_uint8(decode(s.model, torch.randn(k, args["latent_dim"]))),
            c.N_SAMPLES, 500, device)
        save_samples_npz(images, out / "samples.npz")
        if c.METRICS:
            write_metrics(images, None, cfg["DATASET"], out, device, extractor=c.EXTRACTOR,
                          save_root=c.SAVE_ROOT, data_root=c.DATA_ROOT, seed=cfg["SEED"],
                          sampling={"sampler": "decoder of prior samples", "ms_per_image": ms})
    for f in report["factors"]:
        print(f"{f['factor']:>10s}: best latent z{f['best_latent']}, MIG {f['mig']:.3f}")
    mig = "n/a" if report["mig"] is None else f"{report['mig']:.3f}"
    print(f"MIG {mig}; active dims by KL {report['active_dims']}; done: figures in {out}")
    return report


if __name__ == "__main__":
    run_cli(main)
