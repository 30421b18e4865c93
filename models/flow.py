"""Flow matching with the rectified-flow path (Liu et al. 2023; Lipman et al. 2023):

    x_t = (1 - t) x0 + t eps,  t in [0, 1],   the network predicts v = eps - x0 = dx_t/dt,

with training times from a logit-normal distribution (Esser et al. 2024, sec. 3.1).

For the samplers the path is indexed like a noise schedule: grid index k = 0..T-1 is the time
t_k = (k + 1) / T (k = T-1 is pure noise, t = 1), and index -1 is the clean end t = 0. The
network sees T * t (the same range as a noise schedule's index), so t_k reaches it as k + 1.
"""
import torch


class FlowSchedule:
    """The rectified-flow path on a grid of T times, with its logit-normal training times."""

    kind = "flow"

    def __init__(self, timesteps: int = 1000, logit_mean: float = 0.0, logit_std: float = 1.0):
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        if logit_std <= 0:
            raise ValueError(f"the logit-normal std must be > 0, got {logit_std}")
        self.timesteps, self.logit_mean, self.logit_std = timesteps, logit_mean, logit_std
        self.times = torch.arange(1, timesteps + 1, dtype=torch.float64) / timesteps  # t_k

    def coefficients(self, t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, sigma) = (1 - t_k, t_k) at grid indices t, shaped to broadcast like `like`."""
        times = grid_values(self.times, t, like)
        return 1 - times, times

    def log_snr(self) -> torch.Tensor:
        """log(alpha^2 / sigma^2) = 2 log((1 - t) / t) per grid time (-inf at t = 1)."""
        return 2 * (torch.log1p(-self.times) - torch.log(self.times))

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the network is told at grid index t: T * t_k = k + 1."""
        return torch.as_tensor(t) + 1

    def sample_times(self, batch: int, device, draw=None) -> torch.Tensor:
        """Training times t = sigmoid(n), n ~ N(logit_mean, logit_std^2) (Esser et al. 2024);
        `draw(shape, device=)` gives the standard normals (default torch.randn)."""
        n = (draw or torch.randn)((batch,), device=device)
        return torch.sigmoid(self.logit_mean + self.logit_std * n)


def grid_values(values: torch.Tensor, t, like: torch.Tensor) -> torch.Tensor:
    """values[t] in like's dtype and device, shaped (B, 1, ...) for a (B,) t."""
    t = torch.as_tensor(t, device=like.device).long()
    out = values.to(device=like.device, dtype=like.dtype)[t]
    return out.reshape(-1, *([1] * (like.dim() - 1))) if out.dim() else out


def interpolate(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps for continuous times t (B,)."""
    t = t.to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
    return (1 - t) * x0 + t * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """v = d x_t / dt = eps - x0: what the network learns."""
    return eps - x0


def flow_to_x0_eps(schedule: FlowSchedule, v: torch.Tensor, t, x_t: torch.Tensor,
                   clip_x0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) implied by a velocity at grid index t: x0 = x_t - t v, eps = x_t + (1 - t) v;
    with clip_x0, x0 is clipped to [-1, 1] and eps = (x_t - (1 - t) x0) / t."""
    alpha, sigma = schedule.coefficients(t, x_t)
    x0 = x_t - sigma * v
    if not clip_x0:
        return x0, x_t + alpha * v
    x0 = x0.clamp(-1, 1)
    return x0, (x_t - alpha * x0) / sigma
