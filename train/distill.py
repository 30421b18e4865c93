"""Distillation losses on a DiffusionSetup (the student), for diffusion_step's loss_fn: reflow's
flow matching on the teacher's couplings and progressive distillation's one-step-for-two target
(models/distill.py has the formulas)."""
import torch
import torch.nn.functional as F

from models.diffusion import Denoiser
from models.distill import coefficients, ddim_move, progressive_target, student_target
from train.diffusion_step import QUARTERS, DiffusionSetup, diffusion_loss
from utils import distributed
from utils.device import autocast


def reflow_loss(setup: DiffusionSetup, x: torch.Tensor, labels, *, noise: torch.Tensor):
    """Flow matching on coupled pairs: the teacher's ODE endpoint x and the noise it came from
    (Liu et al. 2023); labels are the ones the teacher drew x for (no dropout: a guided
    teacher's guidance is baked into the pairs)."""
    if setup.prediction_type != "flow":
        raise ValueError(f"reflow trains a flow model, the student predicts "
                         f"{setup.prediction_type!r}")
    return diffusion_loss(setup, x, labels, noise=noise)


def progressive_loss(setup: DiffusionSetup, x0: torch.Tensor, labels, *, teacher: Denoiser,
                     table: torch.Tensor, move=None):
    """Salimans & Ho (2022, algorithm 2): a training image noised at the start of one of the
    student's steps (a row of `table`, models.distill.progressive_steps, drawn per sample),
    the teacher's two DDIM steps from there, and the student's MSE to the output that makes
    its one step land on the same point, in its own parameterisation. `move`: the teacher's
    step (models.distill.MOVES; None: DDIM, as in the paper)."""
    schedule = setup.schedule
    rows = table.to(x0.device)[distributed.randint(len(table), len(x0), x0.device)]
    t = rows[:, 0]
    eps = distributed.randn(x0.shape, dtype=x0.dtype, device=x0.device)
    alpha, sigma = coefficients(schedule, t, x0)
    z_t = alpha * x0 + sigma * eps
    x_target = progressive_target(teacher, z_t, rows, labels, move or ddim_move)
    target = student_target(schedule, x_target, z_t, t, setup.prediction_type)
    student_labels = labels if labels is not None and setup.model.num_classes else None
    with distributed.own_rng(setup.device), autocast(setup.device, setup.amp_dtype):
        out = setup.train_net(z_t, schedule.net_time(t), student_labels)
    per_sample = F.mse_loss(out.float(), target.float(), reduction="none").flatten(1).mean(1)
    quarter = t * QUARTERS // schedule.timesteps
    return per_sample.mean(), per_sample.detach(), quarter
