"""Guidance: a Denoiser built from others, so every sampler can use it. Classifier-free guidance
(Ho & Salimans 2022) mixes the conditional and unconditional outputs of one network;
autoguidance (Karras et al. 2024) mixes a model with a weaker version of itself, optionally only
in an interval of noise levels (Kynkaanniemi et al. 2024).
"""
from dataclasses import replace
from typing import Callable

import torch

from models.diffusion import Denoiser


def classifier_free_guidance(denoiser: Denoiser, scale: float, null_label: int) -> Denoiser:
    """The denoiser whose network output is out_u + scale * (out_c - out_u) (Ho & Salimans 2022),
    both from one batched forward pass. Scale 0 is unconditional, scale 1 conditional.

    x0 and eps are affine in the network output, so without clipping this is the same
    combination of the conditional and unconditional x0 and eps.
    """
    net = denoiser.net

    def guided(x, t, labels):
        null = torch.full_like(labels, null_label)
        out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        out_c, out_u = out.chunk(2)
        return out_u + scale * (out_c - out_u)
    return replace(denoiser, net=guided)


def autoguidance(denoiser: Denoiser, guide: Denoiser, weight: float,
                 interval: tuple[float, float] | None = None) -> Denoiser:
    """The denoiser whose network output is out_g + weight * (out - out_g), where out_g is the
    output of `guide`, a weaker version of the same model (Karras et al. 2024, "Guiding a
    diffusion model with a bad version of itself", eq. 2). Weight 1 is the model itself, 0 the
    guide. Both must share the schedule and prediction type, so that (as for classifier-free
    guidance) the combination of outputs is the same combination of x0 and eps (or velocity).

    interval=(lo, hi) guides only the steps whose noise-to-signal ratio sigma / alpha lies in
    (lo, hi] and uses the model alone elsewhere (guidance in a limited interval, Kynkaanniemi
    et al. 2024); the guide is then not evaluated outside it (which costs one host sync per step
    on a GPU: sampling only).
    """
    net, guide_net = denoiser.net, guide.net
    inside_at = None if interval is None else _inside_interval(denoiser.schedule, *interval)

    def guided(x, t, labels):
        out = net(x, t, labels)
        inside = None if inside_at is None else inside_at(t)
        if inside is not None and not bool(inside.any()):
            return out  # no sample is in the interval: the guide is not evaluated
        out_g = guide_net(x, t, labels)
        mixed = out_g + weight * (out - out_g)
        if inside is None:
            return mixed
        return torch.where(inside.view(-1, *[1] * (out.dim() - 1)), mixed, out)
    return replace(denoiser, net=guided)


def check_interval(interval) -> None:
    """ValueError unless `interval` is a guidance interval (lo, hi) of numbers, 0 <= lo < hi."""
    if not (isinstance(interval, (tuple, list)) and len(interval) == 2
            and all(isinstance(v, (int, float)) for v in interval)
            and 0 <= interval[0] < interval[1]):
        raise ValueError(f"a guidance interval needs (lo, hi) with 0 <= lo < hi, got {interval!r}")


def _inside_interval(schedule, lo: float, hi: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function of the times a network is told (schedule.net_time of the grid indices) that
    says, per sample, whether that step's sigma / alpha = exp(-log_snr / 2) lies in (lo, hi]."""
    check_interval((lo, hi))
    net_times = schedule.net_time(torch.arange(schedule.timesteps)).double()  # ascending
    ratio = torch.exp(-0.5 * schedule.log_snr().double())  # inf at the flow path's noise end
    inside = (ratio > lo) & (ratio <= hi)

    def inside_at(t: torch.Tensor) -> torch.Tensor:
        k = torch.searchsorted(net_times.to(t.device), t.double().reshape(-1))
        return inside.to(t.device)[k.clamp_max(len(inside) - 1)]
    return inside_at
