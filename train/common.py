"""What every training loop shares: loss meters with a NaN guard, the epoch driver, a wall-clock
budget, the learning-rate plan, checkpoints."""
import math
import time
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from utils.data import ImageData, batches_per_epoch, iterate_batches
from utils.device import rng_state, set_rng_state
from utils.errors import Interrupted, UserError
from utils.runs import MetricsLog, Run, load_state, save_checkpoint

SYNC_EVERY = 10  # steps between host syncs: progress-bar losses and the NaN/inf check


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
        """Check the buffered steps for NaN/inf (one host transfer) and return the latest losses."""
        if not self._pending:
            return {}
        stacked = torch.stack([v for _, _, v in self._pending]).cpu()
        bad = ~torch.isfinite(stacked)
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
        """Epoch means (syncs)."""
        self.sync()
        return {name: float(total) / max(self.count, 1) for name, total in self.sums.items()}


EVAL_SEED = 1234  # every evaluation draws the same noise, so its numbers compare across epochs


def eval_generator(device: torch.device) -> torch.Generator:
    """A private RNG for evaluation noise on `device` (CPU or CUDA), seeded the same every time.

    Evaluation never touches the global (training) RNG streams, so a run's training noise is
    the same with or without an evaluation in between.
    """
    return torch.Generator(device=device).manual_seed(EVAL_SEED)


LR_KINDS = ("constant", "cosine")


class LRPlan:
    """Learning-rate multiplier per optimiser step: linear warm-up to 1, then constant or a
    half-cosine (Loshchilov & Hutter 2017) from the anchor down to min_factor at total_steps.

    The anchor is the end of warm-up (factor 1) until the run is extended: replan() moves it to
    the resume point with the factor reached there, so a longer run continues downwards from
    where it was and the rate never rises after warm-up. Its attributes are plain numbers, so
    LambdaLR's state_dict saves them with the checkpoint.
    """

    def __init__(self, warmup_steps: int, total_steps: int, kind: str = "constant",
                 min_factor: float = 0.0):
        if kind not in LR_KINDS:
            raise ValueError(f"LR schedule must be one of {LR_KINDS}, got {kind!r}")
        self.warmup_steps, self.total_steps, self.kind = warmup_steps, total_steps, kind
        self.min_factor = min_factor
        self.anchor_step, self.anchor_factor = warmup_steps, 1.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.anchor_step)
        progress = min(1.0, max(0.0, (step - self.anchor_step) / span))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.min_factor + (self.anchor_factor - self.min_factor) * cosine

    def replan(self, step: int, total_steps: int) -> None:
        """Continue from `step` (steps done) to a new total: same factor now, minimum at the end."""
        if step > self.anchor_step:
            self.anchor_factor, self.anchor_step = self(step), step
        self.total_steps = total_steps


class PlannedLR(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR driven by one LRPlan; loading a checkpoint written with another total number of
    steps re-plans from the checkpoint's step instead of restoring the old plan."""

    def __init__(self, optimizer: torch.optim.Optimizer, plan: LRPlan):
        super().__init__(optimizer, plan)

    @property
    def plan(self) -> LRPlan:
        return self.lr_lambdas[0]

    def load_state_dict(self, state_dict: dict) -> None:
        total = self.plan.total_steps  # planned from the constants in force now
        super().load_state_dict(state_dict)  # the plan as saved, with the run's earlier total
        if self.plan.total_steps != total:
            self.plan.replan(self.last_epoch, total)


_deadline: ContextVar[float | None] = ContextVar("training_deadline", default=None)


@contextmanager
def time_budget(minutes: float | None):
    """Inside this block training stops once `minutes` of wall time have passed (None: no limit).

    The epoch in progress ends early (its evaluation, log record and checkpoint still happen) and
    no further epoch starts, so a run stopped this way is complete and can be resumed.
    """
    if minutes is not None and minutes <= 0:
        raise UserError(f"MINUTES must be > 0 (or None for no limit), got {minutes}")
    token = _deadline.set(None if minutes is None else time.monotonic() + 60.0 * minutes)
    try:
        yield
    finally:
        _deadline.reset(token)


def out_of_time() -> bool:
    """Whether the enclosing time_budget has run out (False outside one)."""
    deadline = _deadline.get()
    return deadline is not None and time.monotonic() >= deadline


def until_out_of_time(batches: Iterable) -> Iterator:
    """The batches, stopping early when the time budget runs out (always at least one)."""
    for i, batch in enumerate(batches):
        if i and out_of_time():
            return
        yield batch


def epoch_batches(data: ImageData, batch_size: int, device: torch.device, flip: bool,
                  epoch: int, epochs: int):
    """One epoch's shuffled batches behind a tqdm bar."""
    return tqdm(until_out_of_time(iterate_batches(data, batch_size, device, flip=flip)),
                total=batches_per_epoch(data, batch_size), desc=f"epoch {epoch}/{epochs}",
                leave=False, dynamic_ncols=True, mininterval=1.0)


def run_epochs(run: Run, start_epoch: int, epochs: int, checkpoint_every: int,
               train_epoch: Callable[[int], dict], save: Callable[[int], None]) -> int:
    """Call train_epoch for each remaining epoch, log its record, checkpoint every N epochs;
    returns the last epoch done (fewer than `epochs` when a time_budget ran out).

    Ctrl-C saves a checkpoint of the current weights (the interrupted epoch reruns on resume);
    a NaN/inf loss stops without saving, so the last good checkpoint stays as it was.
    """
    log = MetricsLog(run.metrics_path)
    log.truncate(start_epoch)  # epochs logged after the checkpoint being resumed are redone
    done = start_epoch
    bar = tqdm(range(start_epoch + 1, epochs + 1), desc=run.name, initial=start_epoch,
               total=epochs, unit="epoch", dynamic_ncols=True)
    try:
        for epoch in bar:
            started = time.perf_counter()
            record = train_epoch(epoch)
            record = {"epoch": epoch, **record, "seconds": time.perf_counter() - started}
            log.append(record)
            done = epoch
            bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                             if k.startswith("train_") and isinstance(v, float)}, refresh=False)
            if out_of_time() and epoch < epochs:
                save(epoch)
                print(f"time budget reached: stopped after epoch {epoch} of {epochs}; "
                      f"resume with --RESUME={run.name}")
                break
            if epoch % checkpoint_every == 0 or epoch == epochs:
                save(epoch)
    except KeyboardInterrupt:
        save(done)
        raise Interrupted(f"interrupted; checkpoint saved to {run.checkpoint} "
                          f"(resume with --RESUME={run.name})") from None
    except NonFiniteLoss as err:
        kept = f"the last good checkpoint {run.checkpoint} is kept" if run.checkpoint.is_file() \
            else "no checkpoint had been written yet"
        raise UserError(f"training stopped: {err} (epoch {done + 1}); {kept}") from None
    finally:
        bar.close()
    return done


def training_state(modules: dict, epoch: int, step: int, config: dict, **extra) -> dict:
    """A checkpoint: state_dicts of every module/optimizer/scheduler, counters, RNG, config."""
    state = {name: obj.state_dict() for name, obj in modules.items() if obj is not None}
    return {**state, "epoch": epoch, "step": step, "rng": rng_state(), "config": config, **extra}


def resume_point(modules: dict, state: dict | None) -> tuple[int, int, list[torch.Tensor]]:
    """(epoch, step, sample frames) to continue from: restored from state, or a fresh start."""
    if not state:
        return 0, 0, []
    epoch, step = restore_training_state(modules, state)
    return epoch, step, list(state["frames"])


def restore_training_state(modules: dict, state: dict) -> tuple[int, int]:
    """Load every module's state_dict and the RNG; returns (epoch, step) to continue from."""
    for name, obj in modules.items():
        if obj is not None:
            if name not in state:
                raise UserError(f"checkpoint has no '{name}' state; it was written by another "
                                f"kind of run")
            load_state(obj, state[name], name)
    set_rng_state(state["rng"])
    return state["epoch"], state["step"]


def save_training_state(path: Path, modules: dict, epoch: int, step: int, config: dict,
                        **extra) -> None:
    """training_state() written atomically."""
    save_checkpoint(training_state(modules, epoch, step, config, **extra), path)


def stack_frames(frames: list[torch.Tensor], epochs_done: int) -> torch.Tensor:
    """The per-epoch sample frames of the completed epochs as one uint8 tensor for a checkpoint."""
    done = frames[:epochs_done]
    return torch.stack(done) if done else torch.zeros(0, dtype=torch.uint8)
