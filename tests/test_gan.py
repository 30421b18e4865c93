import math

import numpy as np
import pytest
import torch

import GAN_run_scripts.evalGan as eval_gan
import GAN_run_scripts.ganmain as ganmain
import train.gan as train_gan_module
from models.gan import Discriminator, Generator, discriminator_loss, generator_loss
from train.gan import build_gan, gan_step
from utils.data import iterate_batches, load_dataset, to_float
from utils.errors import UserError
from utils.runs import MetricsLog, find_run, load_checkpoint


def test_losses_at_zero_logits_equal_log_2():
    zeros = torch.zeros(7)
    assert generator_loss(zeros).item() == pytest.approx(math.log(2))
    assert discriminator_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2))


def test_losses_match_their_formulas():
    real, fake = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    d = -(torch.log(torch.sigmoid(real)).mean() + torch.log(1 - torch.sigmoid(fake)).mean())
    g = -torch.log(torch.sigmoid(fake)).mean()  # non-saturating: -log D(G(z))
    assert discriminator_loss(real, fake).item() == pytest.approx(d.item(), rel=1e-5)
    assert generator_loss(fake).item() == pytest.approx(g.item(), rel=1e-5)


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_architecture_follows_image_size(size):
    g, d = Generator(10, size, 3, 8), Discriminator(size, 3, 8)
    x = g(torch.randn(5, 10))
    assert x.shape == (5, 3, size, size) and x.abs().max() <= 1
    assert d(x).shape == (5,)
    assert not isinstance(d.net[1], torch.nn.BatchNorm2d)  # no BatchNorm on the input layer
    conv = d.net[0].weight
    assert conv.std().item() == pytest.approx(0.02, rel=0.15)
    with pytest.raises(ValueError):
        Generator(10, 24, 3, 8)


def test_short_training_moves_samples_towards_the_data():
    """Shapes images are mostly black: pixel mean about -0.9. An untrained generator outputs
    grey noise (mean about 0); 64 adversarial steps must close most of that gap, which only
    the discriminator's signal can teach it (G never sees the data directly)."""
    torch.manual_seed(0)
    data = load_dataset("shapes", image_size=8, n=1024)
    real_mean = to_float(data.images).mean()
    s = build_gan(16, 8, 3, 16, 5e-4, (0.5, 0.999), torch.device("cpu"))

    def gap() -> float:
        with torch.no_grad():
            return abs(s.generator(torch.randn(512, 16)).mean() - real_mean).item()

    gap0 = gap()
    for _ in range(4):
        for x, _ in iterate_batches(data, 64, torch.device("cpu")):
            gan_step(s, x)
    assert gap0 > 0.7
    assert gap() < gap0 / 2


def test_gan_step_is_the_textbook_step():
    """Two steps of gan_step (D frozen during G's backward, for speed) leave every weight where
    the plain alternating step (D's weights also get gradients in G's step) leaves it, and D
    trainable; with d_width, D is the narrower network."""
    def textbook_step(s, real):
        fake = s.generator(torch.randn(len(real), 8))
        d_loss = discriminator_loss(s.discriminator(real), s.discriminator(fake.detach()))
        s.opt_d.zero_grad()
        d_loss.backward()
        s.opt_d.step()
        s.opt_g.zero_grad()
        generator_loss(s.discriminator(fake)).backward()
        s.opt_g.step()

    real = torch.rand(2, 6, 3, 8, 8) * 2 - 1
    setups = []
    for step in (gan_step, textbook_step):
        torch.manual_seed(0)
        setups.append(build_gan(8, 8, 3, 8, 1e-3, (0.5, 0.999), torch.device("cpu"), d_width=4))
        for batch in real:
            step(setups[-1], batch)
    ours, textbook = setups
    assert ours.discriminator.net[0].out_channels == 4
    assert all(p.requires_grad for p in ours.discriminator.parameters())
    for a, b in [(ours.generator, textbook.generator), (ours.discriminator,
                                                        textbook.discriminator)]:
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.allclose(x.float(), y.float(), atol=1e-6), name


def generator_weights(root):
    state = load_checkpoint(find_run(root, "gan", "latest").checkpoint)
    return state["generator"], state["opt_g"]


def test_resume_continues_exactly(tmp_path, tiny_gan):
    straight, split = tmp_path / "straight", tmp_path / "split"
    ganmain.main([*tiny_gan, "--SAVE_ROOT", str(straight), "--EPOCHS=2"])
    ganmain.main([*tiny_gan, "--SAVE_ROOT", str(split), "--EPOCHS=1"])
    ganmain.main(["--SAVE_ROOT", str(split), "--EPOCHS=2", "--RESUME=latest",
                  "--PRECISION=fp32"])
    (g_a, opt_a), (g_b, opt_b) = generator_weights(straight), generator_weights(split)
    for key in g_a:
        assert torch.equal(g_a[key], g_b[key]), key
    assert opt_a["state"][0]["step"] == opt_b["state"][0]["step"]
    assert "ema" not in load_checkpoint(find_run(straight, "gan", "latest").checkpoint)
    run = find_run(split, "gan", "latest")
    epochs = [r["epoch"] for r in MetricsLog(run.metrics_path).read()]
    assert epochs == [1, 2]


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path, tiny_gan, monkeypatch):
    ganmain.main(tiny_gan)
    checkpoint = find_run(tmp_path, "gan", "latest").checkpoint
    before = checkpoint.read_bytes()
    real_step, calls = train_gan_module.gan_step, []

    def poisoned(s, real):
        out = real_step(s, real)
        calls.append(1)
        if len(calls) == 3:
            out["d_loss"] = out["d_loss"] * float("nan")
        return out
    monkeypatch.setattr(train_gan_module, "gan_step", poisoned)
    with pytest.raises(UserError, match=r"d_loss became nan at step 7 .*last good checkpoint"):
        ganmain.main(["--SAVE_ROOT", str(tmp_path), "--EPOCHS=3", "--RESUME=latest"])
    assert checkpoint.read_bytes() == before


def test_ctrl_c_saves_a_checkpoint(tmp_path, tiny_gan, monkeypatch):
    real_step, calls = train_gan_module.gan_step, []

    def interrupted(s, real):
        calls.append(1)
        if len(calls) == 6:  # in epoch 2 (4 steps per epoch)
            raise KeyboardInterrupt
        return real_step(s, real)
    monkeypatch.setattr(train_gan_module, "gan_step", interrupted)
    with pytest.raises(UserError, match="interrupted; checkpoint saved"):
        ganmain.main([*tiny_gan, "--EPOCHS=3", "--CHECKPOINT_EVERY=10"])
    state = load_checkpoint(find_run(tmp_path, "gan", "latest").checkpoint)
    assert state["epoch"] == 1 and state["step"] == 5 and len(state["frames"]) == 1


def test_ganmain_and_evalgan_write_their_outputs(tmp_path, tiny_gan):
    ganmain.main([*tiny_gan, "--EPOCHS=2"])
    run = find_run(tmp_path, "gan", "latest")
    for name in ("progression.png", "losses.png", "samples.png", "config.json",
                 "metrics.jsonl"):
        assert (run.plots / name).is_file(), name
    eval_gan.main(["--SAVE_ROOT", str(tmp_path), "--N_SAMPLES=30", "--METRICS=False",
                   "--GRID_SIZE=4", "--N_PAIRS=2", "--STEPS=5"])
    for name in ("samples_grid.png", "interpolations.png", "progression.png", "losses.png"):
        assert (run.plots / "eval" / name).is_file(), name
    with np.load(run.plots / "eval" / "samples.npz") as samples:
        assert samples["images"].shape == (30, 16, 16, 3)
        assert samples["images"].dtype == np.uint8 and "labels" not in samples


BAD_CONSTANTS = [("--IMAGE_SIZE=24", "power of two"),
                 ("--BATCH_SIZE=0", "BATCH_SIZE must be a whole number >= 1"),
                 ("--DATASET=shapez", "unknown dataset"),
                 ("--UPSAMPLE=bilinear", "UPSAMPLE='bilinear' is not one of"),
                 ("--LR_D=0", "LR_D must be None or a number > 0"),
                 ("--LR_SCHEDULE=linear", "LR_SCHEDULE='linear' is not one of"),
                 ("--D_NORM=layer", "D_NORM='layer' is not one of"),
                 ("--MBSTD_GROUP=-1", "MBSTD_GROUP must be a whole number >= 0"),
                 ("--D_WIDTH_FACTOR=0", "D_WIDTH_FACTOR must be a positive number"),
                 ("--BETAS=(1.5, 0.9)", "BETAS must be two numbers in"),
                 ("--BETAS=(0.5,)", "BETAS must be two numbers in")]


def test_bad_constants_and_missing_runs_are_user_errors(tmp_path, tiny_gan):
    for constant, message in BAD_CONSTANTS:
        with pytest.raises(UserError, match=message):
            ganmain.main([*tiny_gan, constant])
    with pytest.raises(UserError, match="no gan run"):
        eval_gan.main(["--SAVE_ROOT", str(tmp_path / "empty")])
    assert not (tmp_path / "saved_plots").exists()  # failed starts leave no run folders


def test_minutes_cuts_training_short_and_the_run_resumes(tmp_path, tiny_gan):
    run = ganmain.main([*tiny_gan, "--EPOCHS=50", "--MINUTES=1e-5"])  # out of time at once
    state = load_checkpoint(run.checkpoint)
    assert (state["epoch"], state["step"]) == (1, 1)  # one batch of the first epoch, then stop
    assert (run.plots / "samples.png").is_file()
    # the run keeps its budget of MINUTES per invocation unless the command line lifts it
    ganmain.main(["--SAVE_ROOT", str(tmp_path), "--RESUME=latest", "--EPOCHS=2",
                  "--MINUTES=None"])
    state = load_checkpoint(run.checkpoint)
    assert (state["epoch"], state["step"]) == (2, 1 + 128 // 32)


def test_hinge_losses_match_their_formulas():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    d = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(d.item())
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(2.5 / 3 + 3.5 / 3)
    assert generator_loss(fake, "hinge").item() == pytest.approx(-fake.mean().item())
    zeros = torch.zeros(4)
    assert discriminator_loss(zeros, zeros, "hinge").item() == 2.0  # both margins violated by 1
    with pytest.raises(ValueError):
        generator_loss(zeros, "wasserstein")


def test_r1_penalty_is_the_squared_input_gradient():
    """D(x) = <w, x> + b has grad_x D = w for every image: R1 = ||w||^2."""
    from models.gan import r1_penalty
    torch.manual_seed(0)
    linear = torch.nn.Linear(12, 1)
    x = torch.randn(5, 3, 2, 2, requires_grad=True)
    penalty = r1_penalty(linear(x.flatten(1)).flatten(), x)
    assert penalty.item() == pytest.approx(linear.weight.pow(2).sum().item(), rel=1e-6)
    penalty.backward()  # differentiable in D's weights: d||w||^2 / dw = 2w
    assert torch.allclose(linear.weight.grad, 2 * linear.weight.detach())


def test_spectral_norm_discriminator_and_the_stabilised_loop(tmp_path, tiny_gan):
    torch.manual_seed(0)
    d = Discriminator(16, 3, 8, spectral_norm=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    for _ in range(30):
        d(torch.randn(4, 3, 16, 16))
    for conv in [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, rel=0.02)
    run = ganmain.main([*tiny_gan, "--LOSS=hinge", "--SPECTRAL_NORM=True", "--R1_GAMMA=1.0"])
    records = MetricsLog(run.metrics_path).read()
    assert records[0]["train_r1"] > 0 and math.isfinite(records[0]["train_d_loss"])
    state = load_checkpoint(run.checkpoint)
    assert state["model_args"]["discriminator"]["spectral_norm"] is True
    eval_gan.main(["--SAVE_ROOT", str(tmp_path), "--N_SAMPLES=0"])  # rebuilds the SN D
    with pytest.raises(UserError, match="LOSS='wgan' is not one of"):
        ganmain.main([*tiny_gan, "--LOSS=wgan"])


def test_nearest_upsampling_and_two_learning_rates(tmp_path, tiny_gan):
    """UPSAMPLE=nearest builds resize-then-3x3-conv steps (a constant input stays constant inside
    the image: no checkerboard), is kept in the checkpoint and rebuilt by evalGan; LR_D is D's
    Adam rate while G keeps LR (bad values of both: BAD_CONSTANTS)."""
    g = Generator(10, 16, 3, 8, upsample="nearest")
    assert g(torch.randn(3, 10)).shape == (3, 3, 16, 16)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in g.net[3:])
    step = torch.nn.Sequential(*[m for m in g.net[3:5]])  # Upsample, Conv2d 3x3
    torch.nn.init.constant_(step[1].weight, 0.1)
    out = step(torch.ones(1, 16, 4, 4))
    assert torch.allclose(out[..., 1:-1, 1:-1], torch.full_like(out[..., 1:-1, 1:-1], 14.4))
    run = ganmain.main([*tiny_gan, "--UPSAMPLE=nearest", "--LR=1e-4", "--LR_D=4e-4"])
    state = load_checkpoint(run.checkpoint)
    assert state["model_args"]["generator"]["upsample"] == "nearest"
    assert state["opt_d"]["param_groups"][0]["lr"] == 4e-4
    assert state["opt_g"]["param_groups"][0]["lr"] == 1e-4
    eval_gan.main(["--SAVE_ROOT", str(tmp_path), "--N_SAMPLES=0"])


def test_cosine_learning_rates_follow_their_plan_and_resume(tmp_path, tiny_gan):
    """LR_SCHEDULE=cosine: G's and D's rates follow rate * (1 + cos(pi s / S)) / 2 over the S
    steps of EPOCHS (half at half-way, 0 at the end), their schedulers are saved with the run,
    and a resumed, longer run goes on from where the plan was (it never rises again)."""
    run = ganmain.main([*tiny_gan, "--LR_SCHEDULE=cosine", "--LR=1e-3", "--LR_D=4e-4",
                        "--EPOCHS=2"])
    assert [r["lr"] for r in MetricsLog(run.metrics_path).read()] == pytest.approx(
        [5e-4, 0.0], abs=1e-12)
    state = load_checkpoint(run.checkpoint)
    assert state["sched_d"]["last_epoch"] == 8  # 2 epochs of 128 // 32 steps
    assert state["opt_d"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    ganmain.main(["--SAVE_ROOT", str(tmp_path), "--RESUME=latest", "--EPOCHS=3"])
    assert MetricsLog(run.metrics_path).read()[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    half = ganmain.main([*tiny_gan, "--LR_SCHEDULE=cosine", "--LR=1e-3", "--LR_D=4e-4",
                         "--EPOCHS=4", "--SAVE_ROOT", str(tmp_path / "four")])
    assert [r["lr"] for r in MetricsLog(half.metrics_path).read()][1] == pytest.approx(5e-4)
    constant = load_checkpoint(ganmain.main([*tiny_gan, "--LR=3e-4", "--LR_SCHEDULE=constant",
                                             "--SAVE_ROOT", str(tmp_path / "c")]).checkpoint)
    assert "sched_g" not in constant and constant["opt_g"]["param_groups"][0]["lr"] == 3e-4


def test_generator_ema_is_the_sampler_and_survives_resume(tmp_path, tiny_gan):
    """With EMA_DECAY the checkpoint keeps the average of G's weights, which differs from G's;
    load_gan (and so evalGan) returns it; resuming continues it exactly as an unbroken run."""
    from train.inference import load_gan
    straight, split = tmp_path / "straight", tmp_path / "split"
    ganmain.main([*tiny_gan, "--SAVE_ROOT", str(straight), "--EPOCHS=2", "--EMA_DECAY=0.9"])
    ganmain.main([*tiny_gan, "--SAVE_ROOT", str(split), "--EPOCHS=1", "--EMA_DECAY=0.9"])
    ganmain.main(["--SAVE_ROOT", str(split), "--EPOCHS=2", "--RESUME=latest",
                  "--PRECISION=fp32"])
    state_a = load_checkpoint(find_run(straight, "gan", "latest").checkpoint)
    state_b = load_checkpoint(find_run(split, "gan", "latest").checkpoint)
    for key, value in state_a["ema"].items():
        assert torch.equal(value, state_b["ema"][key]), key
    assert int(state_a["ema"]["n_averaged"]) == 8  # 2 epochs of 4 steps
    weight = "net.0.weight"
    assert not torch.equal(state_a["ema"][f"module.{weight}"], state_a["generator"][weight])
    loaded = load_gan(state_a, torch.device("cpu"))["generator"]
    assert torch.equal(loaded.state_dict()[weight], state_a["ema"][f"module.{weight}"])
    drawn = []
    for use_ema, folder in ((True, "eval"), (False, "eval_raw")):
        eval_gan.main(["--SAVE_ROOT", str(straight), "--N_SAMPLES=20", "--METRICS=False",
                       "--GRID_SIZE=2", "--N_PAIRS=1", "--STEPS=3", f"--USE_EMA={use_ema}"])
        with np.load(find_run(straight, "gan", "latest").plots / folder / "samples.npz") as f:
            drawn.append(f["images"])
    assert drawn[0].shape == drawn[1].shape == (20, 16, 16, 3)
    assert not np.array_equal(*drawn)  # the same latents through two different generators
    with pytest.raises(UserError, match="EMA_DECAY"):
        ganmain.main([*tiny_gan, "--EMA_DECAY=1.0"])


def test_minibatch_stddev_is_the_group_standard_deviation():
    """Karras et al. 2018, section 3, by hand: for each group of 2 samples, the population std
    over the group of every feature and pixel, averaged, appended as a constant channel. Copies
    of one image (mode collapse) give 0; the group shrinks to a divisor of the batch."""
    x = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 6.0]]], [[[0.0, 0.0]]], [[[0.0, 4.0]]]])  # (4,1,1,2)
    from models.gan import minibatch_stddev
    out = minibatch_stddev(x, group_size=2)  # groups: samples {0, 2} and {1, 3}
    assert out.shape == (4, 2, 1, 2) and torch.equal(out[:, :1], x)
    group_a = (abs(1.0 - 0.0) / 2 + abs(2.0 - 0.0) / 2) / 2  # std of two numbers: |a - b| / 2
    group_b = (abs(3.0 - 0.0) / 2 + abs(6.0 - 4.0) / 2) / 2
    expected = torch.tensor([group_a, group_b, group_a, group_b])
    assert torch.allclose(out[:, 1], expected[:, None, None].expand(4, 1, 2), atol=1e-4)
    same = torch.randn(1, 3, 2, 2).expand(6, 3, 2, 2)
    assert minibatch_stddev(same, 4)[:, 3].abs().max() < 1e-3  # 6 -> groups of 3: all copies
    assert minibatch_stddev(x[:3], 2)[:, 1].abs().max() < 1e-3  # odd batch: groups of one


def test_discriminator_without_batchnorm_and_with_minibatch_stddev(tmp_path, tiny_gan):
    """D_NORM=none leaves BatchNorm out, so each sample's logit depends only on that sample,
    unless MBSTD_GROUP adds the batch statistic; both are kept in the checkpoint for evalGan."""
    torch.manual_seed(0)
    d = Discriminator(16, 3, 8, norm="none")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    x = torch.randn(8, 3, 16, 16)
    assert torch.allclose(d(x)[:2], d(x[:2]), atol=1e-6)  # no batch dependence
    d_std = Discriminator(16, 3, 8, norm="none", mbstd_group=4)
    assert d_std.net[-1].in_channels == 8 * 2 + 1
    assert not torch.allclose(d_std(x)[:2], d_std(x[:2]))  # its logits depend on the group
    with pytest.raises(ValueError):
        Discriminator(16, 3, 8, norm="layer")
    run = ganmain.main([*tiny_gan, "--D_NORM=none", "--MBSTD_GROUP=4", "--D_WIDTH_FACTOR=0.25"])
    args = load_checkpoint(run.checkpoint)["model_args"]["discriminator"]
    assert (args["norm"], args["mbstd_group"], args["width"]) == ("none", 4, 2)
    eval_gan.main(["--SAVE_ROOT", str(tmp_path), "--N_SAMPLES=0"])


def test_a_run_saved_before_d_width_factor_resumes_with_its_discriminator(tmp_path, tiny_gan):
    from utils.runs import save_checkpoint
    run = ganmain.main([*tiny_gan, "--D_WIDTH_FACTOR=1"])
    state = load_checkpoint(run.checkpoint)
    del state["config"]["D_WIDTH_FACTOR"]  # as written before the constant existed
    save_checkpoint(state, run.checkpoint)
    ganmain.main(["--SAVE_ROOT", str(tmp_path), "--RESUME=latest", "--EPOCHS=2"])
    state = load_checkpoint(run.checkpoint)
    assert state["epoch"] == 2 and state["model_args"]["discriminator"]["width"] == 8
