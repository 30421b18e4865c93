"""Score any samples.npz (this project's or anyone's) against held-out real images.

    python -m benchmarks.evaluate_samples --NPZ=saved_plots/ldm/<run>/eval/samples.npz

The file holds uint8 `images` (N, H, W, C) and optionally integer `labels` (N,). Prints FID, KID,
precision, recall (and class accuracy when labelled) with the real-vs-real floor, and writes them
to metrics.json beside the file.
"""
from pathlib import Path

from train.evaluator import write_metrics
from utils.config import resolve_constants
from utils.device import resolve_device
from utils.cli import run_cli
from utils.errors import UserError
from utils.samples import load_samples_npz

NPZ = "samples.npz"  # the file to score
DATASET = "shapes"  # the data set the samples imitate
EXTRACTOR = "evaluator"  # evaluator (the project's classifier) or inception (online)
SEED = 0  # the real data's seed (shapes)
DEVICE = "auto"  # auto, cpu, cuda
SAVE_ROOT = "."  # the evaluators are cached under SAVE_ROOT/saved_models/evaluators/
DATA_ROOT = "data"  # torchvision's downloads, or the image folder of DATASET="folder"


def main(argv=None) -> dict:
    const = resolve_constants(globals(), argv)
    path = Path(const.NPZ)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        images, labels = load_samples_npz(path)
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"{path} is not a samples.npz ({err})") from None
    return write_metrics(images, labels, const.DATASET, path.parent, resolve_device(const.DEVICE),
                         extractor=const.EXTRACTOR, save_root=const.SAVE_ROOT,
                         data_root=const.DATA_ROOT,
                         seed=const.SEED)


if __name__ == "__main__":
    run_cli(main)
