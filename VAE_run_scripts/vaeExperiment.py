"""The beta-VAE experiment: beta = 1 fixed, beta = 4 fixed and adaptive beta (beta_init 1), same
data, seed and epochs, each a normal vaemain run; then the comparison of vaeEvalExperiments.

    python -m VAE_run_scripts.vaeExperiment
    python -m VAE_run_scripts.vaeExperiment --EPOCHS=30 --DATASET=digits

Writes the three runs to saved_plots/vae/<run>/ (see vaemain) and experiment.json plus the
comparison figures and table to saved_plots/vae_experiment/<experiment>/ (see vaeEvalExperiments).
"""
from VAE_run_scripts import vaeEvalExperiments, vaemain
from utils import distributed
from utils.device import resolve_device
from utils.config import check_positive, resolve_constants, save_config
from utils.cli import run_cli
from utils.errors import UserError
from utils.runs import new_run, run_named, write_json

DATASET = "shapes"  # shapes, shapes-arc, digits (embedded); cifar10, mnist, ... (online)
IMAGE_SIZE = 32  # pixels
N_TRAIN = None  # cap on training images (None: the whole split)
LATENT_DIM = 10  # latent dimensions
EPOCHS = 15  # epochs of every run
BATCH_SIZE = 128  # images per step
LR = 1e-3  # Adam learning rate
SEED = 0  # the same seed for every run
RUNS = (("fixed", 1.0), ("fixed", 4.0), ("adaptive", 1.0))  # (BETA_MODE, beta or beta_init)
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto, bf16, fp32
SAVE_ROOT = "."  # saved_plots/ and saved_models/ are created here
DATA_ROOT = "data"  # torchvision's downloads, or the image folder of DATASET="folder"


def main(argv=None):
    const = resolve_constants(globals(), argv)
    check_positive(const, "EPOCHS", "BATCH_SIZE", "LR", "LATENT_DIM")
    for mode, beta in const.RUNS:
        if mode not in ("fixed", "warmup", "adaptive") or not beta > 0:
            raise UserError(f"RUNS entry {(mode, beta)!r} must be (fixed|warmup|adaptive, beta>0)")
    shared = [f"--{k}={getattr(const, k)!r}" for k in ("DATASET", "IMAGE_SIZE", "N_TRAIN",
              "LATENT_DIM", "EPOCHS", "BATCH_SIZE", "LR", "SEED", "DEVICE", "PRECISION",
              "SAVE_ROOT", "DATA_ROOT")]
    # under torchrun: one experiment folder, made by rank 0
    distributed.init(resolve_device(const.DEVICE))
    name = None
    if distributed.is_main():
        experiment = new_run(const.SAVE_ROOT, "vae_experiment", const.DATASET)
        experiment.models.rmdir()  # an experiment only has figures; its runs hold the weights
        save_config(const, experiment.plots / "config.json")
        name = experiment.name
    experiment = run_named(const.SAVE_ROOT, "vae_experiment", distributed.broadcast_object(name))
    names = []
    for mode, beta in const.RUNS:
        value = f"--BETA_INIT={beta!r}" if mode == "adaptive" else f"--BETA={beta!r}"
        tag = f"{mode}{beta:g}" if mode == "adaptive" else f"beta{beta:g}"
        print(f"=== {tag} ===")
        run, _ = vaemain.main([*shared, "--OBJECTIVE=beta", f"--BETA_MODE={mode}", value,
                               f"--TAG={tag}"])  # the beta-VAE objective, whatever vaemain's is
        names.append(run.name)
        write_json(experiment.plots / "experiment.json", {"runs": names})
    if distributed.is_main():
        vaeEvalExperiments.main([f"--EXPERIMENT={experiment.name}",
                                 f"--SAVE_ROOT={const.SAVE_ROOT}"])


if __name__ == "__main__":
    run_cli(main)
