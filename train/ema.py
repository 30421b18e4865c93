"""The exponential moving average of a network's weights that every family samples with."""
import torch
from torch.optim.swa_utils import AveragedModel


def ema_with_warmup(decay: float):
    """multi_avg_fn for AveragedModel: ema <- d ema + (1 - d) param with
    d = min(decay, (1 + n) / (10 + n)) after n updates (the num_updates warm-up of TensorFlow's
    ExponentialMovingAverage). Without it the zero-initialised start keeps weight decay^n: 21%
    after 300 steps at 0.995, so early samples would come from a shrunken model.
    n stays a device tensor: no host sync per step."""
    def update(ema_params, params, num_averaged):
        n = num_averaged.to(torch.float32)
        d = torch.clamp((1 + n) / (10 + n), max=decay)
        torch._foreach_mul_(ema_params, d)
        torch._foreach_add_(ema_params, torch._foreach_mul(params, 1 - d))
    return update


def make_ema(module: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of module's weights (ema_with_warmup), None if decay is 0."""
    return AveragedModel(module, multi_avg_fn=ema_with_warmup(decay)) if decay else None
