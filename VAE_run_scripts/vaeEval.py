"""Evaluate a trained beta-VAE run.

    python -m VAE_run_scripts.vaeEval                       # the latest run
    python -m VAE_run_scripts.vaeEval --RUN=002 --DIM=3 --N_VALUES=15

Writes to saved_plots/vae/<run>/eval/: traversal_dims.png (one image, a row per active latent by
KL, labelled with its KL and the factor it captures best), traversal_z<DIM>.png (one latent,
N_IMAGES images as rows), reconstructions.png, prior_samples.png, report.json (MIG per factor,
active dims, and the held-out reconstruction MSE and KL: what data without factors is judged
by), samples.npz (decoded prior samples, uint8 NHWC `images`) and metrics.json (FID, KID,
precision, recall against held-out images, with the real-vs-real floor).
"""
import torch

from train.inference import load_run
from train.evaluator import write_metrics
from train.vae_figures import decode, write_vae_figures
from utils.config import check_positive, resolve_constants
from utils.data import to_uint8
from utils.device import resolve_device, seed_everything
from utils.cli import run_cli
from utils.errors import UserError
from utils.run_index import write_indexes
from utils.runs import MetricsLog, write_json
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
DATA_ROOT = "data"  # torchvision's downloads, or the image folder of DATASET="folder"


def main(argv=None) -> dict:
    const = resolve_constants(globals(), argv)
    check_positive(const, "N_IMAGES", "N_VALUES")
    seed_everything(const.SEED)
    device = resolve_device(const.DEVICE)
    loaded = load_run(const.SAVE_ROOT, "vae", const.RUN, device)
    model, run, latent_dim = loaded.nets["vae"], loaded.run, loaded.nets["vae"].latent_dim
    if const.DIM is not None and not 0 <= const.DIM < latent_dim:
        raise UserError(f"DIM={const.DIM} is not a latent index (0..{latent_dim - 1})")
    test = loaded.data.held_out(root=const.DATA_ROOT)
    records = MetricsLog(run.metrics_path).read()[:loaded.state["epoch"]]
    kl_dims = records[-1]["test_kl_dims"] if records else [0.0] * latent_dim
    out = run.plots / "eval"
    report = write_vae_figures(model, test, kl_dims, out, loaded.title, n_images=const.N_IMAGES,
                               n_values=const.N_VALUES, seed=const.SEED, dim=const.DIM)
    if records:  # what a data set without factors (no MIG) is judged by: the held-out ELBO terms
        report["held_out"] = {"mse": records[-1]["test_mse"], "kl": records[-1]["test_kl"]}
        write_json(out / "report.json", report)
    if const.N_SAMPLES > 0:
        images, ms = draw_samples(
            lambda _, k: to_uint8(decode(model, torch.randn(k, latent_dim))),
            const.N_SAMPLES, 500, device)
        save_samples_npz(images, out / "samples.npz")
        if const.METRICS:
            write_metrics(images, None, loaded.data.dataset, out, device,
                          extractor=const.EXTRACTOR, save_root=const.SAVE_ROOT,
                          data_root=const.DATA_ROOT,
                          seed=loaded.data.seed,
                          sampling={"sampler": "decoder of prior samples", "ms_per_image": ms})
    for f in report["factors"]:
        print(f"{f['factor']:>10s}: best latent z{f['best_latent']}, MIG {f['mig']:.3f}")
    mig = "n/a" if report["mig"] is None else f"{report['mig']:.3f}"
    write_indexes(out.parent)  # the run's index.html and saved_plots/index.html
    held = report.get("held_out")
    print(f"MIG {mig}; active dims by KL {report['active_dims']}"
          + (f"; held-out reconstruction MSE {held['mse']:.4f} per pixel (on [-1, 1]), KL "
             f"{held['kl']:.1f} nats per image" if held else "") + f"; done: figures in {out}")
    return report


if __name__ == "__main__":
    run_cli(main)
