"""beta-VAE (Higgins et al. 2017): convolutional encoder/decoder, Gaussian ELBO terms, and the
adaptive beta scheduler that balances the relative rates of change of KL and reconstruction.
"""
import math
from typing import Callable

import torch
import torch.nn as nn


class AdaptiveBetaScheduler:
    """beta updated once per epoch from the epoch's mean KL and reconstruction losses.

    With KL_t, rec_t passed at call t and KL_{t-1}, rec_{t-1} at the previous call:
        dKL_t  = 1 + (KL_t - KL_{t-1}) / (KL_{t-1} + eps)
        drec_t = 1 + (rec_t - rec_{t-1}) / (rec_{t-1} + eps)
        r_t    = clip(dKL_t / (drec_t + eps), 1e-3, 1e3)
        rho_t  = gamma * rho_{t-1} + (1 - gamma) * r_t,   rho_0 = 1   (an Adam-like moment)
        beta_t = clip(beta_{t-1} * rho_t ** eta, beta_min, beta_max)
    The first max(1, warmup) calls only record the losses and return beta_init. When KL grows
    faster than the reconstruction loss (r > 1), beta rises to hold it back, and vice versa.
    """

    R_MIN, R_MAX = 1e-3, 1e3

    def __init__(self, beta_init: float = 1.0, gamma: float = 0.1, eta: float = 1.0,
                 eps: float = 1e-8, beta_min: float = 1e-8, beta_max: float = 10.0,
                 warmup: int = 5):
        if not 0 <= gamma < 1:
            raise ValueError(f"gamma must be in [0, 1), got {gamma}")
        if not 0 < beta_min <= beta_init <= beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_init <= beta_max, got {beta_min}, "
                             f"{beta_init}, {beta_max}")
        self.beta_init, self.gamma, self.eta, self.eps = beta_init, gamma, eta, eps
        self.beta_min, self.beta_max, self.warmup = beta_min, beta_max, warmup
        self.beta, self.rho, self.calls = beta_init, 1.0, 0
        self.prev_kl: float | None = None
        self.prev_rec: float | None = None

    def update(self, kl: float, recon: float) -> float:
        """Record this epoch's mean KL and reconstruction loss; return the new beta."""
        kl, recon = float(kl), float(recon)
        self.calls += 1
        if self.calls > max(1, self.warmup):
            d_kl = 1 + (kl - self.prev_kl) / (self.prev_kl + self.eps)
            d_rec = 1 + (recon - self.prev_rec) / (self.prev_rec + self.eps)
            r = min(max(d_kl / (d_rec + self.eps), self.R_MIN), self.R_MAX)
            self.rho = self.gamma * self.rho + (1 - self.gamma) * r
            self.beta = min(max(self.beta * self.rho ** self.eta, self.beta_min), self.beta_max)
        self.prev_kl, self.prev_rec = kl, recon
        return self.beta

    def state_dict(self) -> dict:
        return {"beta": self.beta, "rho": self.rho, "calls": self.calls,
                "prev_kl": self.prev_kl, "prev_rec": self.prev_rec}

    def load_state_dict(self, state: dict) -> None:
        self.beta, self.rho, self.calls = state["beta"], state["rho"], state["calls"]
        self.prev_kl, self.prev_rec = state["prev_kl"], state["prev_rec"]


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per latent dimension: 1/2 (sigma^2 + mu^2 - 1 - log sigma^2)
    (Kingma & Welling 2014, appendix B). Shape (B, D)."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1 - logvar)


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Squared error summed over each image's pixels: (B,). The Gaussian decoder's -log p(x|z)
    up to a constant and a factor 1/2."""
    return (x - x_hat).pow(2).flatten(1).sum(1)


def elbo_loss(x: torch.Tensor, x_hat: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
              beta: float) -> dict[str, torch.Tensor]:
    """sum (x - x_hat)^2 + beta * KL, summed per image and averaged over the batch."""
    recon = reconstruction_loss(x.float(), x_hat.float()).mean()
    kl_dims = gaussian_kl(mu.float(), logvar.float()).mean(0)  # (D,)
    kl = kl_dims.sum()
    return {"loss": recon + beta * kl, "recon": recon, "kl": kl, "kl_dims": kl_dims}


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
                         ) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) per element (broadcasting)."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) * torch.exp(-logvar))


def total_correlation(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                      dataset_size: int) -> torch.Tensor:
    """TC = KL(q(z) || prod_d q(z_d)) of the aggregate posterior q(z) = 1/N sum_n q(z | x_n),
    estimated on a batch of M of the N images (Chen et al. 2018, section 3.1 and appendix C):
    for z_i ~ q(z | x_i),
        q(z_i) ~ 1/N q(z_i | x_i) + (N - 1) / (N (M - 1)) sum_{j != i} q(z_i | x_j)
    (the image's own posterior counts once; the other M - 1 stand in for the other N - 1
    images, an unbiased estimate of q(z_i); with M = N it is exact), the same for each
    marginal q(z_id), and TC ~ mean_i [log q(z_i) - sum_d log q(z_id)]."""
    z, mu, logvar = z.float(), mu.float(), logvar.float()
    m, n = len(z), max(int(dataset_size), len(z))
    log_q = gaussian_log_density(z[:, None, :], mu[None], logvar[None])  # (M, M, D): z_i | x_j
    weight = torch.full((m, m), math.log(n - 1) - math.log(n * max(m - 1, 1)), device=z.device)
    weight.fill_diagonal_(-math.log(n))
    log_qz = torch.logsumexp(log_q.sum(2) + weight, dim=1)
    log_marginals = torch.logsumexp(log_q + weight[:, :, None], dim=1).sum(1)
    return (log_qz - log_marginals).mean()


OBJECTIVES = ("beta", "tcvae", "capacity")


def vae_objective(x: torch.Tensor, x_hat: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                  z: torch.Tensor, *, objective: str = "beta", beta: float = 1.0,
                  dataset_size: int = 1, capacity: float = 0.0, gamma: float = 1.0
                  ) -> dict[str, torch.Tensor]:
    """The training loss of each objective, with its terms (per image, batch mean):
        beta      recon + beta KL                          (Higgins et al. 2017)
        tcvae     recon + KL + (beta - 1) TC               (Chen et al. 2018 with alpha = gamma
                  = 1: KL = index-code MI + TC + dimension-wise KL, so only TC gets beta; the
                  KL is the closed form, TC the minibatch-weighted estimate)
        capacity  recon + gamma |KL - C|                   (Burgess et al. 2018; C grows
                  during training, passed as `capacity`)"""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    out = elbo_loss(x, x_hat, mu, logvar, beta)
    if objective == "tcvae":
        out["tc"] = total_correlation(z, mu, logvar, dataset_size)
        out["loss"] = out["recon"] + out["kl"] + (beta - 1) * out["tc"]
    elif objective == "capacity":
        out["loss"] = out["recon"] + gamma * (out["kl"] - capacity).abs()
    return out


Noise = Callable[..., torch.Tensor]  # (shape, dtype=, device=) -> standard normal tensor


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                   generator: torch.Generator | None = None, noise: Noise | None = None
                   ) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2014); eps from `generator`, or
    from `noise` (data-parallel training passes its global-batch draw)."""
    if noise is not None:
        eps = noise(mu.shape, dtype=mu.dtype, device=mu.device)
    else:
        eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
    return mu + (0.5 * logvar).exp() * eps


def _levels(image_size: int) -> int:
    levels = int(math.log2(image_size // 4))
    if image_size < 8 or 4 * 2 ** levels != image_size:
        raise ValueError(f"image size must be 4 * 2^k >= 8, got {image_size}")
    return levels


class VAE(nn.Module):
    """Strided-conv encoder to 4x4 (one level per factor 2), linear heads for mu and log sigma^2,
    and a mirrored transposed-conv decoder. The width does not depend on the latent size."""

    def __init__(self, image_size: int = 32, channels: int = 3, latent_dim: int = 10,
                 width: int = 32, hidden: int = 256):
        super().__init__()
        levels = _levels(image_size)
        widths = [min(width * 2 ** i, 8 * width) for i in range(levels)]  # per level, capped
        enc, c_in = [], channels
        for w in widths:
            enc += [nn.Conv2d(c_in, w, 4, 2, 1), nn.SiLU()]
            c_in = w
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(c_in * 16, hidden), nn.SiLU())
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        dec = [nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, c_in * 16), nn.SiLU(),
               nn.Unflatten(1, (c_in, 4, 4))]
        for w in reversed(widths[:-1]):
            dec += [nn.ConvTranspose2d(c_in, w, 4, 2, 1), nn.SiLU()]
            c_in = w
        dec.append(nn.ConvTranspose2d(c_in, channels, 4, 2, 1))  # Gaussian mean, no squashing
        self.decoder = nn.Sequential(*dec)
        self.latent_dim = latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, noise: Noise | None = None):
        """(reconstruction, mu, logvar, z) with z drawn by the reparameterisation trick."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, noise=noise)
        return self.decode(z), mu, logvar, z


def active_dims(mu: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
    """Burda et al. 2016: dimension i is active when Cov_x(E_q[z_i | x]) > threshold.
    mu: posterior means over a data set (N, D); returns a bool mask (D,)."""
    return mu.double().var(dim=0) > threshold
