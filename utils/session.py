"""The first lines of every run script: seed, device, precision, datasets, run folder."""
import os
import sys
from types import SimpleNamespace
from typing import Sequence

import torch

from utils import distributed
from utils.config import check_choice, given_constants, like_default, save_config
from utils.data import DataSpec, ImageData, load_dataset
from utils.image_folder import folder_label
from utils.device import resolve_device, resolve_precision, seed_everything
from utils.errors import UserError
from utils.files import lock_run
from utils.runs import Run, find_resume, new_run, run_named


def seed_and_device(const: SimpleNamespace) -> tuple[torch.device, torch.dtype | None]:
    """Join torchrun's processes if started by it, seed every RNG (the same SEED on every rank),
    pick the device and autocast dtype, and say what was chosen (rank 0 alone prints)."""
    if getattr(const, "EPOCHS", 0) < 0:
        raise UserError(f"EPOCHS must be >= 0, got {const.EPOCHS}")
    device = distributed.init(resolve_device(const.DEVICE))
    if hasattr(const, "BATCH_SIZE"):
        distributed.local_batch(const.BATCH_SIZE)  # a global batch that does not divide: stop
    if not distributed.is_main():
        sys.stdout = open(os.devnull, "w")  # one copy of every message, from rank 0
    seed_everything(const.SEED)
    amp_dtype = resolve_precision(const.PRECISION, device)
    processes = (f", {distributed.world_size()} processes (global batch "
                 f"{const.BATCH_SIZE})" if distributed.is_distributed() else "")
    print(f"device {device}, precision {'bf16 autocast' if amp_dtype else 'fp32'}, "
          f"{torch.get_num_threads()} CPU threads{processes}")
    return device, amp_dtype


def denoiser_args(const: SimpleNamespace, in_channels: int, image_size: int,
                  num_classes: int = 0) -> dict:
    """model_args of the BACKBONE the constants choose: {"unet": ...} or {"dit": ...}."""
    check_choice("BACKBONE", const.BACKBONE, ("unet", "dit"))
    if const.BACKBONE == "dit":
        return {"dit": dict(in_channels=in_channels, image_size=image_size, patch=const.PATCH,
                            width=const.DIT_WIDTH, depth=const.DIT_DEPTH, heads=const.DIT_HEADS,
                            num_classes=num_classes, pos_embed=const.POS_EMBED)}
    return {"unet": dict(in_channels=in_channels, image_size=image_size, base=const.BASE,
                         channel_mult=tuple(const.CHANNEL_MULT), blocks=const.BLOCKS,
                         attention_resolutions=tuple(const.ATTENTION), heads=const.HEADS,
                         dropout=const.DROPOUT, num_classes=num_classes,
                         patch=const.UNET_PATCH)}


def load_splits(const: SimpleNamespace) -> tuple[DataSpec, ImageData, ImageData]:
    """The data spec of DATASET at IMAGE_SIZE and its train and test splits (N_TRAIN caps the
    train split if set)."""
    kwargs = dict(image_size=const.IMAGE_SIZE, root=const.DATA_ROOT, seed=const.SEED)
    train = load_dataset(const.DATASET, "train", n=getattr(const, "N_TRAIN", None),
                         channels=getattr(const, "CHANNELS", None), **kwargs)
    test = load_dataset(const.DATASET, "test", n=getattr(const, "N_TEST", None),
                        channels=train.shape[0], **kwargs)
    if len(train) < 2:  # batch statistics, the TC estimator and a held-out split need two
        raise UserError(f"{const.DATASET} gives {len(train)} training image(s); every family "
                        f"needs at least 2 (raise N_TRAIN or add images)")
    print(f"{const.DATASET}: {len(train)} train / {len(test)} test images of shape {train.shape}")
    return DataSpec(const.DATASET, const.IMAGE_SIZE, train.shape[0], const.SEED), train, test


# Constants that locate the run being resumed: always the ones in force now.
LOCATING = ("RESUME", "SAVE_ROOT")
# Constants a resumed run may change when they are typed on the command line (each change is
# printed); every other constant is the run's own, and typing a different value is refused.
CHANGEABLE_ON_RESUME = ("EPOCHS", "MINUTES", "DEVICE", "PRECISION", "DATA_ROOT", "TENSORBOARD",
                        "CHECKPOINT_EVERY")


def resume_run(const: SimpleNamespace, family: str, argv: Sequence[str] | None = None,
           output_constants: Sequence[str] = (), older_defaults: dict | None = None
           ) -> tuple[Run | None, dict | None, SimpleNamespace]:
    """With RESUME set: the run, its checkpoint and the constants it was started with.

    A constant the run's config does not hold (added to the script after the run started)
    takes its value in `older_defaults`, the behaviour before the constant existed, where the
    script names one; otherwise today's default.

    Only constants typed on the command line (argv, default sys.argv) change a resumed run:
    CHANGEABLE_ON_RESUME and the script's `output_constants` (those that only change figures)
    are applied and printed; any other that differs from the run's own value is a UserError,
    raised before anything is written.
    """
    if not const.RESUME:
        return None, None, const
    run, state = find_resume(const.SAVE_ROOT, family, const.RESUME)
    saved = state["config"]
    older = older_defaults or {}
    values = {name: like_default(saved[name], default) if name in saved
              else older.get(name, default) for name, default in vars(const).items()}
    values.update({name: getattr(const, name) for name in LOCATING})
    changeable = set(CHANGEABLE_ON_RESUME) | set(output_constants)
    changes = []
    for name in sorted(given_constants(argv) - set(LOCATING)):
        old, new = values[name], getattr(const, name)
        if new == old:
            continue
        if name not in changeable:
            raise UserError(f"--{name}={new!r} cannot change when resuming {run.name} (it was "
                            f"started with {old!r}); start a new run for a different {name}")
        values[name] = new
        changes.append(f"{name} {old!r} -> {new!r}")
    if distributed.is_main():  # before seed_and_device quietens the other ranks
        print(f"resuming {run.name} after epoch {state['epoch']} of {values['EPOCHS']}"
              + (f"; changed: {', '.join(changes)}" if changes else ""))
    return run, state, SimpleNamespace(**values)


def open_run(const: SimpleNamespace, family: str, tag: str, resumed: Run | None = None,
             dataset: str | None = None) -> Run:
    """The resumed run with its config.json brought up to date, or a new numbered run folder
    named after `dataset` (default DATASET) with the constants saved as config.json; either
    locked for this process (a second process resuming the same run is refused in one line).
    Under torchrun rank 0 creates and locks it and every rank gets its name (or the error)."""
    name, problem = None, None
    if distributed.is_main():
        try:
            label = dataset or const.DATASET
            if label == "folder":  # the run is named after the folder (001-gan-cifar10-z100)
                label = folder_label(const.DATA_ROOT)
            run = resumed or new_run(const.SAVE_ROOT, family, label, tag)
            lock_run(run.models, run.name)
            save_config(const, run.plots / "config.json")
            if resumed is None:
                print(f"run {run.name}: figures in {run.plots}, weights in {run.models}")
            name = run.name
        except UserError as err:
            problem = str(err)
    name, problem = distributed.broadcast_object((name, problem))
    if problem:
        raise UserError(problem)
    return run_named(const.SAVE_ROOT, family, name)
