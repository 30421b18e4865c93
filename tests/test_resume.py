"""Resume keeps what the run was: its constants, its learning-rate plan, its RNG streams."""
import json
import math

import pytest
import torch

import GAN_run_scripts.ganmain as ganmain
from models.diffusion import NoiseSchedule
from train.autoencoder import AELoss, build_autoencoder
from train.lr import LRPlan, PlannedLR
from train.diffusion_step import build_diffusion, held_out_loss
from train.gan import build_gan, evaluate_gan
from train.vae import build_vae, evaluate_vae
from utils.errors import UserError
from utils.runs import MetricsLog, find_run, load_checkpoint

CPU = torch.device("cpu")


def _files(root) -> dict:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_resume_alone_goes_on_to_the_runs_own_epochs_and_precision(tmp_path, tiny_gan, capsys):
    # out of time after one batch: the run is stopped at epoch 1 of 3
    ganmain.main([*tiny_gan, "--EPOCHS=3", "--MINUTES=1e-9"])
    capsys.readouterr()
    run = ganmain.main(["--SAVE_ROOT", str(tmp_path), "--RESUME=latest", "--MINUTES=None"])
    out = capsys.readouterr().out
    assert "after epoch 1 of 3; changed: MINUTES 1e-09 -> None" in out
    assert "precision fp32" in out  # the run's PRECISION, not the script default "auto"
    assert load_checkpoint(run.checkpoint)["epoch"] == 3  # not the script default EPOCHS=6
    assert [r["epoch"] for r in MetricsLog(run.metrics_path).read()] == [1, 2, 3]
    config = json.loads((run.plots / "config.json").read_text())
    assert (config["EPOCHS"], config["PRECISION"], config["MINUTES"]) == (3, "fp32", None)


def test_extending_a_run_is_printed_and_saved(tmp_path, tiny_gan, capsys):
    run = ganmain.main(tiny_gan)
    capsys.readouterr()
    ganmain.main(["--SAVE_ROOT", str(tmp_path), "--RESUME=latest", "--EPOCHS=2",
                  f"--LR={ganmain.LR}", "--WIDTH=8"])  # the run's own values may be repeated
    assert "changed: EPOCHS 1 -> 2" in capsys.readouterr().out
    assert load_checkpoint(run.checkpoint)["config"]["EPOCHS"] == 2
    assert json.loads((run.plots / "config.json").read_text())["EPOCHS"] == 2


@pytest.mark.parametrize("flag", ["--LR=0.1", "--WIDTH=16", "--DATASET=digits"])
def test_a_constant_that_cannot_change_is_refused_and_nothing_is_written(tmp_path, tiny_gan,
                                                                         flag):
    ganmain.main(tiny_gan)
    before = _files(tmp_path)
    name = flag[2:].split("=")[0]
    with pytest.raises(UserError, match=rf"--{name}=.* cannot change when resuming 001-"):
        ganmain.main(["--SAVE_ROOT", str(tmp_path), "--RESUME=latest", "--EPOCHS=3", flag])
    assert _files(tmp_path) == before


def test_a_refused_constant_exits_with_status_2(tmp_path, tiny_gan, monkeypatch, capsys):
    from utils.cli import run_cli
    ganmain.main(tiny_gan)
    capsys.readouterr()
    monkeypatch.setattr("sys.argv", ["ganmain", "--SAVE_ROOT", str(tmp_path),
                                     "--RESUME=latest", "--BATCH_SIZE=8"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(ganmain.main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--BATCH_SIZE=8 cannot change" in err[0]


def _extend(make_sched, short: int, long: int) -> list[float]:
    """Learning rates of a run planned for `short` steps, stopped at step short // 2, resumed
    with a plan of `long` steps (the scheduler built from the new constants, then loaded)."""
    first = make_sched(short)
    lrs = []
    for _ in range(short // 2):
        first.optimizer.step()
        first.step()
        lrs.append(first.get_last_lr()[0])
    second = make_sched(long)
    second.optimizer.load_state_dict(first.optimizer.state_dict())
    second.load_state_dict(first.state_dict())
    for _ in range(long - short // 2):
        second.optimizer.step()
        second.step()
        lrs.append(second.get_last_lr()[0])
    return lrs


def _diffusion_sched(total: int) -> PlannedLR:
    args = {"unet": dict(in_channels=1, image_size=8, base=8, channel_mult=(1,), blocks=1,
                         attention_resolutions=())}
    return build_diffusion(args, NoiseSchedule("cosine", 10), CPU, prediction_type="epsilon",
                           lr=1e-3, warmup_steps=10,
                           total_steps=total, lr_schedule="cosine").lr_sched


def _autoencoder_scheds(total: int) -> tuple[PlannedLR, PlannedLR]:
    s = build_autoencoder(dict(image_size=8, channels=1, latent_channels=2, base=4,
                               channel_mult=(1, 2), blocks=1, attention=False),
                          dict(channels=1, width=4, layers=1), CPU, lr=(8e-4, 2e-3),
                          lr_min=(1e-7, 1e-6), total_steps=total, loss=AELoss())
    return s.sched_ae, s.sched_d


@pytest.mark.parametrize("family, make, peak, floor", [
    ("diffusion", _diffusion_sched, 1e-3, 0.0),
    ("autoencoder", lambda n: _autoencoder_scheds(n)[0], 8e-4, 1e-7),
    ("autoencoder discriminator", lambda n: _autoencoder_scheds(n)[1], 2e-3, 1e-6)])
def test_extending_epochs_replans_the_lr_downwards_to_its_minimum(family, make, peak, floor):
    lrs = _extend(make, 100, 300)
    after_warmup = lrs[10:] if family == "diffusion" else lrs
    assert all(b <= a * (1 + 1e-12) for a, b in zip(after_warmup, after_warmup[1:])), family
    assert lrs[-1] == pytest.approx(floor, abs=1e-12)  # the minimum at the new last step
    assert lrs[49] > 0.5 * peak  # halfway through the first plan the rate was still high
    assert lrs[50] == pytest.approx(lrs[49], rel=0.01)  # no jump at the resume point
    # without the re-plan the cosine would have restarted its period: the old bug
    assert max(lrs[60:]) <= lrs[49]


def test_lr_plan_closed_form_and_replan():
    plan = LRPlan(10, 110, "cosine", min_factor=0.1)
    assert plan(0) == pytest.approx(0.1) and plan(9) == 1.0 and plan(10) == 1.0
    assert plan(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way down the half-cosine
    assert plan(110) == pytest.approx(0.1) and plan(500) == pytest.approx(0.1)
    plan.replan(60, 160)
    assert plan(60) == pytest.approx(0.55) and plan(160) == pytest.approx(0.1)
    assert plan(110) == pytest.approx(0.1 + 0.45 * 0.5 * (1 + math.cos(math.pi / 2)))
    early = LRPlan(10, 110, "cosine")
    early.replan(5, 210)  # still warming up: nothing has decayed, the plan just gets longer
    assert early(5) == pytest.approx(0.6) and early(110) == pytest.approx(0.5)
    constant = LRPlan(10, 110, "constant")
    constant.replan(50, 1000)
    assert constant(999) == 1.0


def test_a_minutes_budget_ends_the_cosine_when_the_budget_does():
    """fit_to_budget: with 100 s left at 2 s per step, a plan for 1,000 steps is cut to end 50
    steps on, continuing from the rate reached (no jump); a plan ending sooner is kept, and
    without a budget nothing changes."""
    from train.lr import fit_to_budget
    sched = _diffusion_sched(1000)
    for _ in range(100):
        sched.optimizer.step()
        sched.step()
    before = sched.get_last_lr()[0]
    fit_to_budget([sched], 100, None, 2.0)
    assert sched.plan.total_steps == 1000
    fit_to_budget([sched], 100, 100.0, 2.0)
    assert sched.plan.total_steps == 150
    fit_to_budget([sched], 100, 100.0, 2.0)  # the same estimate again: the same plan
    assert sched.plan.total_steps == 150
    lrs = []
    for _ in range(60):
        sched.optimizer.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs[0] == pytest.approx(before, rel=0.01)
    assert lrs[49] == pytest.approx(0.0, abs=1e-12) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert lrs[24] == pytest.approx(before * 0.5, rel=0.05)  # half-way down the half-cosine


def _training_draws_after(evaluate) -> torch.Tensor:
    torch.manual_seed(0)
    evaluate()
    return torch.randn(5)


def _evaluations():
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    args = {"unet": dict(in_channels=1, image_size=8, base=8, channel_mult=(1,), blocks=1,
                         attention_resolutions=(), num_classes=3)}
    diffusion = build_diffusion(args, NoiseSchedule("cosine", 10), CPU, prediction_type="epsilon",
                                lr=1e-3,
                                warmup_steps=1, total_steps=1, label_dropout=0.5)
    vae = build_vae(dict(image_size=8, channels=1, latent_dim=2, width=4), CPU, lr=1e-3,
                    beta_mode="fixed", objective="beta")
    gan = build_gan(4, 8, 1, 4, 1e-3, (0.5, 0.999), CPU)
    return {"diffusion held-out loss": lambda: held_out_loss(diffusion, diffusion.model, x),
            "vae evaluation": lambda: evaluate_vae(vae, x, 1.0)["loss"],
            "gan evaluation": lambda: evaluate_gan(gan, x)["d_loss"]}


@pytest.mark.parametrize("name", list(_evaluations()))
def test_evaluation_leaves_the_training_rng_alone(name):
    evaluate = _evaluations()[name]
    assert torch.equal(_training_draws_after(lambda: None), _training_draws_after(evaluate))
    torch.manual_seed(1)
    first = evaluate()
    torch.manual_seed(2)
    assert evaluate() == first  # its own noise, the same at every call


def test_resumed_run_is_found_by_name(tmp_path, tiny_gan):
    ganmain.main(tiny_gan)
    run = ganmain.main(["--SAVE_ROOT", str(tmp_path), "--RESUME=001", "--EPOCHS=2"])
    assert run == find_run(tmp_path, "gan", "latest")


def test_a_minutes_budget_plan_moves_later_when_epochs_get_faster():
    """The first epoch is slow (2 s a step: caches, a busy machine), the rest take 1 s a step.
    Re-planned after every epoch, the cosine ends with the budget, not after the slow epoch's
    estimate (the old plan only ever shortened, so the budget's last half trained at LR 0);
    the rate never rises and the end never passes the one EPOCHS sets."""
    from train.lr import fit_to_budget
    sched, budget, clock, lrs = _diffusion_sched(1000), 300.0, 0.0, []
    step_seconds = [2.0] * 10 + [1.0] * 990
    for epoch in range(100):
        for _ in range(10):
            if clock >= budget:
                break
            clock += step_seconds[len(lrs)]
            sched.optimizer.step()
            sched.step()
            lrs.append(sched.get_last_lr()[0])
        if clock >= budget:
            break
        per_step = sum(step_seconds[len(lrs) - 10:len(lrs)]) / 10  # this epoch's rate
        fit_to_budget([sched], len(lrs), budget - clock, per_step)
        assert sched.plan.total_steps <= 1000
    assert len(lrs) == 290
    after_warmup = lrs[10:]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(after_warmup, after_warmup[1:]))
    assert min(lrs[:-1]) > 0  # at its minimum only at the very end (was: from step 150 on)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # at its minimum when the budget ends
    long = _diffusion_sched(100)  # a budget longer than EPOCHS allows: the EPOCHS end stays
    fit_to_budget([long], 20, 1e6, 1.0)
    assert long.plan.total_steps == 100


@pytest.mark.parametrize("family, make, peak, floor", [
    ("diffusion", _diffusion_sched, 1e-3, 0.0),
    ("autoencoder", lambda n: _autoencoder_scheds(n)[0], 8e-4, 1e-7)])
def test_extending_a_finished_cosine_warm_restarts_it(family, make, peak, floor, capsys):
    """A cosine run that finished (LR at its minimum) given more epochs: the added steps ramp
    up to RESTART_FACTOR x LR, then decay by a new cosine to the minimum at the new end;
    never silently at LR 0."""
    from train.lr import RESTART_FACTOR
    first = make(100)
    for _ in range(100):
        first.optimizer.step()
        first.step()
    assert first.get_last_lr()[0] == pytest.approx(floor, abs=1e-12)
    second = make(300)
    second.optimizer.load_state_dict(first.optimizer.state_dict())
    second.load_state_dict(first.state_dict())
    assert "warm-restart" in capsys.readouterr().out
    lrs = []
    for _ in range(200):
        second.optimizer.step()
        second.step()
        lrs.append(second.get_last_lr()[0])
    top = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(RESTART_FACTOR * peak, rel=1e-9)
    assert 0 < top <= 10  # a short ramp (5% of the added steps)
    assert all(b >= a for a, b in zip(lrs[:top], lrs[1:top + 1]))
    assert all(b <= a * (1 + 1e-12) for a, b in zip(lrs[top:], lrs[top + 1:]))
    assert min(lrs[:-1]) > floor and lrs[-1] == pytest.approx(floor, abs=1e-12)
    third = make(300)  # resuming the restarted plan unchanged keeps it
    third.optimizer.load_state_dict(second.optimizer.state_dict())
    third.load_state_dict(second.state_dict())
    assert third.plan.__dict__ == second.plan.__dict__
