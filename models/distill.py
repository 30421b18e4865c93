"""Distillation of a diffusion model into a sampler of one to a few steps. Two methods:

reflow (rectified flow, Liu et al. 2023, "Flow Straight and Fast", sec. 2.2): draw noise z, run
    the teacher's probability-flow ODE from it to an image x, and train a flow model on the
    coupled pairs, x_t = (1 - t) x + t z with target v = z - x, instead of on independent
    (image, noise) pairs. The teacher's paths cross; the pairs' straight lines do not need to,
    so the student's ODE is straighter and a few Euler steps follow it.

progressive distillation (Salimans & Ho 2022, algorithm 2): a student starts as a copy of the
    teacher and learns to do in one DDIM step what the teacher does in two. From a noised
    training image z_t = alpha_t x + sigma_t eps the teacher steps t -> t' -> t''; the target
    is the x~ for which one DDIM step t -> t'' lands where the teacher did:
        x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t).
    The student then teaches the next round at half the steps: 2N -> N -> ... -> 1.

Both act on a Denoiser (models/diffusion.py), so any prediction type and the flow path work,
and on any tensor shape (pixels or latents). A DDIM step, x' = alpha' x0 + sigma' eps, is
Euler's method on the flow path, so a student samples with the project's ddim sampler.
"""
import torch

from models.diffusion import Denoiser, training_target
from models.samplers import sample


def coefficients(schedule, t: torch.Tensor, like: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) at grid indices t (B,), shaped to broadcast like `like`; index -1 is the
    clean end (1, 0)."""
    t = torch.as_tensor(t, device=like.device).long()
    alpha, sigma = schedule.coefficients(t.clamp(min=0), like)
    clean = (t < 0).reshape(-1, *([1] * (like.dim() - 1)))
    return torch.where(clean, torch.ones_like(alpha), alpha), torch.where(clean,
                                                                         torch.zeros_like(sigma),
                                                                         sigma)


def ddim_move(denoiser: Denoiser, x_t: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
              labels=None) -> torch.Tensor:
    """One deterministic DDIM step of `denoiser` from grid indices t to t_next (per sample)."""
    x0, eps = denoiser(x_t, t, labels)
    alpha, sigma = coefficients(denoiser.schedule, t_next, x_t)
    return alpha * x0 + sigma * eps


def progressive_steps(teacher_grid: list[int]) -> torch.Tensor:
    """(N, 3) rows (t, t', t'') of a student's N steps over a teacher's grid of 2N descending
    indices: the student's step i spans the teacher's steps 2i and 2i + 1 (-1: the clean end)."""
    if len(teacher_grid) < 2 or len(teacher_grid) % 2:
        raise ValueError(f"a teacher grid of an even number of steps >= 2 halves, got "
                         f"{len(teacher_grid)}")
    ends = list(teacher_grid) + [-1]
    return torch.tensor([[ends[2 * i], ends[2 * i + 1], ends[2 * i + 2]]
                         for i in range(len(teacher_grid) // 2)])


def _ode_variables(denoiser: Denoiser, t: torch.Tensor, like: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, tau) of the probability-flow ODE as heun_sample writes it: the state y = x /
    scale moves in time tau. Noise schedules: scale alpha, tau sigma / alpha (dy/dtau = eps);
    the flow path: scale 1, tau sigma = t (dy/dtau = eps - x0)."""
    alpha, sigma = coefficients(denoiser.schedule, t, like)
    if denoiser.schedule.kind == "flow":
        return torch.ones_like(alpha), sigma
    return alpha, sigma / alpha


def heun_move(denoiser: Denoiser, x_t: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
              labels=None) -> torch.Tensor:
    """One step of Heun's method (Karras et al. 2022, algorithm 1) on the probability-flow ODE
    from grid indices t to t_next (per sample; two network calls), in heun_sample's variables;
    an Euler (= DDIM) step where t_next is the clean end, as there."""
    flow = denoiser.schedule.kind == "flow"

    def slope(x0, eps):
        return eps - x0 if flow else eps
    x0, eps = denoiser(x_t, t, labels)
    (scale, tau), (scale_n, tau_n) = (_ode_variables(denoiser, t, x_t),
                                      _ode_variables(denoiser, t_next, x_t))
    y, d = x_t / scale, slope(x0, eps)
    euler = scale_n * (y + (tau_n - tau) * d)
    x0_e, eps_e = denoiser(euler, t_next.clamp(min=0), labels)
    heun = scale_n * (y + (tau_n - tau) * 0.5 * (d + slope(x0_e, eps_e)))
    clean = (torch.as_tensor(t_next, device=x_t.device) < 0).reshape(-1, *([1] * (x_t.dim() - 1)))
    return torch.where(clean, euler, heun)


MOVES = {"ddim": ddim_move, "heun": heun_move}  # a teacher's step between two grid indices


@torch.no_grad()
def progressive_target(teacher: Denoiser, z_t: torch.Tensor, steps: torch.Tensor,
                       labels=None, move=ddim_move) -> torch.Tensor:
    """x~ of Salimans & Ho (2022, algorithm 2) for states z_t at rows (t, t', t'') of
    progressive_steps (one row per sample): the x0 whose single DDIM step t -> t'' reaches the
    teacher's two steps t -> t' -> t''. `move` is the teacher's step: DDIM as in the paper, or
    heun_move, whose endpoint is closer to the teacher's exact ODE solution (the identity
    defining x~ needs only that endpoint)."""
    t, t_mid, t_next = steps.to(z_t.device).unbind(1)
    z_next = move(teacher, move(teacher, z_t, t, t_mid, labels), t_mid, t_next, labels)
    alpha, sigma = coefficients(teacher.schedule, t, z_t)
    alpha_n, sigma_n = coefficients(teacher.schedule, t_next, z_t)
    ratio = sigma_n / sigma
    return (z_next - ratio * z_t) / (alpha_n - ratio * alpha)


def student_target(schedule, x_target: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor,
                   prediction_type: str) -> torch.Tensor:
    """The network output that predicts x_target at z_t (with the eps it implies,
    (z_t - alpha x) / sigma) in the student's own parameterisation."""
    alpha, sigma = coefficients(schedule, t, z_t)
    eps = (z_t - alpha * x_target) / sigma
    return training_target(schedule, x_target, t, eps, prediction_type)


def coupling_noise(index: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The noise of coupling `index`: its own seeded draw, so a pair does not depend on the
    batch it was made in (and a cut-short generation resumes with the same pairs)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.randn(shape, generator=generator)


@torch.no_grad()
def make_couplings(teacher: Denoiser, start: int, count: int, shape: tuple[int, ...], *,
                   seed: int, sampler: str, steps: int, num_classes: int = 0,
                   device: torch.device | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Couplings start .. start + count - 1: (noise z, labels or None, the teacher's ODE
    endpoint x from z under that label). Labels cycle through the classes (index % classes)
    so the pairs are balanced; `teacher` may be a guided denoiser (guidance is then baked into
    the pairs)."""
    device = device or torch.device("cpu")
    z = torch.stack([coupling_noise(i, shape, seed) for i in range(start, start + count)])
    labels = (torch.arange(start, start + count) % num_classes) if num_classes else None
    x = sample(teacher, z.to(device), sampler, steps,
               labels=None if labels is None else labels.to(device)).x
    return z, labels, x.float().cpu()
