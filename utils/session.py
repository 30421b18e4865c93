"""The first lines of every run script: seed, device, precision, datasets, run folder."""
from types import SimpleNamespace

import torch

from utils.config import save_config
from utils.data import ImageData, load_dataset
from utils.device import resolve_device, resolve_precision, seed_everything
from utils.errors import UserError
from utils.runs import Run, find_resume, new_run


def start(c: SimpleNamespace) -> tuple[torch.device, torch.dtype | None]:
    """Seed every RNG, pick the device and autocast dtype, and say what was chosen."""
    if getattr(c, "EPOCHS", 0) < 0:
        raise UserError(f"EPOCHS must be >= 0, got {c.EPOCHS}")
    seed_everything(c.SEED)
    device = resolve_device(c.DEVICE)
    amp_dtype = resolve_precision(c.PRECISION, device)
    print(f"device {device}, precision {'bf16 autocast' if amp_dtype else 'fp32'}, "
          f"{torch.get_num_threads()} CPU threads")
    return device, amp_dtype


def datasets(c: SimpleNamespace, channels: int | None = None) -> tuple[ImageData, ImageData]:
    """Train and test splits of DATASET at IMAGE_SIZE (N_TRAIN caps the train split if set)."""
    kwargs = dict(image_size=c.IMAGE_SIZE, channels=channels, root=c.DATA_ROOT, seed=c.SEED)
    train = load_dataset(c.DATASET, "train", n=getattr(c, "N_TRAIN", None), **kwargs)
    test = load_dataset(c.DATASET, "test", n=getattr(c, "N_TEST", None), **kwargs)
    print(f"{c.DATASET}: {len(train)} train / {len(test)} test images of shape {train.shape}")
    return train, test


# Constants a resumed run takes from the command line; all others come from its config.json.
RESUME_OVERRIDES = ("EPOCHS", "MINUTES", "RESUME", "DEVICE", "PRECISION", "SAVE_ROOT", "DATA_ROOT")


def resume(c: SimpleNamespace, family: str) -> tuple[Run | None, dict | None, SimpleNamespace]:
    """With RESUME set: the run, its checkpoint and its saved constants (EPOCHS etc. from now)."""
    if not c.RESUME:
        return None, None, c
    run, state = find_resume(c.SAVE_ROOT, family, c.RESUME)
    saved = dict(state["config"])
    merged = {**vars(c), **{k: v for k, v in saved.items() if k in vars(c)}}
    merged.update({k: getattr(c, k) for k in RESUME_OVERRIDES if hasattr(c, k)})
    for key, value in merged.items():  # JSON turned tuples into lists
        if isinstance(getattr(c, key), tuple) and isinstance(value, list):
            merged[key] = tuple(value)
    print(f"resuming {run.name} after epoch {state['epoch']} of {merged['EPOCHS']}")
    return run, state, SimpleNamespace(**merged)


def create_run(c: SimpleNamespace, family: str, tag: str) -> Run:
    """A new numbered run folder with the resolved constants saved as config.json."""
    run = new_run(c.SAVE_ROOT, family, c.DATASET, tag)
    save_config(c, run.plots / "config.json")
    print(f"run {run.name}: figures in {run.plots}, weights in {run.models}")
    return run
