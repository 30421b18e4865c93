"""Latent diffusion: loss terms, the adaptive GAN weight, the cache and scale factor, CFG wiring,
and smoke runs of the three scripts."""
import json
import math

import pytest
import torch

from models.autoencoder import (Autoencoder, PatchDiscriminator, adaptive_gan_weight,
                                discriminator_loss, feature_matching, generator_adversarial,
                                kl_term, reconstruction_term)
from models.guidance import classifier_free_guidance
from train.autoencoder import latent_statistics, psnr
from utils.errors import UserError


def test_loss_terms_on_tiny_tensors():
    x, x_hat = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, -1.0]])
    assert reconstruction_term(x, x_hat, "l1").item() == pytest.approx((0.5 + 2.0) / 2)
    assert reconstruction_term(x, x_hat, "mse").item() == pytest.approx((0.25 + 4.0) / 2)
    mean, logvar = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    assert kl_term(mean, logvar).item() == 0.0
    mean[0, 0, 0, 0] = 2.0  # one element: KL = mu^2 / 2 = 2, batch mean 1
    assert kl_term(mean, logvar).item() == pytest.approx(1.0)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # hinge: 1/2 (mean(relu(1 - [2, .5])) + mean(relu(1 + [-2, 0]))) = 1/2 (0.25 + 0.5)
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.375)
    zero = torch.zeros(3)
    assert discriminator_loss(zero, zero, "bce").item() == pytest.approx(math.log(2))
    assert generator_adversarial(fake, "hinge").item() == pytest.approx(1.0)
    assert generator_adversarial(zero, "bce").item() == pytest.approx(math.log(2))
    feats = [torch.ones(1, 2), torch.zeros(1, 3)]
    assert feature_matching(feats, [torch.zeros(1, 2), torch.full((1, 3), 3.0)]).item() == 2.0


def test_adaptive_gan_weight_is_the_gradient_norm_ratio():
    """rec = <W, a>, gan = <W, b>: the gradients at W are a and b exactly."""
    w = torch.randn(3, 4, requires_grad=True)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    weight = adaptive_gan_weight((w * a).sum(), (w * b).sum(), w)
    assert weight.item() == pytest.approx((a.norm() / (b.norm() + 1e-4)).item(), rel=1e-6)
    assert not weight.requires_grad
    huge = adaptive_gan_weight((w * a).sum(), (w * 0).sum() + 0 * w.sum(), w, max_weight=10.0)
    assert huge.item() == 10.0


def test_autoencoder_and_discriminator_shapes():
    ae = Autoencoder(32, 3, latent_channels=4, base=8, channel_mult=(1, 2, 2), blocks=1)
    recon, mean, logvar = ae(torch.randn(2, 3, 32, 32))
    assert recon.shape == (2, 3, 32, 32) and mean.shape == logvar.shape == (2, 4, 8, 8)
    assert ae.latent_shape == (4, 8, 8)
    # PatchGAN, 3 layers of 4x4 convs (strides 2, 2, 1) then a 4x4 head: 32 -> 16 -> 8 -> 7 -> 6
    logits, feats = PatchDiscriminator(3, 8, 3)(recon)
    assert logits.shape == (2, 1, 6, 6)
    assert [f.shape for f in feats] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 7, 7)]
    with pytest.raises(ValueError):
        Autoencoder(30, channel_mult=(1, 2, 2))


def test_spectral_norm_makes_every_convolution_1_lipschitz():
    """Miyato et al. 2018: each weight divided by its largest singular value (estimated by power
    iteration, one step per training forward pass)."""
    torch.manual_seed(0)
    disc = PatchDiscriminator(3, 8, 3, spectral_norm=True)
    for _ in range(30):
        disc(torch.randn(2, 3, 16, 16))
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, rel=0.02)


def test_scale_factor_gives_unit_std_and_psnr():
    torch.manual_seed(0)
    cache = {"mean": 3.0 * torch.randn(4000, 4, 2, 2) + 1.0,
             "logvar": torch.full((4000, 4, 2, 2), math.log(4.0))}
    stats = latent_statistics(cache)
    expected_std = math.sqrt(9.0 + 4.0)  # Var(mean) + E[sigma^2]
    assert stats["std"] == pytest.approx(expected_std, rel=0.02)
    assert stats["scale_factor"] == pytest.approx(1 / stats["std"])
    held_out = 3.0 * torch.randn(2000, 4, 2, 2) + 1.0 + 2.0 * torch.randn(2000, 4, 2, 2)
    assert (stats["scale_factor"] * held_out).std().item() == pytest.approx(1.0, abs=0.03)
    assert psnr(4.0) == pytest.approx(0.0) and psnr(0.04) == pytest.approx(20.0)


def test_cfg_wiring_with_a_class_conditional_unet():
    """The guided latent denoiser of a real UNet: scale 1 is the conditional prediction, scale 0
    the prediction for the network's null class, in one batched forward pass."""
    from models.diffusion import NoiseSchedule
    from models.unet import UNet
    from train.inference import make_denoiser
    torch.manual_seed(0)
    net = UNet(2, 4, base=8, channel_mult=(1,), blocks=1, attention_resolutions=(),
               num_classes=3)
    for p in net.parameters():  # zero-initialised output layers made random
        torch.nn.init.normal_(p, std=0.1)
    plain = make_denoiser(net, NoiseSchedule("cosine", 50), "v", clip_x0=False)
    x, t, labels = torch.randn(3, 2, 4, 4), torch.tensor([3, 20, 49]), torch.tensor([0, 1, 2])
    cond = plain(x, t, labels)
    uncond = plain(x, t, torch.full_like(labels, net.null_class))
    assert not torch.allclose(cond[0], uncond[0])
    for w, expected in ((1.0, cond), (0.0, uncond)):
        for got, want in zip(classifier_free_guidance(plain, w, net.null_class)(x, t, labels),
                             expected):
            assert torch.allclose(got, want, atol=1e-5)


AE_TINY = ["--IMAGE_SIZE=16", "--N_TRAIN=128", "--BASE=8", "--BATCH_SIZE=32", "--EPOCHS=2",
           "--ADV_START=2", "--ADV_WARMUP_STEPS=2", "--KL_WARMUP_STEPS=2", "--DISC_WIDTH=8",
           "--PRECISION=fp32", "--DATASET=digits"]
LDM_TINY = ["--BASE=16", "--CHANNEL_MULT=(1, 2)", "--BLOCKS=1", "--ATTENTION=(2,)",
            "--BATCH_SIZE=32", "--EPOCHS=2", "--SAMPLE_STEPS=2", "--WARMUP_STEPS=2",
            "--TIMESTEPS=50", "--PRECISION=fp32"]


def test_ldm_scripts_end_to_end(tmp_path, monkeypatch):
    from LDM_run_scripts import LDMAutoencoderMain, LDMDiffusionMain, LDMEval
    from train.latents import load_cache
    from utils.runs import find_run, load_checkpoint
    from utils.samples import load_samples_npz
    root = ["--SAVE_ROOT", str(tmp_path)]
    with pytest.raises(UserError, match="no ldm_autoencoder run"):
        LDMDiffusionMain.main([*LDM_TINY, *root])
    with pytest.raises(UserError, match="BETAS must be two numbers in"):
        LDMDiffusionMain.main([*LDM_TINY, *root, "--BETAS=(-0.1, 0.99)"])
    ae_run = LDMAutoencoderMain.main([*AE_TINY, *root, "--KL_MODE=adaptive"])
    cache = load_cache(ae_run)
    assert cache["mean"].shape == (128, 4, 4, 4) and cache["labels"].shape == (128,)
    state = load_checkpoint(ae_run.checkpoint)
    assert state["latent_stats"]["scale_factor"] > 0 and "beta_scheduler" in state
    for name in ("reconstructions.png", "losses.png", "latent_histogram.png",
                 "latent_stats.json"):
        assert (ae_run.plots / name).is_file(), name

    run = LDMDiffusionMain.main([*LDM_TINY, *root])
    assert (run.plots / "progression.png").is_file()
    state = load_checkpoint(run.checkpoint, "ldm")
    assert state["autoencoder_run"] == ae_run.name
    assert state["data"] == load_checkpoint(ae_run.checkpoint)["data"]  # the images it models
    LDMDiffusionMain.main([*root, "--RESUME=latest", "--EPOCHS=3"])
    assert len(load_checkpoint(run.checkpoint)["frames"]) == 3

    report = LDMEval.main([*root, "--SCALES=(0, 1, 3)", "--STEPS=2", "--NOISED_T=(5, 49)",
                           "--STRIP_IMAGES=2", "--STRIP_COLUMNS=3", "--PER_CLASS=2",
                           "--METRICS=False"])
    out = find_run(tmp_path, "ldm").plots / "eval"
    for name in ("cfg_sweep.png", "forward_latent.png", "noised_real.png",
                 "reconstructions.png", "latent_stats.json"):
        assert (out / name).is_file(), name
    images, labels = load_samples_npz(out / "samples.npz")
    assert images.shape == (20, 1, 16, 16) and labels.tolist() == [k for k in range(10)
                                                                    for _ in range(2)]
    assert json.loads((out / "latent_stats.json").read_text())["autoencoder"] == ae_run.name
    # the reported PSNR is that of the stage-1 autoencoder on the held-out images, recomputed
    from train.inference import load_run
    from train.autoencoder import reconstruct
    stage1 = load_run(tmp_path, "ldm_autoencoder", ae_run.name, torch.device("cpu"))
    x = stage1.data.held_out(512).first(512)[0]
    mse = (reconstruct(stage1.nets["autoencoder"], x) - x).pow(2).mean().item()
    assert report["held_out_psnr"] == pytest.approx(10 * math.log10(4 / mse), rel=1e-6)
    assert report["held_out_images"] == len(x) == 300  # digits' test split

    # the same stage 1 under a rectified-flow latent model, sampled with guided Euler steps
    flow_args = [arg for arg in LDM_TINY if not arg.startswith("--EPOCHS")]
    flow_run = LDMDiffusionMain.main([*flow_args, *root, "--EPOCHS=1", "--PREDICTION=flow"])
    assert load_checkpoint(flow_run.checkpoint, "ldm")["diffusion"]["prediction"] == "flow"
    # with METRICS on a data set whose evaluator is not cached yet: it trains first, with
    # gradients, inside the eval script's no_grad report (that once crashed)
    import train.evaluator
    monkeypatch.setattr(train.evaluator, "MIN_STEPS", 1)
    assert not any((tmp_path / "saved_models").glob("evaluators/*.pt"))
    report = LDMEval.main([*root, f"--RUN={flow_run.name}", "--SCALES=(0, 3)", "--STEPS=2",
                           "--NOISED_T=(5, 49)", "--STRIP_IMAGES=1", "--STRIP_COLUMNS=2",
                           "--PER_CLASS=1"])
    images, labels = load_samples_npz(flow_run.plots / "eval" / "samples.npz")
    assert images.shape == (10, 1, 16, 16) and labels.tolist() == list(range(10))
    assert 0 <= report["reconstruction_class_accuracy"] <= 1 and "fid" in report["metrics"]


def _same_weights(a: dict, b: dict, keys) -> None:
    for key in keys:
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)


def _stopped_after_one_epoch(monkeypatch, module, main, args) -> None:
    """Run main(args) but stop it at the end of its first epoch, as a MINUTES deadline would
    (the run's plan, e.g. its cosine learning rate, stays that of all its EPOCHS)."""
    real_end = module.end_epoch
    with monkeypatch.context() as patch:
        patch.setattr(module, "end_epoch", lambda *a, **k: real_end(*a, **k) or True)
        main(args)


def test_both_ldm_stages_resume_exactly(tmp_path, monkeypatch):
    """Stage 1 for 2 epochs equals 1 epoch + resume (weights, EMA, optimizers, adaptive KL
    weight, latent statistics); stage 2 likewise on that autoencoder. PRECISION is pinned."""
    import train.autoencoder
    import train.diffusion
    from LDM_run_scripts import LDMAutoencoderMain, LDMDiffusionMain
    from utils.runs import find_run, load_checkpoint
    straight, split = (["--SAVE_ROOT", str(tmp_path / leg)] for leg in ("a", "b"))
    resume = [*split, "--RESUME=latest", "--PRECISION=fp32"]
    args = [*AE_TINY, "--KL_MODE=adaptive", "--EMA_DECAY=0.9", "--N_TRAIN=64"]
    LDMAutoencoderMain.main([*args, *straight])
    _stopped_after_one_epoch(monkeypatch, train.autoencoder, LDMAutoencoderMain.main,
                             [*args, *split])
    assert load_checkpoint(find_run(tmp_path / "b", "ldm_autoencoder").checkpoint)["epoch"] == 1
    LDMAutoencoderMain.main(resume)
    a, b = (load_checkpoint(find_run(tmp_path / leg, "ldm_autoencoder").checkpoint)
            for leg in ("a", "b"))
    _same_weights(a, b, ["ae", "disc", "ema"])
    assert a["opt_ae"]["state"][0]["step"] == b["opt_ae"]["state"][0]["step"]
    assert a["beta_scheduler"] == b["beta_scheduler"] and a["latent_stats"] == b["latent_stats"]

    LDMDiffusionMain.main([*LDM_TINY, *straight])
    _stopped_after_one_epoch(monkeypatch, train.diffusion, LDMDiffusionMain.main,
                             [*LDM_TINY, *split])
    LDMDiffusionMain.main(resume)
    a, b = (load_checkpoint(find_run(tmp_path / leg, "ldm").checkpoint) for leg in ("a", "b"))
    _same_weights(a, b, ["model", "ema"])
    assert torch.equal(a["frames"], b["frames"]) and a["step"] == b["step"]
