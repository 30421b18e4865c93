"""TensorBoard logs in each run's folder (`saved_plots/<family>/<run>/tensorboard/`).

The `tensorboard` package is optional: without it (or with TENSORBOARD=False) nothing is
logged and training is unchanged. Only the main process writes. A resumed run opens the log
with purge_step just past its checkpoint, so TensorBoard drops what the interrupted process
logged after that checkpoint and the resumed run's steps follow on without duplicates.
"""
import json
from pathlib import Path

import torch

from utils import distributed
from utils.plots import tile

FOLDER = "tensorboard"  # under the run's plots folder
_NOTED = []  # the missing-package note is printed once per process


def _writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def open_board(run_plots: Path, enabled: bool, resume_step: int = 0):
    """A SummaryWriter on the run's log (None when disabled, not installed or not the main
    process); events at steps after resume_step (logged past the checkpoint) are purged."""
    if not enabled or not distributed.is_main():
        return None
    writer = _writer_class()
    if writer is None:
        if not _NOTED:
            print("note: the tensorboard package is not installed; no TensorBoard log "
                  "(pip install tensorboard, or TENSORBOARD=False to silence this)")
            _NOTED.append(True)
        return None
    return writer(str(Path(run_plots) / FOLDER),
                  purge_step=resume_step + 1 if resume_step else None)


def log_scalars(writer, record: dict) -> None:
    """Every number of an epoch's record except its counters, at the record's global step."""
    step = record["step"]
    for key, value in record.items():
        if key not in ("epoch", "step") and isinstance(value, (int, float)) \
                and not isinstance(value, bool):
            writer.add_scalar(key, value, step)
    writer.flush()


def log_image(writer, tag: str, images: torch.Tensor, step: int, columns: int = 8) -> None:
    """A uint8 (N, C, H, W) batch as one grid image."""
    writer.add_image(tag, tile(images.cpu(), columns, padding=1), step)
    writer.flush()


def _hparam(value):
    """TensorBoard's hparams take numbers, strings and bools; anything else as its repr."""
    if value is None:
        return "None"
    return value if isinstance(value, (bool, int, float, str)) else repr(value)


def log_final_metrics(run_plots: Path, metrics: dict) -> None:
    """The run's constants (config.json) as hyper-parameters with its scored metrics, beside
    the training log (only for runs that have one); called by the eval scripts."""
    run_plots = Path(run_plots)
    config_path = run_plots / "config.json"
    writer_class = _writer_class()
    if not (run_plots / FOLDER).is_dir() or not config_path.is_file() or writer_class is None \
            or not distributed.is_main():
        return
    config = json.loads(config_path.read_text())
    scores = {f"final/{k}": float(v) for k, v in metrics.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if "real_vs_real" in metrics:
        scores["final/fid_floor"] = float(metrics["real_vs_real"]["fid"])
    if "classes" in metrics:  # the mix of classes the evaluator sees in the samples
        scores["final/class_total_variation"] = float(metrics["classes"]["total_variation"])
    with writer_class(str(run_plots / FOLDER)) as writer:
        writer.add_hparams({k: _hparam(v) for k, v in config.items()}, scores, run_name="eval")
