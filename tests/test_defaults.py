"""One source of defaults: a network built from Python with nothing but the data's shape is the
network the family's run script builds with its default constants (the script's loop is
replaced by one that captures what it was given), and the loss and optimiser settings a library
function defaults to are the script's."""
import importlib

import pytest
import torch

from models.autoencoder import Autoencoder, PatchDiscriminator
from models.dit import DiT
from models.gan import Discriminator, Generator
from models.unet import UNet
from models.vae import VAE, AdaptiveBetaScheduler
from train.autoencoder import AELoss


class Captured(Exception):
    """Raised by the stand-in loop once it has seen the built objects."""


def built_by(script: str, loop: str, monkeypatch, tmp_path, *args: str):
    """The first argument the script passes to its training loop (its built setup)."""
    module = importlib.import_module(script)
    seen = {}

    def capture(setup, *rest, **kwargs):
        seen["setup"] = setup
        raise Captured
    monkeypatch.setattr(module, loop, capture)
    with pytest.raises(Captured):
        module.main([f"--SAVE_ROOT={tmp_path}", "--N_TRAIN=64", "--PRECISION=fp32",
                     "--TENSORBOARD=False", *args])
    return seen["setup"]


def same_network(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert repr(a) == repr(b)
    assert {k: v.shape for k, v in a.state_dict().items()} == \
           {k: v.shape for k, v in b.state_dict().items()}


def test_the_dcgan_from_python_is_ganmains(monkeypatch, tmp_path):
    setup = built_by("GAN_run_scripts.ganmain", "train_gan", monkeypatch, tmp_path)
    same_network(Generator(image_size=32, channels=3), setup.generator)
    same_network(Discriminator(image_size=32, channels=3), setup.discriminator)


def test_the_vae_from_python_is_vaemains(monkeypatch, tmp_path):
    module = importlib.import_module("VAE_run_scripts.vaemain")
    setup = built_by("VAE_run_scripts.vaemain", "train_vae", monkeypatch, tmp_path)
    same_network(VAE(image_size=32, channels=3), setup.model)
    scheduler = AdaptiveBetaScheduler()  # the adaptive mode's constants
    assert (scheduler.beta, scheduler.gamma, scheduler.eta, scheduler.beta_min,
            scheduler.beta_max, scheduler.warmup) == (
        module.BETA_INIT, module.BETA_GAMMA, module.BETA_ETA, module.BETA_MIN, module.BETA_MAX,
        module.BETA_WARMUP)


@pytest.mark.parametrize("backbone, network", [("unet", UNet), ("dit", DiT)])
def test_the_denoiser_from_python_is_diffusionmains(backbone, network, monkeypatch, tmp_path):
    setup = built_by("Diffusion_run_scripts.DiffusionMain", "train_diffusion", monkeypatch,
                     tmp_path, f"--BACKBONE={backbone}")
    same_network(network(in_channels=3, image_size=32), setup.model)
    module = importlib.import_module("Diffusion_run_scripts.DiffusionMain")
    assert setup.prediction_type == module.PREDICTION
    decay = setup.ema.multi_avg_fn  # ema_with_warmup(decay): its clamp is the decay
    ema, new = [torch.zeros(1)], [torch.ones(1)]
    decay(ema, new, torch.tensor(10 ** 6))
    assert ema[0].item() == pytest.approx(1 - module.EMA_DECAY)


def test_the_ldm_autoencoder_and_its_loss_from_python_are_the_scripts(monkeypatch, tmp_path):
    module = importlib.import_module("LDM_run_scripts.LDMAutoencoderMain")
    setup = built_by("LDM_run_scripts.LDMAutoencoderMain", "train_autoencoder", monkeypatch,
                     tmp_path)
    same_network(Autoencoder(image_size=32, channels=3), setup.ae)
    same_network(PatchDiscriminator(channels=3), setup.disc)
    loss = AELoss()
    assert (loss.reconstruction, loss.kl_weight, loss.kl_mode, loss.kl_warmup_steps,
            loss.adv_weight, loss.adv_start, loss.adv_warmup_steps, loss.adaptive_adv,
            loss.adv_max, loss.fm_weight, loss.disc_loss) == (
        module.RECONSTRUCTION, module.KL_WEIGHT, module.KL_MODE, module.KL_WARMUP_STEPS,
        module.ADV_WEIGHT, module.ADV_START, module.ADV_WARMUP_STEPS, module.ADAPTIVE_ADV,
        module.ADV_MAX, module.FM_WEIGHT, module.DISC_LOSS)
    assert setup.loss == loss
