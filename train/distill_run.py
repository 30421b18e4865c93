"""Distillation runs: a student made from a finished diffusion run (the teacher; pixels or
latents, train/distill_sources.py) by progressive distillation or reflow (models/distill.py,
train/distill.py), trained by the diffusion loop (train/diffusion.py) as an ordinary run of
the family: checkpoint, resume, torchrun, TensorBoard, index page, and the family's eval script
samples it with the steps it was made for.

The student starts from the teacher's EMA weights. Its checkpoint is a diffusion checkpoint with
"distilled": {method, teacher, steps, timesteps} (timesteps: the grid it was distilled on; None
where any grid of that many steps fits, as for a reflowed flow); a progressive run also keeps
"round_students": {steps: {weights, timesteps}}, the EMA weights each earlier round ended
with (round_student loads one).

progressive: epoch r is round r. Round 1's teacher is the teacher run (autoguided as
    DiffusionEval samples it, with AUTOGUIDANCE), stepping with TEACHER_SOLVER (ddim as in the
    paper, or heun: closer to its exact ODE for twice the calls); each later round's teacher is
    a frozen copy of the student's EMA at the end of the round before, stepping with DDIM (the
    steps it was taught), and the student restarts from it.
    Each round halves the steps, from TEACHER_STEPS down to STUDENT_STEPS.
reflow: PAIRS couplings (noise, the teacher's ODE endpoint) are drawn first, in chunks saved to
    couplings.pt beside the checkpoint (a cut-short run resumes them); then each epoch is one
    pass of flow matching over the pairs.
"""
import copy
import math

import torch
from tqdm import tqdm

from models.diffusion import Denoiser
from models.distill import (MOVES, coupling_noise, ddim_move, make_couplings,
                            progressive_steps)
from models.grids import spaced_timesteps
from train.diffusion_step import DiffusionSetup, build_diffusion, diffusion_step
from train.distill import progressive_loss, reflow_loss
from train.inference import (Loaded, build_network, checkpoint_denoiser, ema_network,
                             make_denoiser)
from train.options import Deadline
from utils import distributed
from utils.errors import UserError
from utils.runs import CHECKPOINT_VERSION, Run, load_checkpoint, save_checkpoint

METHODS = ("progressive", "reflow")
COUPLINGS = "couplings.pt"
_SAVE_EVERY = 1024  # couplings between saves of couplings.pt


def build_student(teacher: Loaded, const, device: torch.device, amp_dtype, total_steps: int
                  ) -> DiffusionSetup:
    """A trainable copy of the teacher's EMA network (and its EMA), with AdamW at LR."""
    if const.EMA_DECAY <= 0:
        raise UserError("EMA_DECAY must be > 0: the student is sampled with its EMA weights")
    process = teacher.state["diffusion"]
    schedule = checkpoint_denoiser(teacher.state, teacher.nets["net"]).schedule
    setup = build_diffusion(teacher.state["model_args"], schedule, device,
                            prediction_type=process["prediction"], lr=const.LR,
                            warmup_steps=const.WARMUP_STEPS, total_steps=total_steps,
                            ema_decay=const.EMA_DECAY, amp_dtype=amp_dtype)
    weights = teacher.nets["net"].state_dict()
    setup.model.load_state_dict(weights)
    setup.ema.module.load_state_dict(weights)
    return setup


def check_halvings(teacher_steps: int, student_steps: int) -> int:
    """The number of rounds from teacher_steps to student_steps (a power of two apart)."""
    rounds = math.log2(teacher_steps / student_steps) if student_steps > 0 else -1
    if rounds < 1 or rounds != int(rounds):
        raise UserError(f"progressive distillation halves the steps: TEACHER_STEPS "
                        f"({teacher_steps}) must be STUDENT_STEPS ({student_steps}) times 2, 4, "
                        f"8, ...")
    return int(rounds)


class Progressive:
    """Round bookkeeping of progressive distillation for the loop's hooks."""

    def __init__(self, setup: DiffusionSetup, teacher: Denoiser, teacher_steps: int,
                 record: dict, kept: dict, clip_x0: bool, first_solver: str = "ddim"):
        self.setup, self.first_teacher, self.record, self.kept = setup, teacher, record, kept
        self.clip_x0, self.first_move = clip_x0, MOVES[first_solver]
        self.move = self.first_move
        self.first_grid = spaced_timesteps(setup.schedule, teacher_steps)
        self.teacher, self.table = teacher, None

    def grid(self, epoch: int) -> list[int]:
        """The student's grid in round `epoch`: the first teacher's grid halved that often."""
        grid = self.first_grid
        for _ in range(epoch):
            grid = grid[::2]
        return grid

    def before_epoch(self, epoch: int) -> None:
        """Round `epoch`: its teacher (the run's, or the student so far, frozen) and table."""
        if epoch == 1:
            self.teacher, self.move = self.first_teacher, self.first_move
        else:  # the student restarts from its EMA, which a frozen copy now teaches
            weights = self.setup.ema.module.state_dict()
            done = self.grid(epoch - 1)  # the finished round's student is kept for benchmarks
            self.kept[len(done)] = {"weights": {k: v.detach().cpu().clone()
                                                for k, v in weights.items()},
                                    "timesteps": done}
            self.setup.model.load_state_dict(weights)
            frozen = copy.deepcopy(self.setup.ema.module).requires_grad_(False)
            self.teacher = make_denoiser(frozen, self.setup.schedule, self.setup.prediction_type,
                                         amp_dtype=self.setup.amp_dtype, clip_x0=self.clip_x0)
            self.move = ddim_move  # the student was taught DDIM steps: it teaches in them
        self.table = progressive_steps(self.grid(epoch - 1))
        grid = self.grid(epoch)
        self.record.update(steps=len(grid), timesteps=grid)

    def step(self, batch: tuple) -> dict:
        x0, labels = batch[0], (batch[1] if self.setup.model.num_classes else None)
        return diffusion_step(self.setup, x0, labels, loss_fn=progressive_loss,
                              teacher=self.teacher, table=self.table, move=self.move)


def round_batches(batches, steps: int):
    """`steps` batches, cycling through epochs of `batches()` as often as needed."""
    done = 0
    while done < steps:
        for batch in batches():
            yield batch
            done += 1
            if done == steps:
                return


def draw_couplings(run: Run, teacher: Denoiser, shape: tuple, const, num_classes: int,
                   device: torch.device, deadline: Deadline, config: dict) -> dict | None:
    """couplings.pt with PAIRS pairs, continuing one a cut-short run left (None: the deadline
    passed first; the pairs so far are saved). Rank 0 draws them; the others wait."""
    path = run.models / COUPLINGS
    made = load_checkpoint(path, "couplings") if path.is_file() else None
    settings = {"seed": const.SEED, "sampler": const.PAIR_SAMPLER, "steps": const.PAIR_STEPS}
    if made is not None and made["settings"] != settings:
        raise UserError(f"{path} was drawn with {made['settings']}, not {settings}")
    xs = [made["x"]] if made is not None else []
    done = len(xs[0]) if xs else 0
    if distributed.is_main() and done < const.PAIRS:
        bar = tqdm(total=const.PAIRS, initial=done, desc="couplings from the teacher's ODE",
                   dynamic_ncols=True)
        since = 0
        while done < const.PAIRS:
            count = min(const.BATCH_SIZE, const.PAIRS - done)
            _, _, x = make_couplings(teacher, done, count, shape, seed=const.SEED,
                                     sampler=const.PAIR_SAMPLER, steps=const.PAIR_STEPS,
                                     num_classes=num_classes, device=device)
            xs.append(x.half())
            done, since = done + count, since + count
            bar.update(count)
            stop = deadline.passed()
            if since >= _SAVE_EVERY or done == const.PAIRS or stop:
                _save_couplings(path, torch.cat(xs), settings, config)
                xs, since = [torch.cat(xs)], 0
            if stop:
                break
        bar.close()
    distributed.barrier()
    pairs = load_checkpoint(path, "couplings") if path.is_file() else None
    return pairs if pairs is not None and pairs["count"] >= const.PAIRS else None


def _save_couplings(path, x: torch.Tensor, settings: dict, config: dict) -> None:
    save_checkpoint({"version": CHECKPOINT_VERSION, "kind": "couplings", "x": x,
                     "count": len(x), "settings": settings, "config": config}, path)


def coupled_batches(pairs: dict, shape: tuple, seed: int, batch_size: int, num_classes: int,
                    device: torch.device):
    """One shuffled epoch of (x, labels or None, z) over the pairs; z is each pair's own seeded
    noise (models.distill.coupling_noise), regenerated rather than stored."""
    x = pairs["x"]
    if "z" not in pairs:
        pairs["z"] = torch.stack([coupling_noise(i, shape, seed) for i in range(len(x))])
    order = torch.randperm(len(x))
    labels = torch.arange(len(x)) % num_classes if num_classes else None
    for start in range(0, len(x) - batch_size + 1, batch_size):
        pick = distributed.shard(order[start:start + batch_size])
        yield (x[pick].float().to(device), None if labels is None else labels[pick].to(device),
               pairs["z"][pick].to(device))


def reflow_step(setup: DiffusionSetup, batch: tuple) -> dict:
    x, labels, z = batch
    return diffusion_step(setup, x, labels, loss_fn=reflow_loss, noise=z)


def round_student(state: dict, steps: int, device: torch.device, amp_dtype=None,
                  clip_x0: bool = True) -> Denoiser:
    """The Denoiser of a progressive run's student for `steps` steps: a kept round's, or the
    run's own EMA weights for its final steps (a UserError for steps it never had)."""
    record, kept = state.get("distilled") or {}, state.get("round_students") or {}
    net = build_network(state["model_args"]).to(device)
    if record.get("steps") == steps:
        net = ema_network(state, net)
    elif steps in kept:
        net.load_state_dict(kept[steps]["weights"])
        net = net.eval().requires_grad_(False)
    else:
        have = sorted([*kept, *([record["steps"]] if record else [])])
        raise UserError(f"this run has students for {have} steps, not {steps}")
    return checkpoint_denoiser(state, net, amp_dtype=amp_dtype, clip_x0=clip_x0)
