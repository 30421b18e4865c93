"""The learning-rate plan of the diffusion, autoencoder and GAN loops: warm-up, then constant or
cosine, re-planned (never rising again) when a resumed run is given more epochs or a MINUTES
budget ends it sooner."""
import math

import torch

from utils import distributed

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


def fit_to_budget(schedulers, step: int, seconds_left: float | None, seconds_per_step: float
                  ) -> None:
    """Shorten each PlannedLR so it ends when a MINUTES budget will: at `step` plus the steps
    that fit in seconds_left at seconds_per_step (rank 0's estimate under torchrun, so every
    rank keeps the same rate). A plan already ending sooner is kept; the rate continues from
    where it is (replan), so it never jumps. Without a budget (seconds_left None) nothing
    changes."""
    if seconds_left is None:
        return
    seconds_left, seconds_per_step = distributed.broadcast_object((seconds_left, seconds_per_step))
    total = step + max(1, int(seconds_left / max(seconds_per_step, 1e-9)))
    for sched in schedulers:
        if total < sched.plan.total_steps:
            sched.plan.replan(step, total)
