"""Distillation (models/distill.py, train/distill.py) against exact answers: the progressive
target's defining identity on both paths, the student's target in every parameterisation, the
reflow couplings' determinism and their closed-form endpoints on Gaussian data, and one-step
students that approach the teacher's ODE map there."""
import copy

import pytest
import torch

from models.diffusion import Denoiser, NoiseSchedule, PREDICTION_TYPES, predict_x0_eps
from models.distill import (coefficients, ddim_move, heun_move, make_couplings,
                            progressive_steps, progressive_target, student_target)
from models.flow import FlowSchedule
from models.samplers import sample
from tests.test_samplers import MU, STD, flow_oracle, vp_oracle


def test_progressive_steps_pair_the_teachers_grid():
    table = progressive_steps([999, 749, 499, 249])
    assert table.tolist() == [[999, 749, 499], [499, 249, -1]]
    with pytest.raises(ValueError, match="even number"):
        progressive_steps([999, 499, 0])


@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_one_student_step_to_the_target_lands_where_two_teacher_steps_do(kind):
    """Salimans & Ho's x~ is defined by this identity; checked at every row of a grid,
    the last ending on the clean image."""
    schedule = NoiseSchedule("cosine", 1000) if kind == "vp" else FlowSchedule(1000)
    teacher = vp_oracle(schedule) if kind == "vp" else flow_oracle(schedule)
    table = progressive_steps([999, 800, 600, 400, 200, 50])
    z = torch.linspace(-2, 2, 3 * len(table), dtype=torch.float64).view(-1, 1)
    rows = table.repeat_interleave(3, 0)
    x_target = progressive_target(teacher, z, rows)
    t, t_mid, t_next = rows.unbind(1)
    two = ddim_move(teacher, ddim_move(teacher, z, t, t_mid), t_mid, t_next)
    alpha, sigma = coefficients(schedule, t, z)
    alpha_n, sigma_n = coefficients(schedule, t_next, z)
    one = alpha_n * x_target + sigma_n * (z - alpha * x_target) / sigma  # DDIM from x~
    assert torch.allclose(one, two, atol=1e-10)
    clean = t_next == -1
    assert torch.allclose(x_target[clean], two[clean], atol=1e-12)


@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_a_heun_move_is_heun_samplers_step_and_nearly_the_exact_ode_map(kind):
    """Per-sample Heun moves (the round-1 teacher's step) against heun_sample over the same
    interval, and against the closed-form ODE map of Gaussian data, x_t -> alpha' MU +
    (s' / s)(x_t - alpha MU) with s^2 = alpha^2 STD^2 + sigma^2: at the intervals of a
    16-step grid and below, closer than a DDIM move, with a local error that falls as the cube
    of the interval (second order; DDIM's as the square)."""
    schedule = NoiseSchedule("cosine", 1000) if kind == "vp" else FlowSchedule(1000)
    teacher = vp_oracle(schedule) if kind == "vp" else flow_oracle(schedule)
    z = torch.linspace(-2, 2, 5, dtype=torch.float64).view(-1, 1)

    def exact(x, t, t_next):
        (a, s), (a_n, s_n) = coefficients(schedule, t, x), coefficients(schedule, t_next, x)
        spread, spread_n = (a ** 2 * STD ** 2 + s ** 2).sqrt(), (a_n ** 2 * STD ** 2 +
                                                                 s_n ** 2).sqrt()
        return a_n * MU + spread_n / spread * (x - a * MU)
    t, t_next = torch.full((5,), 700), torch.full((5,), 400)
    moved = ddim_move(teacher, heun_move(teacher, z, t, t_next), t_next, torch.full((5,), -1))
    assert torch.allclose(moved, sample(teacher, z.clone(), "heun", timesteps=[700, 400]).x,
                          atol=1e-12)
    errors = []
    for span in (100, 50):
        t_next = t - span
        errors.append([(move(teacher, z, t, t_next) - exact(z, t, t_next)).abs().max()
                       for move in (heun_move, ddim_move)])
        assert errors[-1][0] < 0.5 * errors[-1][1]
    assert 6 < errors[0][0] / errors[1][0] < 11  # about 2^3
    assert 3 < errors[0][1] / errors[1][1] < 5.5  # about 2^2
    to_clean = heun_move(teacher, z, t, torch.full((5,), -1))  # the last step is Euler's
    assert torch.allclose(to_clean, ddim_move(teacher, z, t, torch.full((5,), -1)))


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_the_student_target_predicts_the_target_image(prediction_type):
    schedule = FlowSchedule(100) if prediction_type == "flow" else NoiseSchedule("linear", 100)
    x_target = torch.linspace(-1, 1, 8, dtype=torch.float64).view(8, 1)
    z = torch.linspace(2, -3, 8, dtype=torch.float64).view(8, 1)
    t = torch.tensor([0, 5, 20, 40, 60, 80, 95, 99])
    out = student_target(schedule, x_target, z, t, prediction_type)
    x0, _ = predict_x0_eps(schedule, out, t, z, prediction_type)
    assert torch.allclose(x0, x_target, atol=1e-9)


def test_couplings_are_deterministic_and_are_the_teachers_ode_endpoints():
    teacher = flow_oracle(FlowSchedule(1000))
    args = dict(seed=3, sampler="heun", steps=40)
    z, labels, x = make_couplings(teacher, 0, 6, (1,), num_classes=4, **args)
    z2, labels2, x2 = make_couplings(teacher, 4, 2, (1,), num_classes=4, **args)
    assert torch.equal(z[4:], z2) and torch.equal(x[4:], x2)  # independent of the chunking
    assert labels.tolist() == [0, 1, 2, 3, 0, 1] and labels2.tolist() == [0, 1]
    assert torch.equal(x, sample(teacher, z.clone(), "heun", 40).x.float())
    # Gaussian data: the flow's ODE map is z -> MU + STD z (monotone transport in 1-D)
    assert torch.allclose(x, MU + STD * z, atol=2e-3)
    assert not torch.equal(make_couplings(teacher, 0, 6, (1,), **{**args, "seed": 4})[0], z)


class AffineInX(torch.nn.Module):
    """v(x, t) = a(t) x + b(t) with (a, b) from a small MLP of t: on 1-D Gaussian data the
    exact flow velocity, and the straightened one, have this form."""
    num_classes = 0

    def __init__(self, timesteps: int):
        super().__init__()
        self.timesteps = timesteps
        self.mlp = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.SiLU(),
                                       torch.nn.Linear(32, 32), torch.nn.SiLU(),
                                       torch.nn.Linear(32, 2))

    def forward(self, x, net_t, labels=None):
        tau = (torch.as_tensor(net_t, dtype=x.dtype) / self.timesteps).reshape(-1, 1)
        a, b = self.mlp(tau).unbind(1)
        return a.view(-1, 1) * x + b.view(-1, 1)


def _student(schedule, model=None):
    from train.diffusion_step import DiffusionSetup
    from train.lr import LRPlan, PlannedLR
    model = model or AffineInX(schedule.timesteps)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    no_ema = type("NoEMA", (), {"update_parameters": lambda self, m: None})()
    return DiffusionSetup(model, no_ema, opt, PlannedLR(opt, LRPlan(0, 10 ** 6, "constant")),
                          schedule, torch.device("cpu"), "flow")


def test_a_reflowed_student_takes_the_teachers_ode_map_in_one_step():
    """Gaussian data, where the teacher's ODE map is z -> MU + STD z: one Euler step of the
    teacher lands on MU for every z (at t = 1 it knows only the mean); one step of the student
    trained by reflow on the teacher's couplings follows the map."""
    from train.distill import reflow_loss
    torch.manual_seed(0)
    schedule = FlowSchedule(1000)
    teacher = flow_oracle(schedule)
    z, _, x = make_couplings(teacher, 0, 4096, (1,), seed=0, sampler="heun", steps=30)
    setup = _student(schedule)
    from train.diffusion_step import diffusion_step
    for _ in range(1500):
        pick = torch.randint(0, len(x), (256,))
        diffusion_step(setup, x[pick], None, loss_fn=reflow_loss, noise=z[pick])
    probe = torch.linspace(-2, 2, 41).view(-1, 1)
    student = Denoiser(setup.model, schedule, "flow")
    one_step = sample(student, probe.clone(), "ddim", 1).x
    teacher_one_step = sample(teacher, probe.clone(), "ddim", 1).x
    exact = MU + STD * probe
    assert (teacher_one_step - exact).abs().max() > 0.9
    assert (one_step - exact).abs().max() < 0.05


def test_progressive_rounds_reach_one_step_close_to_the_teachers_eight():
    """Gaussian data: rounds 8 -> 4 -> 2 -> 1 steps, each student the next round's teacher;
    the one-step student lands where the teacher's 8 DDIM steps do."""
    from models.grids import spaced_timesteps
    from train.distill import progressive_loss
    from train.diffusion_step import diffusion_step
    torch.manual_seed(0)
    schedule = FlowSchedule(1000)
    teacher, grid = flow_oracle(schedule), spaced_timesteps(schedule, 8)
    model = None
    while len(grid) > 1:
        table = progressive_steps(grid)
        setup = _student(schedule, model)
        for _ in range(400):
            x0 = MU + STD * torch.randn(256, 1)
            diffusion_step(setup, x0, None, loss_fn=progressive_loss, teacher=teacher,
                           table=table)
        model, grid = setup.model, grid[::2]  # the next student starts from this one...
        frozen = copy.deepcopy(model).requires_grad_(False)  # ...and is taught by a frozen copy
        teacher = Denoiser(frozen, schedule, "flow")
    probe = torch.linspace(-2, 2, 41).view(-1, 1)
    eight = sample(flow_oracle(schedule), probe.clone(), "ddim", 8).x
    one = sample(teacher, probe.clone(), "ddim", 1, timesteps=grid).x
    assert grid == [999]
    assert (one - eight).abs().max() < 0.05


TEACHER = ["--IMAGE_SIZE=16", "--N_TRAIN=64", "--BASE=16", "--CHANNEL_MULT=(1, 2)",
           "--BLOCKS=1", "--ATTENTION=(8,)", "--BATCH_SIZE=32", "--SAMPLE_STEPS=3",
           "--PROGRESSION_ROWS=2", "--WARMUP_STEPS=2", "--PRECISION=fp32", "--TIMESTEPS=50",
           "--EPOCHS=2", "--GUIDE_EPOCH=1", "--TENSORBOARD=False"]
STUDENT = ["--BATCH_SIZE=16", "--PROGRESSION_ROWS=2", "--PRECISION=fp32", "--WARMUP_STEPS=1",
           "--TENSORBOARD=False"]


def _stopped_after_one_epoch(monkeypatch, main, args) -> None:
    """main(args) stopped at the end of its first epoch, as a MINUTES deadline would."""
    import train.diffusion
    real_end = train.diffusion.end_epoch
    with monkeypatch.context() as patch:
        patch.setattr(train.diffusion, "end_epoch", lambda *a, **k: real_end(*a, **k) or True)
        main(args)


def test_students_train_resume_exactly_and_sample_in_their_own_steps(tmp_path, monkeypatch,
                                                                      capsys):
    from Diffusion_run_scripts import DiffusionDistill, DiffusionEval, DiffusionMain
    from utils.runs import MetricsLog, load_checkpoint
    from utils.errors import UserError
    teacher = DiffusionMain.main([*TEACHER, "--SAVE_ROOT", str(tmp_path)])
    progressive = [*STUDENT, "--SAVE_ROOT", str(tmp_path), f"--TEACHER={teacher.name}",
                   "--TEACHER_STEPS=4", "--STUDENT_STEPS=1", "--ROUND_STEPS=3"]
    straight = DiffusionDistill.main(progressive)
    state = load_checkpoint(straight.checkpoint, "diffusion")
    assert state["epoch"] == 2 and state["step"] == 6  # two rounds: 4 -> 2 -> 1 steps
    assert state["distilled"] == {"method": "progressive", "teacher": teacher.name, "steps": 1,
                                  "timesteps": [49]}
    assert state["frames"].shape[:2] == (2, 2)
    assert list(state["round_students"]) == [2]  # round 1's student, 2 steps
    assert state["round_students"][2]["timesteps"] == [49, 16]
    from train.distill_run import round_student
    assert round_student(state, 2, torch.device("cpu")).schedule.timesteps == 50
    with pytest.raises(UserError, match=r"students for \[1, 2\] steps, not 4"):
        round_student(state, 4, torch.device("cpu"))
    # the same student stopped after round 1 and resumed: bit for bit the same weights
    _stopped_after_one_epoch(monkeypatch, DiffusionDistill.main, progressive)
    split = DiffusionDistill.main(["--SAVE_ROOT", str(tmp_path), "--RESUME=latest",
                                   "--PRECISION=fp32"])
    resumed = load_checkpoint(split.checkpoint, "diffusion")
    assert split.name != straight.name and resumed["distilled"] == state["distilled"]
    for key in state["ema"]:
        assert torch.equal(state["ema"][key], resumed["ema"][key]), key
    assert [r["epoch"] for r in MetricsLog(split.metrics_path).read()] == [1, 2]

    seen = []

    def watched(denoiser, x, sampler, steps, **kwargs):
        seen.append((sampler, steps, kwargs.get("timesteps")))
        return sample(denoiser, x, sampler, steps, **kwargs)
    monkeypatch.setattr(DiffusionEval, "sample", watched)
    capsys.readouterr()
    evaluation = ["--SAVE_ROOT", str(tmp_path), "--GRID_SIZE=2", "--STRIP_IMAGES=1",
                  "--STRIP_COLUMNS=2", "--NOISED_T=(10, 49)", "--COMPARE=('ddim-2',)",
                  "--COMPARE_IMAGES=1", "--N_SAMPLES=4", "--METRICS=False"]
    DiffusionEval.main([*evaluation, f"--RUN={straight.name}"])
    assert {(name, steps, tuple(grid)) for name, steps, grid in seen} == {("ddim", 1, (49,))}
    assert "kept no guide" not in capsys.readouterr().out  # a student has none, by design
    seen.clear()
    DiffusionEval.main([*evaluation, f"--RUN={straight.name}", "--STEPS=3"])
    assert {s[1:] for s in seen} == {(3, None)}  # asked for other steps: the sampler's grid

    # reflow: couplings drawn once (a second run reuses none: each run has its own), trained on
    reflow = DiffusionDistill.main([*STUDENT, "--SAVE_ROOT", str(tmp_path), "--METHOD=reflow",
                                    f"--TEACHER={teacher.name}", "--PAIRS=32",
                                    "--PAIR_STEPS=2", "--EPOCHS=2", "--STUDENT_STEPS=2"])
    state = load_checkpoint(reflow.checkpoint, "diffusion")
    assert state["distilled"] == {"method": "reflow", "teacher": teacher.name, "steps": 2,
                                  "timesteps": None}
    pairs = load_checkpoint(reflow.models / "couplings.pt", "couplings")
    assert pairs["count"] == 32 and pairs["x"].shape == (32, 3, 16, 16)
    assert state["step"] == 4  # 2 epochs of 32 // 16 pairs

    with pytest.raises(UserError, match="halves the steps"):
        DiffusionDistill.main([*progressive, "--TEACHER_STEPS=6"])
    v_teacher = DiffusionMain.main([*TEACHER, "--SAVE_ROOT", str(tmp_path), "--PREDICTION=v",
                                    "--EPOCHS=1"])
    with pytest.raises(UserError, match="reflow retrains a flow model"):
        DiffusionDistill.main([*STUDENT, "--SAVE_ROOT", str(tmp_path), "--METHOD=reflow",
                               f"--TEACHER={v_teacher.name}"])


def test_latent_students_learn_the_guided_teacher_and_ldmeval_samples_them_unguided(
        tmp_path, monkeypatch):
    from LDM_run_scripts import LDMAutoencoderMain, LDMDiffusionMain, LDMDistill, LDMEval
    from tests.test_ldm import AE_TINY, LDM_TINY
    from utils.runs import load_checkpoint
    root = ["--SAVE_ROOT", str(tmp_path)]
    LDMAutoencoderMain.main([*AE_TINY, *root, "--TENSORBOARD=False"])
    teacher = LDMDiffusionMain.main([*LDM_TINY, *root, "--TENSORBOARD=False"])
    common = [*root, f"--TEACHER={teacher.name}", "--BATCH_SIZE=32", "--PRECISION=fp32",
              "--TENSORBOARD=False", "--GUIDANCE=3"]
    student = LDMDistill.main([*common, "--TEACHER_STEPS=4", "--STUDENT_STEPS=2",
                               "--ROUND_STEPS=2"])
    state = load_checkpoint(student.checkpoint, "ldm")
    assert state["distilled"]["steps"] == 2 and len(state["distilled"]["timesteps"]) == 2
    assert state["autoencoder_run"] == load_checkpoint(teacher.checkpoint)["autoencoder_run"]
    assert state["frames"].shape[1] == 10  # one sample per class
    seen = []
    real = LDMEval.class_samples

    def watched(denoiser, ae, scale, z, labels, steps, timesteps=None):
        seen.append((steps, timesteps, denoiser.net.__name__ if hasattr(denoiser.net,
                                                                        "__name__") else ""))
        return real(denoiser, ae, scale, z, labels, steps, timesteps=timesteps)
    monkeypatch.setattr(LDMEval, "class_samples", watched)
    LDMEval.main([*root, f"--RUN={student.name}", "--SCALES=(0, 1)", "--NOISED_T=(5, 49)",
                  "--STRIP_IMAGES=1", "--STRIP_COLUMNS=2", "--PER_CLASS=1", "--METRICS=False"])
    own = [s for s in seen if s[1] is not None]  # samples.npz: the student's steps and grid,
    assert own and all(s[0] == 2 and s[2] != "guided" for s in own)  # with no guidance on top
    reflow = LDMDistill.main([*common, "--METHOD=reflow", "--PAIRS=64", "--PAIR_STEPS=2",
                              "--EPOCHS=1"])
    pairs = load_checkpoint(reflow.models / "couplings.pt", "couplings")
    assert pairs["x"].shape == (64, 4, 4, 4)  # latents of the digits autoencoder
