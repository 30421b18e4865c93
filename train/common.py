"""What every training loop shares: loss meters with a NaN guard, the MINUTES deadline, the stop
guard (Ctrl-C, NaN), epoch and batch progress bars, the checkpoint frame and the resume point.

Each family's loop in train/<family>.py reads top to bottom with these:

    with stop_guard(run, progress, save):
        for epoch in epoch_range(run, progress.epoch, epochs):
            for batch in batch_bar(batches, ..., deadline):
                step(batch)
            record = evaluate(); write_figures()
            if end_epoch(...):  # log, checkpoint when due, stop at the deadline
                break
"""
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from train.lr import fit_to_budget
from utils import board, distributed
from train.options import Deadline
from utils.data import DataSpec, ImageData, batches_per_epoch, iterate_batches
from utils.device import rng_state, set_rng_state
from utils.errors import Interrupted, UserError
from utils.files import unlock_run
from utils.run_index import write_indexes
from utils.runs import CHECKPOINT_VERSION, MetricsLog, Run, load_state

SYNC_EVERY = 10  # steps between host syncs: progress-bar losses and the NaN/inf check
EVAL_SEED = 1234  # every evaluation draws the same noise, so its numbers compare across epochs


class NonFiniteLoss(Exception):
    """A loss became NaN or inf."""


class LossMeter:
    """Sums losses on the device; syncs with the host only every SYNC_EVERY steps.

    At each sync the buffered per-step losses are checked, so a NaN or inf is reported with the
    exact step at which it first appeared.
    """

    def __init__(self, every: int = SYNC_EVERY):
        self.every, self.sums, self.count, self._pending = every, {}, 0, []

    def update(self, step: int, losses: dict[str, torch.Tensor]) -> dict[str, float] | None:
        """Add one step's scalar losses; returns the latest values when it synced, else None."""
        values = torch.stack([v.detach().float() for v in losses.values()])
        for name, value in zip(losses, values):
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1
        self._pending.append((step, list(losses), values))
        return self.sync() if len(self._pending) >= self.every else None

    def sync(self) -> dict[str, float]:
        """Check the buffered steps for NaN/inf (one host transfer) and return the latest losses.
        Under torchrun a NaN on any rank stops every rank (they sync at the same steps)."""
        if not self._pending:
            return {}
        stacked = torch.stack([v for _, _, v in self._pending]).cpu()
        bad = ~torch.isfinite(stacked)
        if distributed.any_rank(bool(bad.any())) and not bad.any():
            raise NonFiniteLoss(f"a loss became NaN or inf on another process by step "
                                f"{self._pending[-1][0]}")
        if bad.any():
            row = int(bad.any(dim=1).nonzero()[0])
            step, names, _ = self._pending[row]
            which = [n for n, b in zip(names, bad[row]) if b]
            raise NonFiniteLoss(f"loss {', '.join(which)} became {stacked[row][bad[row]][0]} "
                                f"at step {step}")
        latest = dict(zip(self._pending[-1][1], stacked[-1].tolist()))
        self._pending.clear()
        return latest

    def means(self) -> dict[str, float]:
        """Epoch means (syncs), over every rank's batches under torchrun."""
        self.sync()
        if not self.sums:
            return {}
        totals = distributed.mean_over_ranks(torch.stack(list(self.sums.values())))
        return {name: float(total) / max(self.count, 1)
                for name, total in zip(self.sums, totals.tolist())}


def eval_generator(device: torch.device) -> torch.Generator:
    """A private RNG for evaluation noise on `device` (CPU or CUDA), seeded the same every time.

    Evaluation never touches the global (training) RNG streams, so a run's training noise is
    the same with or without an evaluation in between.
    """
    return torch.Generator(device=device).manual_seed(EVAL_SEED)


def until(deadline: Deadline | None, batches: Iterable) -> Iterator:
    """The batches, stopping early once the deadline has passed (always at least one)."""
    for i, batch in enumerate(batches):
        if i and deadline is not None and deadline.passed():
            return
        yield batch


def batch_bar(batches: Iterable, total: int, epoch: int, epochs: int,
              deadline: Deadline | None = None):
    """One epoch's batches behind a tqdm bar, cut short by the deadline."""
    return tqdm(until(deadline, batches), total=total, desc=f"epoch {epoch}/{epochs}",
                leave=False, dynamic_ncols=True, mininterval=1.0,
                disable=None if distributed.is_main() else True)


def epoch_batches(data: ImageData, batch_size: int, device: torch.device, flip: bool,
                  epoch: int, epochs: int, deadline: Deadline | None = None):
    """One epoch of shuffled image batches (in memory or streamed) behind a tqdm bar."""
    return batch_bar(iterate_batches(data, batch_size, device, flip=flip, shard=True),
                     batches_per_epoch(data, batch_size), epoch, epochs, deadline)


def epoch_range(run: Run, epochs_done: int, epochs: int):
    """Epochs epochs_done + 1 .. epochs behind the run's progress bar."""
    return tqdm(range(epochs_done + 1, epochs + 1), desc=run.name, initial=epochs_done,
                total=epochs, unit="epoch", dynamic_ncols=True,
                disable=None if distributed.is_main() else True)


@dataclass
class Progress:
    """Where a loop is: epochs completed, optimiser steps taken, training images seen."""
    epoch: int = 0
    step: int = 0
    images: int = 0

    def advance(self, batch: torch.Tensor) -> int:
        """Count one optimiser step on `batch` (this rank's share of the global batch);
        returns the new step number."""
        self.step += 1
        self.images += len(batch) * distributed.world_size()
        return self.step


def _terminate_as_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def _sigterm_like_ctrl_c():
    """SIGTERM (what a cluster scheduler, `kill` or torchrun's agent sends) raises
    KeyboardInterrupt inside the block, as Ctrl-C does; the previous handler comes back after.
    Signal handlers can be set only in the main thread: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def stop_guard(run: Run, progress: Progress, save: Callable[[], None]):
    """Ctrl-C or SIGTERM saves a checkpoint (the interrupted epoch reruns on resume) and
    raises Interrupted (under torchrun it keeps the last checkpoint instead: saving takes a
    collective, and the other ranks may already have stopped, so no rank can wait on another);
    a NaN/inf loss raises a UserError without saving, so the last good checkpoint stays. The
    run's lock is released when the loop ends, however it ends."""
    try:
        with _sigterm_like_ctrl_c():
            yield
    except KeyboardInterrupt:
        if distributed.is_distributed():  # a save needs every rank, and some may be gone
            raise Interrupted(f"interrupted; the last checkpoint {run.checkpoint} is kept "
                              f"(resume with --RESUME={run.name})") from None
        save()
        raise Interrupted(f"interrupted; checkpoint saved to {run.checkpoint} "
                          f"(resume with --RESUME={run.name})") from None
    except NonFiniteLoss as err:
        kept = f"the last good checkpoint {run.checkpoint} is kept" if run.checkpoint.is_file() \
            else "no checkpoint had been written yet"
        raise UserError(f"training stopped: {err} (epoch {progress.epoch + 1}); {kept}") from None
    finally:
        unlock_run(run.models)


def open_log(run: Run, progress: Progress, config: dict) -> MetricsLog:
    """The run's metrics log, cut back to the checkpoint being resumed (epochs logged after it
    are redone), with a TensorBoard writer unless config's TENSORBOARD is False."""
    writer = board.open_board(run.plots, config.get("TENSORBOARD", True), progress.step)
    log = MetricsLog(run.metrics_path, writer)
    log.truncate(progress.epoch)
    return log


def end_epoch(run: Run, log: MetricsLog, bar, progress: Progress, record: dict, *,
              started: float, epochs: int, checkpoint_every: int, deadline: Deadline | None,
              save: Callable[[], None], images: torch.Tensor | None = None,
              schedulers: Sequence = (), epoch_steps: int = 0) -> bool:
    """Close the epoch of `record`: log it (with its wall seconds, and `images`, the epoch's
    samples, to TensorBoard), count it done, show its losses, checkpoint every
    `checkpoint_every` epochs, at the end and when the deadline has passed (rewriting the run's
    index.html); returns True when the deadline stops the run here. Under a deadline the
    PlannedLR `schedulers` are re-planned to end with it, from this epoch's seconds per step
    (`epoch_steps` steps)."""
    epoch = record["epoch"]
    seconds = time.perf_counter() - started
    log.append({**record, "seconds": seconds}, images)
    progress.epoch = epoch
    bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                     if k.startswith("train_") and isinstance(v, float)}, refresh=False)
    stop = deadline is not None and deadline.passed() and epoch < epochs
    if epoch % checkpoint_every == 0 or epoch == epochs or stop:
        save()
        write_indexes(run.plots)
    if stop:
        print(f"time budget reached: stopped after epoch {epoch} of {epochs}; "
              f"resume with --RESUME={run.name}")
    elif deadline is not None and schedulers:  # the cosine ends with the budget, not at EPOCHS
        fit_to_budget(schedulers, progress.step, deadline.seconds_left(),
                      seconds / max(epoch_steps, 1))
    return stop


def checkpoint_frame(kind: str, model_args: dict, data: DataSpec, progress: Progress,
                     config: dict, modules: dict) -> dict:
    """The part of every family's checkpoint that is the same: version, kind, model_args (the
    constructor arguments of each network), data spec, counters, RNG states (every rank's under
    torchrun, with the number of processes), the run's constants, and the state_dict of every
    module, optimizer and scheduler. Built on every rank (it gathers the RNG states)."""
    states = {name: obj.state_dict() for name, obj in modules.items() if obj is not None}
    rng = rng_state()
    return {"version": CHECKPOINT_VERSION, "kind": kind, "model_args": model_args,
            "data": data.as_dict(), "epoch": progress.epoch, "step": progress.step,
            "images": progress.images, "rng": rng, "rng_ranks": distributed.gather_objects(rng),
            "own_rng_ranks": distributed.gather_objects(distributed.own_rng_states()),
            "processes": distributed.world_size(), "config": config, **states}


def resume_point(modules: dict, state: dict | None) -> tuple[Progress, list[torch.Tensor]]:
    """(progress, sample frames) to continue from: restored from state, or a fresh start.

    With as many processes as the run had, each rank gets its own RNG state back and the run
    continues exactly; with another number each takes rank 0's (the data order and noise of
    every global batch stay those of the run) and a note says so.
    """
    if not state:
        return Progress(), []
    for name, obj in modules.items():
        if obj is not None:
            if name not in state:
                raise UserError(f"checkpoint has no '{name}' state; it was written by another "
                                f"kind of run")
            load_state(obj, state[name], name)
    saved_world, world = state["processes"], distributed.world_size()
    if saved_world == world:
        set_rng_state(state["rng_ranks"][distributed.rank()])
        own = state.get("own_rng_ranks")  # absent in runs saved before per-rank streams
        distributed.set_own_rng_states(own[distributed.rank()] if own else None)
    else:
        set_rng_state(state["rng"])
        distributed.set_own_rng_states(None)
        if distributed.is_main():
            print(f"note: the run was trained with {saved_world} process(es) and continues "
                  f"with {world}; each global batch keeps its images and noise, but dropout "
                  f"masks (drawn per process) differ from an unbroken run")
    return (Progress(state["epoch"], state["step"], state["images"]),
            list(state.get("frames", [])))


def stack_frames(frames: list[torch.Tensor], epochs_done: int) -> torch.Tensor:
    """The per-epoch sample frames of the completed epochs as one uint8 tensor for a checkpoint."""
    done = frames[:epochs_done]
    return torch.stack(done) if done else torch.zeros(0, dtype=torch.uint8)

