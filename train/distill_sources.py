"""What a distillation run learns from: the teacher run of either diffusion family with its data,
and the one run_distillation both families' scripts call (Diffusion_run_scripts/DiffusionDistill,
LDM_run_scripts/LDMDistill; the methods are in train/distill_run.py).

pixels ("diffusion"): the teacher autoguided by its guide as DiffusionEval samples it; the
    training images; samples from fixed noise in the progression.
latents ("ldm"): the class-conditional teacher with classifier-free guidance baked in (its
    students learn the guided ODE, conditioned on the label, and sample without guidance); the
    stage-1 run's cached latents; one decoded sample per class in the progression.
"""
from dataclasses import dataclass, field
from typing import Callable

import torch

from models.diffusion import Denoiser
from models.distill import MOVES
from train.diffusion import train_diffusion
from train.distill_run import (METHODS, Progressive, build_student, check_halvings,
                               coupled_batches, draw_couplings, reflow_step, round_batches)
from train.diffusion_step import DiffusionSetup, ema_denoiser
from train.inference import Loaded, checkpoint_denoiser, load_run, run_denoiser
from train.latents import class_samples, finished_stage1, guided, held_out_latents, latent_batches
from train.options import Deadline, LoopOptions
from models.samplers import sample
from utils.config import check_choice, check_positive
from utils.data import DataSpec, iterate_batches, to_uint8
from utils.errors import UserError
from utils.run_index import write_indexes
from utils.session import open_run, resume_run, seed_and_device


@dataclass
class Teaching:
    """A teacher run made ready to teach."""
    loaded: Loaded
    denoiser: Denoiser  # the teacher as it is taught from (guided)
    data: DataSpec  # the images the family models (recorded in the student's checkpoint)
    shape: tuple  # of one sample: an image, or a latent
    num_classes: int  # 0: unconditional
    clip_x0: bool  # pixels are clipped to [-1, 1], latents are not
    train_batches: Callable  # one pass of (x, labels) batches of the training data
    test_x: torch.Tensor  # held-out data for the held-out loss
    frame: Callable  # (denoiser, noise, steps, grid) -> the progression's uint8 frame
    noise_rows: int  # fixed noise images followed in the progression
    extras: dict = field(default_factory=dict)  # checkpoint extras of the family
    row_labels: tuple = ()


def pixel_teaching(const, device: torch.device, amp_dtype) -> Teaching:
    teacher = load_run(const.SAVE_ROOT, "diffusion", const.TEACHER, device)
    spec = teacher.data
    n_train = teacher.state["config"].get("N_TRAIN")  # the images the teacher saw
    images = None

    def train_batches():
        nonlocal images
        if images is None:
            images = spec.load("train", n_train, const.DATA_ROOT).to(device)
        return iterate_batches(images, const.BATCH_SIZE, device, shard=True)

    @torch.no_grad()
    def frame(denoiser, noise, steps, grid):
        return to_uint8(sample(denoiser, noise.clone(), "ddim", steps, timesteps=grid).x).cpu()
    return Teaching(teacher, run_denoiser(teacher, amp_dtype, const.AUTOGUIDANCE), spec,
                    (spec.channels, spec.image_size, spec.image_size), 0, True, train_batches,
                    spec.held_out(512, const.DATA_ROOT).first(512)[0], frame,
                    const.PROGRESSION_ROWS)


def latent_teaching(const, device: torch.device, amp_dtype) -> Teaching:
    teacher = load_run(const.SAVE_ROOT, "ldm", const.TEACHER, device)
    stage1, cache = finished_stage1(const.SAVE_ROOT, teacher.state["autoencoder_run"], device)
    net, scale = teacher.nets["net"], teacher.state["scale_factor"]
    denoiser = checkpoint_denoiser(teacher.state, net, amp_dtype=amp_dtype, clip_x0=False)
    if const.GUIDANCE != 1:
        denoiser = guided(denoiser, net, const.GUIDANCE)
    classes = net.num_classes
    labels = torch.arange(classes, device=device)

    def frame(denoiser, noise, steps, grid):
        return class_samples(denoiser, stage1.nets["autoencoder"], scale, noise, labels, steps,
                             timesteps=grid)
    return Teaching(teacher, denoiser, stage1.data, tuple(cache["mean"].shape[1:]), classes,
                    False, lambda: latent_batches(cache, scale, const.BATCH_SIZE, device),
                    held_out_latents(stage1, const.DATA_ROOT), frame, classes,
                    {"autoencoder_run": stage1.run.name, "scale_factor": scale},
                    tuple(cache.get("class_names", ())))


SOURCES = {"diffusion": pixel_teaching, "ldm": latent_teaching}


def run_distillation(const, family: str, argv):
    """The body of DiffusionDistill and LDMDistill: distil (or resume distilling) a student of
    the family's TEACHER run; returns the student's run."""
    run, state, const = resume_run(const, family, argv)
    check_choice("METHOD", const.METHOD, METHODS)
    check_choice("TEACHER_SOLVER", const.TEACHER_SOLVER, tuple(MOVES))
    check_positive(const, "BATCH_SIZE", "LR", "ROUND_STEPS", "PAIRS", "PAIR_STEPS",
                   "STUDENT_STEPS", "TEACHER_STEPS", "CHECKPOINT_EVERY")
    if const.METHOD == "progressive":
        const.EPOCHS = check_halvings(const.TEACHER_STEPS, const.STUDENT_STEPS)
    deadline = Deadline(const.MINUTES)
    device, amp_dtype = seed_and_device(const)
    teaching = SOURCES[family](const, device, amp_dtype)
    teacher = teaching.loaded
    if run is not None and teacher.run.name == run.name:
        raise UserError(f"{run.name} cannot teach itself; name its teacher with --TEACHER")
    const.TEACHER = teacher.run.name  # a resumed student keeps this exact teacher
    prediction = teacher.state["diffusion"]["prediction"]
    if const.METHOD == "reflow" and prediction != "flow":
        raise UserError(f"reflow retrains a flow model; {teacher.run.name} predicts "
                        f"{prediction!r} (use --METHOD=progressive)")
    steps_per_epoch = (const.ROUND_STEPS if const.METHOD == "progressive"
                       else max(1, const.PAIRS // const.BATCH_SIZE))
    setup = build_student(teacher, const, device, amp_dtype, const.EPOCHS * steps_per_epoch)
    run = open_run(const, family, const.METHOD, run, dataset=teaching.data.dataset)
    record = {"method": const.METHOD, "teacher": teacher.run.name,
              "steps": const.STUDENT_STEPS, "timesteps": None}
    extras = {**teaching.extras, "distilled": record}
    noise = state["fixed_noise"] if state else torch.randn(teaching.noise_rows, *teaching.shape)
    noise = noise.to(device)
    if const.METHOD == "progressive":
        extras["round_students"] = state.get("round_students", {}) if state else {}
        rounds = Progressive(setup, teaching.denoiser, const.TEACHER_STEPS, record,
                             extras["round_students"], teaching.clip_x0, const.TEACHER_SOLVER)
        hooks = dict(step=rounds.step, before_epoch=rounds.before_epoch)

        def batches(epoch):
            return round_batches(teaching.train_batches, const.ROUND_STEPS)
    else:
        pairs = draw_couplings(run, teaching.denoiser, teaching.shape, const,
                               teaching.num_classes, device, deadline, vars(const))
        if pairs is None:
            print(f"time budget reached while drawing couplings; resume with "
                  f"--RESUME={run.name}")
            return run
        hooks = dict(step=lambda batch: reflow_step(setup, batch))

        def batches(epoch):
            return coupled_batches(pairs, teaching.shape, const.SEED, const.BATCH_SIZE,
                                   teaching.num_classes, device)

    def snapshot() -> torch.Tensor:
        return teaching.frame(student(setup, teaching.clip_x0), noise, record["steps"],
                              record["timesteps"])
    train_diffusion(
        setup, batches, steps_per_epoch, teaching.test_x, run,
        LoopOptions.of(const, teaching.data, state, deadline), kind=family, fixed_noise=noise,
        snapshot=snapshot, row_labels=teaching.row_labels,
        sample_title=f"student ({const.METHOD}) from fixed noise, in its own steps",
        extras=extras, **hooks)
    write_indexes(run.plots)  # the run's index.html and saved_plots/index.html
    print(f"done: a {record['steps']}-step student of {teacher.run.name}; figures in "
          f"{run.plots}")
    return run


def student(setup: DiffusionSetup, clip_x0: bool) -> Denoiser:
    """The student's EMA denoiser."""
    return ema_denoiser(setup, clip_x0=clip_x0)
