"""Run folders, atomic checkpoints, resume, and the per-epoch metrics log.

A run `NNN-<family>-<dataset>-<tag>` has figures, config.json and metrics.jsonl under
`<SAVE_ROOT>/saved_plots/<family>/<run>/` and checkpoints under `<SAVE_ROOT>/saved_models/...`.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from utils import board, distributed, files
from utils.errors import UserError

CHECKPOINT = "latest.pt"
# Version 2: one documented dict per family (kind, model_args, data, training state, extras).
CHECKPOINT_VERSION = 2
# Keys every checkpoint of a kind holds (train/common.checkpoint_frame; the evaluator's cache).
REQUIRED_KEYS = {None: ("kind", "model_args", "data", "epoch", "step", "config"),
                 "evaluator": ("kind", "model_args", "model", "info"),
                 "latent_cache": ("kind", "mean", "logvar", "labels"),
                 "couplings": ("kind", "x", "count", "settings"),
                 "text_encoder": ("kind", "epoch", "config", "data", "tokenizer", "text_args",
                                  "text", "pair", "optimizer")}
_RUN_NAME = re.compile(r"^(\d{3,})-")
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=,-]{0,99}$")  # one safe path component


@dataclass(frozen=True)
class Run:
    """Where one run's figures and weights live."""
    family: str
    name: str
    plots: Path
    models: Path

    @property
    def checkpoint(self) -> Path:
        return self.models / CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        return self.plots / "metrics.jsonl"


def _folders(save_root: str | Path, family: str) -> tuple[Path, Path]:
    root = Path(save_root)
    return root / "saved_plots" / family, root / "saved_models" / family


def run_named(save_root, family: str, name: str) -> Run:
    """The Run of a family's run folder called `name`."""
    return _run(save_root, family, name)


def _run(save_root, family: str, name: str) -> Run:
    plots, models = _folders(save_root, family)
    return Run(family, name, plots / name, models / name)


def existing_runs(save_root, family: str) -> list[str]:
    names = set()
    for folder in _folders(save_root, family):
        if folder.is_dir():
            names.update(p.name for p in folder.iterdir() if _RUN_NAME.match(p.name))
    return sorted(names, key=lambda n: int(_RUN_NAME.match(n).group(1)))


def new_run(save_root: str | Path, family: str, dataset: str, tag: str = "") -> Run:
    """Create the next numbered run; never reuses or overwrites an existing one. The data set
    and tag become part of a folder name, so each must be one plain path component."""
    for what, part in (("TAG", tag), ("the data set name", dataset)):
        part = "" if part is None else str(part)
        if part and not _NAME_PART.fullmatch(part):
            raise UserError(f"{what} {part!r} cannot be part of a run's folder name: use up to "
                            f"100 letters, digits and . _ + = , - (starting with a letter or "
                            f"digit), no / or spaces")
    existing = existing_runs(save_root, family)
    number = int(_RUN_NAME.match(existing[-1]).group(1)) + 1 if existing else 1
    while True:
        name = "-".join(str(p) for p in (f"{number:03d}", family, dataset, tag) if p)
        run = _run(save_root, family, name)
        try:
            run.plots.mkdir(parents=True, exist_ok=False)
            break
        except FileExistsError:  # another process took this number first
            number += 1
    run.models.mkdir(parents=True, exist_ok=True)
    return run


def find_run(save_root: str | Path, family: str, which: str = "latest",
             marker: str | None = None) -> Run:
    """An existing run by name (or number prefix), or the newest one with a checkpoint (or,
    given `marker`, with that file in its plots folder)."""
    existing = existing_runs(save_root, family)
    plots_root, _ = _folders(save_root, family)
    if which == "latest":
        def complete(run: Run) -> bool:
            return (run.plots / marker).is_file() if marker else run.checkpoint.is_file()
        with_weights = [n for n in existing if complete(_run(save_root, family, n))]
        if not with_weights:
            what = marker or "a checkpoint"
            raise UserError(f"no {family} run with {what} under {Path(save_root).resolve()}"
                            f"; make one first")
        return _run(save_root, family, with_weights[-1])
    matches = [n for n in existing if n == which or n.startswith(f"{which}-")]
    if len(matches) != 1:
        hint = ", ".join(existing[-5:]) or "none"
        raise UserError(f"no single {family} run named {which!r} in {plots_root} "
                        f"(recent: {hint})")
    return _run(save_root, family, matches[0])


def save_checkpoint(state: dict, path: Path) -> None:
    """Write state to a temporary file in the same folder, then rename it over path. Under
    torchrun only rank 0 writes; the others wait until it has."""
    if not distributed.is_main():
        distributed.barrier()
        return
    with files.atomic_open(path) as handle:
        torch.save(state, handle)
    distributed.barrier()


def write_json(path: Path, obj) -> None:
    """A JSON file of the run, written atomically (rank 0 only under torchrun)."""
    if distributed.is_main():
        files.write_json(path, obj)


def load_checkpoint(path: Path, kind: str | None = None, map_location: Any = "cpu") -> dict:
    """Load a checkpoint of plain types with weights_only=True; a missing, corrupt, older or
    foreign file (or one of another kind than `kind`) is one clear line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling raises many kinds on a corrupt file
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint of this project "
                        f"({type(err).__name__})") from err
    if not isinstance(state, dict) or "config" not in state:
        raise UserError(f"checkpoint {path} is not a checkpoint of this project")
    version = state.get("version", 1)
    if version != CHECKPOINT_VERSION:
        raise UserError(f"checkpoint {path} has format version {version}, this code reads "
                        f"version {CHECKPOINT_VERSION}; train the run again (or use the "
                        f"commit that wrote it)")
    if kind is not None and state.get("kind") != kind:
        raise UserError(f"checkpoint {path} is a {state.get('kind')!r} checkpoint, not "
                        f"{kind!r}")
    required = REQUIRED_KEYS.get(state.get("kind"), REQUIRED_KEYS[None])
    missing = [k for k in required if k not in state]
    if missing or not isinstance(state.get("model_args", {}), dict):
        what = f"has no {', '.join(missing)}" if missing else "has model_args of the wrong type"
        raise UserError(f"checkpoint {path} {what}: it is damaged or was not written by this "
                        f"project")
    return state


def load_state(module: torch.nn.Module | Any, state: dict, what: str) -> None:
    """load_state_dict with a one-line error when the checkpoint does not fit the object."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"checkpoint does not match the {what} built from the constants "
                        f"({first}); use the constants the run was trained with") from err


def read_records(path: Path) -> list[dict]:
    """The JSON-object lines of a metrics.jsonl (none if it is missing or unreadable); lines
    that do not parse (the torn last line a kill leaves) are skipped."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class MetricsLog:
    """Append-only metrics.jsonl: one JSON object per epoch; with a TensorBoard writer
    (utils.board) each record's numbers and the epoch's sample images go there too."""

    def __init__(self, path: Path, writer=None):
        self.path = Path(path)
        self.writer = writer

    def read(self) -> list[dict]:
        """The records that are whole: a line a killed process tore, or that is not a JSON
        object, is skipped."""
        return read_records(self.path)

    def append(self, record: dict, images: torch.Tensor | None = None) -> None:
        """Log an epoch's record (and, given, its uint8 sample images at its step)."""
        if not distributed.is_main():
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            if images is not None and len(images):
                board.log_image(self.writer, "samples", images, record["step"])
            board.log_scalars(self.writer, record)

    def truncate(self, epochs_done: int) -> None:
        """Drop records past the checkpoint being resumed, so a resumed run logs each epoch once."""
        keep = [r for r in self.read() if r.get("epoch", 0) <= epochs_done]
        if distributed.is_main():
            files.write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))


def find_resume(save_root, family: str, which: str) -> tuple[Run, dict]:
    """The run RESUME names and its checkpoint."""
    run = find_run(save_root, family, which)
    return run, load_checkpoint(run.checkpoint, family)
