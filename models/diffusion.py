"""Gaussian diffusion maths: noise schedules, q_sample, eps/x0/v conversions, the denoiser, and
the DDPM and DDIM steps.

Notation follows Ho et al. 2020: alpha_bar[t] = prod_{s<=t} (1 - beta[s]), index t = 0..T-1.
The samplers built on these steps live in models/samplers.py; they see only a Denoiser.
"""
import math
from dataclasses import dataclass
from typing import Callable

import torch

from models.flow import FlowSchedule, flow_to_x0_eps, grid_values, velocity_target

PREDICTION_TYPES = ("epsilon", "x0", "v", "flow")  # flow: the rectified-flow velocity


class NoiseSchedule:
    """betas and alphas_cumprod (float64, length T) for a schedule kind of make_betas."""

    def __init__(self, kind: str = "linear", timesteps: int = 1000, betas: torch.Tensor = None):
        if betas is None:
            betas = make_betas(kind, timesteps)
        self.kind, self.timesteps = kind, len(betas)
        self.betas = betas.double()
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64),
                                              self.alphas_cumprod[:-1]])
        # Posterior q(x_{t-1} | x_t, x0) variance, beta-tilde (Ho et al. 2020, eq. 7)
        self.posterior_variance = (self.betas * (1 - self.alphas_cumprod_prev)
                                   / (1 - self.alphas_cumprod))

    def coefficients(self, t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, sigma) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) at index t, so that
        x_t = alpha x0 + sigma eps."""
        abar = _at(self.alphas_cumprod, t, like)
        return abar.sqrt(), (1 - abar).sqrt()

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the network is told at index t: t itself."""
        return t

    def log_snr(self) -> torch.Tensor:
        """log(alpha_bar / (1 - alpha_bar)) per timestep."""
        return torch.log(self.alphas_cumprod) - torch.log1p(-self.alphas_cumprod)

    def respace(self, timesteps: torch.Tensor) -> "NoiseSchedule":
        """The schedule seen by a sampler visiting only `timesteps` (ascending original indices).

        Keeps alpha_bar at those steps: beta'_k = 1 - alpha_bar[t_k] / alpha_bar[t_{k-1}]
        (Nichol & Dhariwal 2021, section 4). Index k of the result is original step t_k.
        """
        abar = self.alphas_cumprod[timesteps]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        return NoiseSchedule(self.kind, betas=1 - abar / prev)


def make_betas(kind: str, timesteps: int) -> torch.Tensor:
    """Linear: Ho et al. 2020; cosine: Nichol & Dhariwal 2021, eq. 17, betas clipped at 0.999;
    scaled_linear: Stable Diffusion's, sqrt(beta) linear from sqrt(0.00085) to sqrt(0.012)
    (Rombach et al. 2022, the v1 configuration)."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    if kind == "linear":
        # Ho et al. use 1e-4..0.02 for T = 1000. For other T the endpoints scale by 1000 / T, so
        # the total noise added (sum of betas) stays about the same (Nichol & Dhariwal 2021).
        scale = 1000 / timesteps
        return torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), timesteps,
                              dtype=torch.float64)
    if kind == "cosine":
        s = 0.008
        u = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        return torch.clamp(1 - f[1:] / f[:-1], max=0.999)
    if kind == "scaled_linear":
        return torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, timesteps, dtype=torch.float64) ** 2
    raise ValueError(f"unknown schedule {kind!r}; use 'linear', 'cosine' or 'scaled_linear'")


_at = grid_values  # values[t] shaped like a batch, indexed on the tensor's device


def sample_timesteps(batch: int, timesteps: int, device,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform training timesteps t ~ U{0, ..., T-1} (Ho et al. 2020, algorithm 1)."""
    return torch.randint(0, timesteps, (batch,), device=device, generator=generator)


def q_sample(schedule, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
    """x_t = alpha_t x0 + sigma_t eps at index t: sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) for
    a noise schedule (Ho et al. 2020, eq. 4), 1 - t and t on the flow path."""
    alpha, sigma = schedule.coefficients(t, x0)
    return alpha * x0 + sigma * noise


def eps_to_x0(schedule, x_t, t, eps):
    abar = _at(schedule.alphas_cumprod, t, x_t)
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


def x0_to_eps(schedule, x_t, t, x0):
    abar = _at(schedule.alphas_cumprod, t, x_t)
    return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()


def v_target(schedule, x0, t, eps):
    """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (Salimans & Ho 2022, section 4)."""
    abar = _at(schedule.alphas_cumprod, t, x0)
    return abar.sqrt() * eps - (1 - abar).sqrt() * x0


def v_to_x0(schedule, x_t, t, v):
    abar = _at(schedule.alphas_cumprod, t, x_t)
    return abar.sqrt() * x_t - (1 - abar).sqrt() * v


def v_to_eps(schedule, x_t, t, v):
    abar = _at(schedule.alphas_cumprod, t, x_t)
    return (1 - abar).sqrt() * x_t + abar.sqrt() * v


def training_target(schedule, x0, t, eps, prediction_type: str) -> torch.Tensor:
    """What the network learns to output for the chosen parameterisation."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "x0":
        return x0
    if prediction_type == "v":
        return v_target(schedule, x0, t, eps)
    if prediction_type == "flow":
        return velocity_target(x0, eps)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def predict_x0_eps(schedule, model_output, t, x_t, prediction_type: str, clip_x0: bool = False):
    """(x0, eps) implied by a model output; with clip_x0, x0 is clipped to [-1, 1] and eps
    recomputed from it so the two stay consistent."""
    if prediction_type == "epsilon":
        eps = model_output
        x0 = eps_to_x0(schedule, x_t, t, eps)
    elif prediction_type == "x0":
        x0 = model_output
        eps = x0_to_eps(schedule, x_t, t, x0)
    elif prediction_type == "v":
        x0 = v_to_x0(schedule, x_t, t, model_output)
        eps = v_to_eps(schedule, x_t, t, model_output)
    elif prediction_type == "flow":
        return flow_to_x0_eps(schedule, model_output, t, x_t, clip_x0)
    else:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}")
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = x0_to_eps(schedule, x_t, t, x0)
    return x0, eps


def min_snr_weight(schedule, t: torch.Tensor, prediction_type: str, gamma: float = 5.0
                   ) -> torch.Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023), expressed for the network's target."""
    t = torch.as_tensor(t)
    abar = schedule.alphas_cumprod.to(t.device)[t.long()]
    snr = abar / (1 - abar)
    clipped = torch.clamp(snr, max=gamma)
    weight = {"epsilon": clipped / snr, "v": clipped / (snr + 1), "x0": clipped}[prediction_type]
    return weight.float()


NetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class Denoiser:
    """A network wrapped once with its schedule, prediction type and x0 clipping (as EDM wraps
    its networks, Karras et al. 2022): called on (x_t, t, labels) it returns the predicted
    (x0, eps). Samplers, guidance and the figure builders take only this.

    net(x_t, t, labels) returns the raw network output; clip_x0 clips x0 to [-1, 1] (pixels) and
    recomputes eps from it.
    """
    net: NetFn
    schedule: NoiseSchedule | FlowSchedule
    prediction_type: str  # eps, x0, v or flow: no default (what the network was trained on)
    clip_x0: bool = False

    def __call__(self, x_t: torch.Tensor, t, labels: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, device=x_t.device).long()
        if t.dim() == 0:
            t = t.expand(len(x_t))
        out = self.net(x_t, self.schedule.net_time(t), labels).to(x_t.dtype)
        return predict_x0_eps(self.schedule, out, t, x_t, self.prediction_type, self.clip_x0)


def ddpm_step(schedule: NoiseSchedule, x0: torch.Tensor, t: int, x_t: torch.Tensor,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1} from the predicted x0: the mean and variance beta-tilde
    of the posterior q(x_{t-1} | x_t, x0) (Ho et al. 2020, eq. 6-7).

    noise=None draws fresh noise; zeros give the posterior mean; t = 0 adds no noise.
    """
    abar, abar_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod_prev[t]
    beta = schedule.betas[t]
    coef_x0 = abar_prev.sqrt() * beta / (1 - abar)
    coef_xt = (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar)
    mean = float(coef_x0) * x0 + float(coef_xt) * x_t
    if int(t) == 0:
        return mean
    if noise is None:
        noise = torch.randn_like(x_t)
    return mean + float(schedule.posterior_variance[t].sqrt()) * noise


def ddim_step(schedule: NoiseSchedule, x0: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int,
              x_t: torch.Tensor, eta: float = 0.0, noise: torch.Tensor | None = None
              ) -> torch.Tensor:
    """One DDIM step x_t -> x_{t_prev} from the predicted (x0, eps) (Song et al. 2021, eq. 12;
    sigma from eta, eq. 16). t_prev = -1 is the clean end (alpha_bar = 1): it returns x0."""
    abar = schedule.alphas_cumprod[t]
    abar_prev = schedule.alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(
        1.0, dtype=torch.float64)
    sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
    direction = (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt()
    x_prev = float(abar_prev.sqrt()) * x0 + float(direction) * eps
    if eta > 0 and t_prev >= 0:
        if noise is None:
            noise = torch.randn_like(x_t)
        x_prev = x_prev + float(sigma) * noise
    return x_prev
