"""The learning-rate plan of the diffusion, autoencoder and GAN loops: warm-up, then constant or
cosine, re-planned when a resumed run is given more epochs or a MINUTES budget moves its end.

Re-planning never makes the rate rise, with one stated exception: a cosine that had already
finished (the rate at its minimum) and is given more epochs restarts (a warm restart, SGDR,
Loshchilov & Hutter 2017): a linear ramp over RESTART_RAMP of the added steps up to
RESTART_FACTOR x LR, then a new half-cosine down to the minimum at the new end. Continuing at the
minimum (0 by default) would train every added epoch at LR 0 while reporting progress.
"""
import math

import torch

from utils import distributed

LR_KINDS = ("constant", "cosine")
RESTART_FACTOR = 0.5  # peak of a finished cosine's warm restart, as a fraction of LR
RESTART_RAMP = 0.05  # share of the added steps over which the restart ramps up to it


class LRPlan:
    """Learning-rate multiplier per optimiser step: linear warm-up to 1, then constant or a
    half-cosine (Loshchilov & Hutter 2017) from the anchor down to min_factor at total_steps.

    The anchor is the end of warm-up (factor 1) until the plan is moved: replan() moves it to
    the resume point with the factor reached there, so a longer (or shorter) run continues
    downwards from where it was. A warm restart sets ramp_steps: the plan then climbs from
    ramp_from to anchor_factor over ramp_steps steps after the anchor before its cosine.
    limit_steps is the end that EPOCHS sets, which a MINUTES budget may bring forward but never
    move past. Its attributes are plain numbers, so LambdaLR's state_dict saves them with the
    checkpoint (one written before ramps existed loads with none).
    """

    def __init__(self, warmup_steps: int, total_steps: int, kind: str = "constant",
                 min_factor: float = 0.0):
        if kind not in LR_KINDS:
            raise ValueError(f"LR schedule must be one of {LR_KINDS}, got {kind!r}")
        self.warmup_steps, self.total_steps, self.kind = warmup_steps, total_steps, kind
        self.min_factor, self.limit_steps = min_factor, total_steps
        self.anchor_step, self.anchor_factor = warmup_steps, 1.0
        self.ramp_steps, self.ramp_from = 0, 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        into = step - self.anchor_step
        if 0 <= into < self.ramp_steps:
            return self.ramp_from + (self.anchor_factor - self.ramp_from) * (into + 1) \
                / self.ramp_steps
        start = self.anchor_step + self.ramp_steps
        progress = min(1.0, max(0.0, (step - start) / max(1, self.total_steps - start)))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.min_factor + (self.anchor_factor - self.min_factor) * cosine

    def finished(self, step: int) -> bool:
        """Whether a cosine plan has reached its minimum by `step` (steps done)."""
        return self.kind == "cosine" and step >= max(self.total_steps, self.warmup_steps)

    def replan(self, step: int, total_steps: int) -> None:
        """Continue from `step` (steps done) to a new total: the same factor now, the minimum at
        the end (during a restart's ramp the ramp goes on and only the end moves)."""
        ramping = 0 <= step - self.anchor_step < self.ramp_steps
        if step > self.anchor_step and not ramping:
            self.anchor_factor, self.anchor_step = self(step), step
            self.ramp_steps = 0
        self.total_steps = total_steps

    def restart(self, step: int, total_steps: int) -> None:
        """A warm restart of a finished cosine for the steps from `step` to total_steps."""
        added = total_steps - step
        self.ramp_from = self(step)
        self.anchor_step, self.total_steps = step, total_steps
        self.anchor_factor = max(RESTART_FACTOR, self.min_factor)
        self.ramp_steps = max(1, min(added - 1, round(RESTART_RAMP * added)))

    def extend(self, step: int, total_steps: int) -> str | None:
        """Re-plan for the total that new constants give; returns what a user should be told
        (a warm restart), or None."""
        self.limit_steps = total_steps
        if self.finished(step) and total_steps > step:
            self.restart(step, total_steps)
            return (f"the learning rate's cosine had finished (LR at {self.ramp_from:.3g} x its "
                    f"peak); the {total_steps - step} added steps warm-restart it: a ramp over "
                    f"{self.ramp_steps} steps to {self.anchor_factor:g} x LR, then a new cosine "
                    f"to the minimum")
        self.replan(step, total_steps)
        return None


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
        saved = state_dict["lr_lambdas"][0] or {}
        super().load_state_dict(state_dict)  # the plan as saved, with the run's earlier total
        self.plan.limit_steps = saved.get("limit_steps", saved.get("total_steps", total))
        if self.plan.limit_steps != total:
            note = self.plan.extend(self.last_epoch, total)
            if note:
                print(f"note: {note}")


def fit_to_budget(schedulers, step: int, seconds_left: float | None, seconds_per_step: float
                  ) -> None:
    """Re-plan each PlannedLR to end when a MINUTES budget will: at `step` plus the steps that
    fit in seconds_left at seconds_per_step (rank 0's estimate under torchrun, so every rank
    keeps the same rate), but not past the end EPOCHS sets. Called after every epoch, it moves
    the end both ways: sooner when epochs are slower than planned, later when they got faster
    (after a slow start), so the rate reaches its minimum with the budget, not before. The rate
    continues from where it is (replan): no jump, and it never rises. Without a budget
    (seconds_left None) nothing changes."""
    if seconds_left is None:
        return
    seconds_left, seconds_per_step = distributed.broadcast_object((seconds_left, seconds_per_step))
    total = step + max(1, int(seconds_left / max(seconds_per_step, 1e-9)))
    for sched in schedulers:
        plan = sched.plan
        target = min(total, plan.limit_steps)
        if target != plan.total_steps and not plan.finished(step):
            plan.replan(step, target)
