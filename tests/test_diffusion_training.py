import math

import pytest
import torch

from models.diffusion import NoiseSchedule
from train.lr import LRPlan
from train.diffusion_step import build_diffusion, diffusion_step, drop_labels

CPU = torch.device("cpu")


def test_label_dropout_rate():
    torch.manual_seed(0)
    labels = torch.zeros(20000, dtype=torch.long)
    dropped = drop_labels(labels, 0.1, null_class=5)
    rate = (dropped == 5).float().mean().item()
    assert abs(rate - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 20000)
    assert set(dropped.tolist()) == {0, 5}
    assert torch.equal(drop_labels(labels, 0.0, 5), labels)


def test_warmup_then_constant_or_cosine():
    const, cos = LRPlan(10, 110, "constant"), LRPlan(10, 110, "cosine")
    assert const(0) == pytest.approx(0.1) and const(9) == 1.0 and const(500) == 1.0
    assert cos(10) == 1.0 and cos(60) == pytest.approx(0.5) and cos(110) == pytest.approx(0.0)


def test_training_lowers_the_loss_and_updates_the_ema():
    """Data: one fixed 8x8 image; after 60 steps the eps-prediction loss falls well below its
    starting value of about 1 (the zero-initialised UNet predicts eps = 0)."""
    torch.manual_seed(0)
    args = {"unet": dict(in_channels=1, image_size=8, base=16, channel_mult=(1, 2), blocks=1,
                         attention_resolutions=(4,), dropout=0.0)}
    s = build_diffusion(args, NoiseSchedule("cosine", 100), CPU, prediction_type="epsilon",
                        lr=2e-3, warmup_steps=5,
                        total_steps=60, ema_decay=0.9)
    x0 = torch.linspace(-1, 1, 64).view(1, 1, 8, 8).expand(32, -1, -1, -1)
    first = diffusion_step(s, x0)
    for _ in range(60):
        last = diffusion_step(s, x0)
    assert first["loss"].item() == pytest.approx(1.0, abs=0.15)
    assert last["loss"].item() < 0.5 * first["loss"].item()
    assert last["quarters"][1].sum().item() == 32
    ema_w = s.ema.module.conv_out.weight
    assert not torch.equal(ema_w, s.model.conv_out.weight) and ema_w.abs().sum() > 0


TINY = ["--IMAGE_SIZE=16", "--N_TRAIN=64", "--BASE=16", "--CHANNEL_MULT=(1, 2)", "--BLOCKS=1",
        "--ATTENTION=(8,)", "--BATCH_SIZE=32", "--SAMPLE_STEPS=3", "--PROGRESSION_ROWS=2",
        "--WARMUP_STEPS=2", "--PRECISION=fp32", "--TIMESTEPS=50"]


def test_diffusion_main_writes_outputs_and_resumes_exactly(tmp_path):
    import Diffusion_run_scripts.DiffusionMain as main_script
    from utils.runs import MetricsLog, find_run, load_checkpoint
    straight, split = tmp_path / "a", tmp_path / "b"
    main_script.main([*TINY, "--SAVE_ROOT", str(straight), "--EPOCHS=2"])
    main_script.main([*TINY, "--SAVE_ROOT", str(split), "--EPOCHS=1"])
    main_script.main(["--SAVE_ROOT", str(split), "--EPOCHS=2", "--RESUME=latest",
                      "--PRECISION=fp32"])
    run_a, run_b = find_run(straight, "diffusion"), find_run(split, "diffusion")
    a, b = load_checkpoint(run_a.checkpoint), load_checkpoint(run_b.checkpoint)
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    assert [r["epoch"] for r in MetricsLog(run_b.metrics_path).read()] == [1, 2]
    for name in ("progression.png", "losses.png", "forward_diffusion.png", "config.json"):
        assert (run_a.plots / name).is_file(), name
    assert a["frames"].shape == (2, 2, 3, 16, 16)

    import Diffusion_run_scripts.DiffusionEval as eval_script
    from utils.samples import load_samples_npz
    eval_script.main(["--SAVE_ROOT", str(straight), "--STEPS=3", "--GRID_SIZE=2",
                      "--STRIP_IMAGES=1", "--STRIP_COLUMNS=3", "--NOISED_T=(10, 49)",
                      "--COMPARE=('ddpm-50', 'ddim-3')", "--COMPARE_IMAGES=2", "--N_SAMPLES=5",
                      "--METRICS=False"])
    out = run_a.plots / "eval"
    for name in ("samples_grid.png", "forward_schedules.png", "reverse_diffusion.png",
                 "noised_real.png", "sampler_comparison.png", "sampler_comparison.json"):
        assert (out / name).is_file(), name
    images, _ = load_samples_npz(out / "samples.npz")
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.uint8


def test_unet_patch_runs_and_a_run_saved_before_it_resumes_unpatched(tmp_path):
    """UNET_PATCH reaches the checkpoint's model_args; a run whose config predates UNET_PATCH
    and GUIDE_EPOCH resumes with the plain UNet it was trained with and keeps no guide,
    whatever today's defaults; a patch that does not divide the size is one UserError line."""
    import Diffusion_run_scripts.DiffusionMain as main_script
    from utils.errors import UserError
    from utils.runs import load_checkpoint, save_checkpoint
    run = main_script.main([*TINY, "--SAVE_ROOT", str(tmp_path / "p"), "--EPOCHS=1",
                            "--UNET_PATCH=2"])
    assert load_checkpoint(run.checkpoint)["model_args"]["unet"]["patch"] == 2
    run = main_script.main([*TINY, "--SAVE_ROOT", str(tmp_path), "--EPOCHS=1", "--UNET_PATCH=1"])
    state = load_checkpoint(run.checkpoint)
    del state["config"]["UNET_PATCH"], state["config"]["GUIDE_EPOCH"]  # as before they existed
    save_checkpoint(state, run.checkpoint)
    main_script.main(["--SAVE_ROOT", str(tmp_path), "--RESUME=latest", "--EPOCHS=2"])
    state = load_checkpoint(run.checkpoint)
    assert state["epoch"] == 2 and state["model_args"]["unet"]["patch"] == 1
    assert "guide" not in state  # today's GUIDE_EPOCH=2 would have kept epoch 2's EMA
    with pytest.raises(UserError, match="patch 3 must be a positive divisor of the size 16"):
        main_script.main([*TINY, "--SAVE_ROOT", str(tmp_path / "bad"), "--UNET_PATCH=3"])


def test_the_guide_is_the_ema_of_guide_epoch_kept_through_a_resume_and_guides_eval(
        tmp_path, capsys):
    """GUIDE_EPOCH=1: the checkpoint's guide is exactly the EMA a 1-epoch run ends with, in a
    straight 2-epoch run and in one resumed after epoch 1. DiffusionEval samples with it by
    default (other samples than AUTOGUIDANCE=1's; a GUIDANCE_INTERVAL that leaves steps out
    gives others again), and a run without a guide says so and samples unguided."""
    import Diffusion_run_scripts.DiffusionEval as eval_script
    import Diffusion_run_scripts.DiffusionMain as main_script
    from utils.errors import UserError
    from utils.runs import find_run, load_checkpoint
    from utils.samples import load_samples_npz
    one = main_script.main([*TINY, "--SAVE_ROOT", str(tmp_path / "one"), "--EPOCHS=1",
                            "--GUIDE_EPOCH=0"])
    straight = main_script.main([*TINY, "--SAVE_ROOT", str(tmp_path / "two"), "--EPOCHS=2",
                                 "--GUIDE_EPOCH=1"])
    split = main_script.main([*TINY, "--SAVE_ROOT", str(tmp_path / "split"), "--EPOCHS=1",
                              "--GUIDE_EPOCH=1"])
    main_script.main(["--SAVE_ROOT", str(tmp_path / "split"), "--RESUME=latest", "--EPOCHS=2"])
    ema_1 = load_checkpoint(one.checkpoint)
    assert "guide" not in ema_1
    ema_1 = ema_1["ema"]
    for run in (straight, split):
        state = load_checkpoint(run.checkpoint)
        assert state["epoch"] == 2 and state["guide"].keys() == ema_1.keys()
        for key in ema_1:
            assert torch.equal(state["guide"][key], ema_1[key]), key
        assert not torch.equal(state["ema"]["module.conv_out.weight"],
                               ema_1["module.conv_out.weight"])

    def samples(root, *args):
        eval_script.main(["--SAVE_ROOT", str(root), "--STEPS=3", "--GRID_SIZE=2",
                          "--STRIP_IMAGES=1", "--STRIP_COLUMNS=3", "--NOISED_T=(10, 49)",
                          "--COMPARE=('ddim-3',)", "--COMPARE_IMAGES=2", "--N_SAMPLES=6",
                          "--METRICS=False", *args])
        return load_samples_npz(find_run(root, "diffusion").plots / "eval" / "samples.npz")[0]
    guided = samples(tmp_path / "two")
    assert not torch.equal(guided, samples(tmp_path / "two", "--AUTOGUIDANCE=1"))
    assert not torch.equal(guided, samples(tmp_path / "two", "--GUIDANCE_INTERVAL=(0.28, 5.25)"))
    with pytest.raises(UserError, match="GUIDANCE_INTERVAL must be"):
        samples(tmp_path / "two", "--GUIDANCE_INTERVAL=(3, 1)")
    unguided = samples(tmp_path / "one", "--AUTOGUIDANCE=1")
    capsys.readouterr()
    assert torch.equal(samples(tmp_path / "one"), unguided)
    assert "kept no guide network" in capsys.readouterr().out


def test_flow_matching_trains_and_evaluates_end_to_end(tmp_path, capsys):
    """PREDICTION='flow': logit-normal times, the velocity target, Euler per-epoch samples,
    then every eval figure with Euler, Heun and DPM-Solver++(2M) (ddpm is left out of the
    comparison on the flow path), and FID per compared sampler."""
    import json
    import Diffusion_run_scripts.DiffusionEval as eval_script
    import Diffusion_run_scripts.DiffusionMain as main_script
    from utils.runs import MetricsLog, load_checkpoint
    run = main_script.main([*TINY, "--SAVE_ROOT", str(tmp_path), "--EPOCHS=2",
                            "--PREDICTION=flow", "--LOGIT_STD=0.8", "--SAMPLER=euler"])
    assert run.name.endswith("-flow")
    state = load_checkpoint(run.checkpoint)
    assert state["diffusion"] == {"schedule": "flow", "timesteps": 50, "prediction": "flow",
                                  "logit_mean": 0.0, "logit_std": 0.8}
    records = MetricsLog(run.metrics_path).read()
    assert all(0 < r["train_loss"] < 5 for r in records) and len(records) == 2
    eval_script.main(["--SAVE_ROOT", str(tmp_path), "--STEPS=3", "--GRID_SIZE=2",
                      "--STRIP_IMAGES=1", "--STRIP_COLUMNS=3", "--NOISED_T=(10, 49)",
                      "--SAMPLER=heun", "--COMPARE=('ddpm-50', 'ddim-3', 'heun-2', 'dpmpp2m-3')",
                      "--COMPARE_IMAGES=2", "--COMPARE_FID=12", "--N_SAMPLES=0"])
    assert "comparing ddim-3, heun-2, dpmpp2m-3 (ddpm needs a noise schedule)" in \
        capsys.readouterr().out
    timings = json.loads((run.plots / "eval" / "sampler_comparison.json").read_text())
    assert [t["sampler"] for t in timings] == ["ddim-3", "heun-2", "dpmpp2m-3"]
    assert all(t["fid"] > 0 and t["fid_samples"] == 12 for t in timings)
    for name in ("samples_grid.png", "forward_schedules.png", "reverse_diffusion.png",
                 "noised_real.png", "sampler_comparison.png"):
        assert (run.plots / "eval" / name).is_file(), name


@pytest.mark.parametrize("args, message", [
    (["--PREDICTION=flow", "--MIN_SNR_GAMMA=5"], "use 0 with flow"),
    (["--PREDICTION=flow", "--SAMPLER=ddpm"], "SAMPLER \\(flow\\)='ddpm' is not one of"),
    (["--PREDICTION=flow", "--LOGIT_STD=0"], "logit-normal std must be > 0")])
def test_flow_constants_that_do_not_fit_are_refused(tmp_path, args, message):
    import Diffusion_run_scripts.DiffusionMain as main_script
    from utils.errors import UserError
    with pytest.raises(UserError, match=message):
        main_script.main([*TINY, "--SAVE_ROOT", str(tmp_path), *args])
    assert not (tmp_path / "saved_plots").exists()


def test_diffusion_scripts_reject_bad_constants(tmp_path):
    import Diffusion_run_scripts.DiffusionEval as eval_script
    import Diffusion_run_scripts.DiffusionMain as main_script
    from utils.errors import UserError
    with pytest.raises(UserError, match="no diffusion run"):
        eval_script.main(["--SAVE_ROOT", str(tmp_path)])
    with pytest.raises(UserError, match="must look like"):
        eval_script.main(["--SAVE_ROOT", str(tmp_path), "--COMPARE=('ddim50',)"])
    with pytest.raises(UserError, match="PREDICTION='eps' is not one of"):
        main_script.main([*TINY, "--SAVE_ROOT", str(tmp_path), "--PREDICTION=eps"])
    with pytest.raises(UserError, match="BETAS must be two numbers in"):
        main_script.main([*TINY, "--SAVE_ROOT", str(tmp_path), "--BETAS=(0.9, 1.0)"])
    assert not (tmp_path / "saved_plots").exists()


def test_build_diffusion_gives_adamw_its_betas():
    args = {"unet": dict(in_channels=1, image_size=8, base=16, channel_mult=(1, 2), blocks=1,
                         attention_resolutions=(), dropout=0.0)}
    schedule = NoiseSchedule("cosine", 10)
    default = build_diffusion(args, schedule, CPU, prediction_type="epsilon", lr=1e-3,
                              warmup_steps=1, total_steps=2)
    chosen = build_diffusion(args, schedule, CPU, prediction_type="epsilon", lr=1e-3,
                             warmup_steps=1, total_steps=2, betas=(0.9, 0.99))
    assert default.opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert chosen.opt.param_groups[0]["betas"] == (0.9, 0.99)


def test_diffusion_main_under_minutes_plans_its_lr_for_the_budget(tmp_path, monkeypatch):
    """With MINUTES the loop measures its speed after each epoch and ends the cosine with the
    budget. Faked: no time left after epoch 1, so epoch 2 already ends at the minimum rate,
    where the plan for EPOCHS=3 (6 steps) would still be at half the peak."""
    import Diffusion_run_scripts.DiffusionMain as main_script
    from train.options import Deadline
    from utils.runs import MetricsLog
    args = [*TINY, "--EPOCHS=3", "--LR=1e-3", "--LR_SCHEDULE=cosine", "--SAVE_ROOT"]
    plain = main_script.main([*args, str(tmp_path / "a")])
    monkeypatch.setattr(Deadline, "seconds_left", lambda self: 0.0 if self.at else None)
    budget = main_script.main([*args, str(tmp_path / "b"), "--MINUTES=100"])
    lr = [[r["lr"] for r in MetricsLog(run.metrics_path).read()] for run in (plain, budget)]
    assert lr[0][0] == lr[1][0] == pytest.approx(1e-3)  # end of warm-up, step 2
    assert lr[0][1] == pytest.approx(0.5e-3)  # step 4 of 6: half-way down
    assert lr[1][1] == pytest.approx(0.0, abs=1e-12)


def test_ema_warmup_follows_its_recursion():
    """ema_1 = p_1 (AveragedModel copies first); then ema <- d ema + (1 - d) p with
    d = min(decay, (n + 1) / (n + 10)) after n updates."""
    from torch.optim.swa_utils import AveragedModel
    from train.ema import ema_with_warmup
    param = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    module = torch.nn.ParameterList([param])
    ema = AveragedModel(module, multi_avg_fn=ema_with_warmup(0.9))
    expected = None
    for n in range(40):
        with torch.no_grad():
            param.copy_(torch.tensor([n, -2.0 * n, n ** 2], dtype=torch.float64))
        ema.update_parameters(module)
        if expected is None:
            expected = param.detach().clone()
        else:
            d = min(0.9, (n + 1) / (n + 10))
            expected = d * expected + (1 - d) * param.detach()
        assert torch.allclose(ema.module[0], expected, rtol=1e-6), n
