"""The beta-VAE training loop: Adam on the ELBO with beta fixed, linearly warmed up, or driven by
the adaptive beta scheduler (updated once per epoch); per-epoch train and test terms, per-dimension
KL and active dimensions.
"""
import time
from dataclasses import dataclass

import torch

from models.vae import (OBJECTIVES, VAE, AdaptiveBetaScheduler, active_dims, elbo_loss,
                        reparameterize, vae_objective)
from train.common import (LossMeter, Progress, checkpoint_frame, end_epoch, epoch_batches,
                          epoch_range, eval_generator, open_log, resume_point, stack_frames,
                          stop_guard)
from train.inference import posterior_means
from train.options import LoopOptions
from utils import distributed
from utils.data import DataSpec, ImageData, to_uint8
from utils.device import autocast
from utils.plots import save_curves, save_progression
from utils.runs import Run, save_checkpoint

BETA_MODES = ("fixed", "warmup", "adaptive")
ACTIVE_SUBSET = 2000  # training images whose posterior means give the train active-dims count


@dataclass
class VAESetup:
    """The built objects of a VAE run."""
    model: VAE
    opt: torch.optim.Optimizer
    device: torch.device
    beta_mode: str = "fixed"
    beta: float = 1.0  # fixed beta, or the end value of the warm-up ramp
    scheduler: AdaptiveBetaScheduler | None = None
    warmup_steps: int = 0  # linear KL ramp length (beta_mode "warmup")
    amp_dtype: torch.dtype | None = None
    model_args: dict | None = None  # {"vae": kwargs}
    ddp: torch.nn.Module | None = None  # the model in DistributedDataParallel under torchrun
    objective: str = "beta"  # beta, tcvae or capacity (models.vae.vae_objective)
    dataset_size: int = 1  # N of the total-correlation estimate (tcvae)
    capacity_max: float = 0.0  # capacity: C rises linearly from 0 to this many nats ...
    capacity_steps: int = 1  # ... over this many steps, then stays
    capacity_gamma: float = 1.0  # capacity: weight of |KL - C|
    grad_clip: float = 0.0  # largest global gradient norm (0: no clipping; the norm is logged)

    @property
    def modules(self) -> dict:
        return {"model": self.model, "opt": self.opt, "beta_scheduler": self.scheduler}

    def beta_at(self, step: int) -> float:
        """The KL weight used at optimiser step `step` (0-based)."""
        if self.beta_mode == "adaptive":
            return self.scheduler.beta
        if self.beta_mode == "warmup":
            return self.beta * min(1.0, (step + 1) / max(1, self.warmup_steps))
        return self.beta

    def capacity_at(self, step: int) -> float:
        """The KL target C at optimiser step `step` (objective "capacity")."""
        return self.capacity_max * min(1.0, step / max(1, self.capacity_steps))


def build_vae(model_args: dict, device: torch.device, *, lr: float, beta_mode: str,
              objective: str, beta: float = 1.0, scheduler_args: dict | None = None,
              warmup_steps: int = 0, amp_dtype=None, **objective_args) -> VAESetup:
    """The VAE, its Adam optimiser and, in adaptive mode, the beta scheduler; objective_args
    are VAESetup's dataset_size, capacity_max, capacity_steps, capacity_gamma, grad_clip."""
    if beta_mode not in BETA_MODES:
        raise ValueError(f"beta mode must be one of {BETA_MODES}, got {beta_mode!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    model = VAE(**model_args).to(device)
    scheduler = AdaptiveBetaScheduler(**(scheduler_args or {})) if beta_mode == "adaptive" \
        else None
    return VAESetup(model, torch.optim.Adam(model.parameters(), lr), device, beta_mode, beta,
                    scheduler, warmup_steps, amp_dtype, {"vae": dict(model_args)},
                    distributed.wrap(model, device), objective, **objective_args)


def vae_step(setup: VAESetup, x: torch.Tensor, beta: float, step: int = 0
             ) -> dict[str, torch.Tensor]:
    """One Adam step on the setup's objective (beta: sum (x - x_hat)^2 + beta KL per image,
    batch mean; tcvae, capacity: see vae_objective), the gradient's global norm clipped to
    setup.grad_clip if set (returned as grad_norm, before clipping). Under torchrun the TC
    estimate uses each process's share of the batch."""
    net = setup.ddp if setup.ddp is not None else setup.model
    with autocast(setup.device, setup.amp_dtype):
        x_hat, mu, logvar, z = net(x, noise=distributed.randn)
    out = vae_objective(x, x_hat, mu, logvar, z, objective=setup.objective, beta=beta,
                        dataset_size=setup.dataset_size, capacity=setup.capacity_at(step),
                        gamma=setup.capacity_gamma)
    setup.opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    out["grad_norm"] = torch.nn.utils.clip_grad_norm_(setup.model.parameters(),
                                                      setup.grad_clip or float("inf"))
    setup.opt.step()
    return out


@torch.no_grad()
def evaluate_vae(setup: VAESetup, x: torch.Tensor, beta: float, batch_size: int = 500) -> dict:
    """Held-out ELBO terms (one z per image, the same eps at every call) and active dims."""
    generator = eval_generator(setup.device)
    sums, n = {}, 0
    for i in range(0, len(x), batch_size):
        batch = x[i:i + batch_size].to(setup.device)
        with autocast(setup.device, setup.amp_dtype):
            mu, logvar = setup.model.encode(batch)
            x_hat = setup.model.decode(reparameterize(mu, logvar, generator))
        out = elbo_loss(batch, x_hat, mu, logvar, beta)
        for key, value in out.items():
            sums[key] = sums.get(key, 0) + value.float().cpu() * len(batch)
        n += len(batch)
    means = {key: value / n for key, value in sums.items()}
    return {"loss": means["loss"].item(), "recon": means["recon"].item(),
            "mse": means["recon"].item() / x[0].numel(),
            "kl": means["kl"].item(), "kl_dims": means["kl_dims"].tolist(),
            "active": int(active_dims(posterior_means(setup.model, x)).sum())}


def train_vae(setup: VAESetup, train_data: ImageData, test_data: ImageData, run: Run,
              opts: LoopOptions, fixed_z: torch.Tensor) -> None:
    """Train for opts.epochs total epochs (continuing opts.state), logging and plotting every
    epoch."""
    progress, frames = resume_point(setup.modules, opts.state)
    log = open_log(run, progress, opts.config)
    epochs, batch_size, deadline = opts.epochs, opts.batch_size, opts.deadline
    train_data = train_data.to(setup.device)
    test_x, _ = test_data.first(2000)
    train_x, _ = train_data.first(ACTIVE_SUBSET)

    def save() -> None:
        save_checkpoint(vae_checkpoint(setup, progress, opts.data, opts.config, fixed_z, frames),
                        run.checkpoint)

    with stop_guard(run, progress, save):
        for epoch in (bar := epoch_range(run, progress.epoch, epochs)):
            meter, started = LossMeter(), time.perf_counter()
            kl_dims = torch.zeros(setup.model.latent_dim, device=setup.device)
            for x, _ in epoch_batches(train_data, batch_size, setup.device, opts.flip, epoch,
                                      epochs, deadline):
                out = vae_step(setup, x, setup.beta_at(progress.step), progress.step)
                kl_dims += out["kl_dims"].detach()
                logged = ("loss", "recon", "kl", "tc", "grad_norm")
                meter.update(progress.advance(x), {k: out[k] for k in logged if k in out})
            speed = meter.count * batch_size / (time.perf_counter() - started)
            record = evaluate(setup, meter, kl_dims, test_x, train_x, progress.step)
            frames.append(prior_frame(setup.model, fixed_z[:opts.progression_rows]))
            if setup.scheduler is not None:  # once per epoch, from the epoch's mean losses
                setup.scheduler.update(record["train_kl"], record["train_recon"])
            record = {"epoch": epoch, **record, "img_per_s": speed}
            write_figures(run, setup.beta_mode, frames, [*log.read(), record])
            if end_epoch(run, log, bar, progress, record, started=started, epochs=epochs,
                         checkpoint_every=opts.checkpoint_every, deadline=deadline, save=save,
                         images=frames[-1]):
                break


def evaluate(setup: VAESetup, meter: LossMeter, kl_dims: torch.Tensor, test_x: torch.Tensor,
             train_x: torch.Tensor, step: int) -> dict:
    """The epoch's record: beta, mean training terms, per-dim KL, held-out terms, active dims."""
    train = meter.means()
    beta = setup.beta_at(step - 1)  # the epoch's last (adaptive: only) KL weight
    setup.model.eval()
    test = evaluate_vae(setup, test_x, beta)
    train_active = int(active_dims(posterior_means(setup.model, train_x)).sum())
    setup.model.train()
    capacity = {"capacity": setup.capacity_at(step)} if setup.objective == "capacity" else {}
    return {"step": step, "beta": beta, **capacity, **{f"train_{k}": v for k, v in train.items()},
            "train_recon_plus_kl": train["recon"] + train["kl"],
            "test_recon_plus_kl": test["recon"] + test["kl"],
            "train_kl_dims": (distributed.all_sum(kl_dims) / distributed.world_size()
                              / max(meter.count, 1)).tolist(),
            "train_active": train_active, **{f"test_{k}": v for k, v in test.items()}}


@torch.no_grad()
def prior_frame(model: VAE, z: torch.Tensor) -> torch.Tensor:
    """Decoded prior samples z as uint8 on the CPU (one progression column)."""
    was_training = model.training
    model.eval()
    images = to_uint8(model.decode(z).float()).cpu()
    model.train(was_training)
    return images


def write_figures(run: Run, beta_mode: str, frames: list[torch.Tensor], records: list[dict]
                  ) -> None:
    """The progression of fixed prior samples and the loss curves."""
    save_progression(frames, run.plots / "progression.png",
                     title="decoded fixed prior samples z ~ N(0, I)")
    save_curves(records, LOSS_PANELS, run.plots / "losses.png", log_y=LOG_PANELS,
                title=f"beta-VAE {run.name} ({beta_mode} beta)")


def vae_checkpoint(setup: VAESetup, progress: Progress, data: DataSpec, config: dict,
                   fixed_z: torch.Tensor, frames: list[torch.Tensor]) -> dict:
    """The beta-VAE checkpoint: version, kind "vae", model_args {"vae"}, data (DataSpec), epoch,
    step, rng, config (the run's constants), the state_dicts of model, opt and beta_scheduler
    (adaptive mode), fixed_z (the progression's prior samples) and frames (uint8 progression
    images of the completed epochs)."""
    return {**checkpoint_frame("vae", setup.model_args, data, progress, config, setup.modules),
            "fixed_z": fixed_z.cpu(), "frames": stack_frames(frames, progress.epoch)}


LOSS_PANELS = [("total", ["train_loss", "test_loss"]),
               ("KL + recon (negative ELBO at beta 1)", ["train_recon_plus_kl",
                                                         "test_recon_plus_kl"]),
               ("reconstruction (sum of squares per image)", ["train_recon", "test_recon"]),
               ("KL (nats per image)", ["train_kl", "test_kl"]),
               ("beta", ["beta"]),
               ("active dims (Cov_x E[z_i] > 0.01)", ["train_active", "test_active"])]
LOG_PANELS = ["total", "KL + recon (negative ELBO at beta 1)",
              "reconstruction (sum of squares per image)"]

