"""Few-step students against their teacher, on the same noise: a diffusion teacher (pixel,
FAMILY="diffusion", or latent, "ldm"), its progressive and reflow students
(DiffusionDistill / LDMDistill), each sampled from the same N_SAMPLES noise images (and, for the
class-conditional LDM, the same labels) and scored by the project's evaluator.

    python -m benchmarks.distill_compare                        # shapes, a 25-minute teacher
    python -m benchmarks.distill_compare --TEACHER=003          # distil an existing run
    python -m benchmarks.distill_compare --FAMILY=ldm           # a latent teacher, CFG baked in

The teacher is sampled as its eval script samples it (pixels: autoguided where it kept a
guide; latents: classifier-free guidance at GUIDANCE), as its students were taught, with each
of TEACHER_SAMPLERS; each student at each of STEPS (a progressive run keeps a student per
round: 4, 2 and 1 steps from one run; a reflowed flow is sampled with Euler steps at any count).
Every row reports FID against the real-vs-real floor, precision, recall, class accuracy (LDM)
and milliseconds per image (in this process, one after the other; an LDM's include decoding);
each student's row the wall minutes its distillation took against the teacher's training
minutes (an LDM teacher's: both stages).
Writes saved_plots/compare/<run>/ (results.md, same_noise.png: a row per method and steps,
the same noise in each column) and publishes docs/results/distill_<FAMILY>_<data>.md with the
figure as saved_plots/showcase/distill_<FAMILY>_<data>.png (RESULTS=None: neither).
"""
import json
import shutil
import time
from pathlib import Path

import torch

from benchmarks.compare_families import call
from benchmarks.report import precision_name, publish
from models.samplers import sample
from train.distill_run import round_student
from train.evaluator import evaluate_samples
from train.inference import checkpoint_denoiser, load_run, run_denoiser
from train.latents import decode_latents, guided
from utils import files
from utils.cli import run_cli
from utils.config import check_positive, resolve_constants
from utils.data import to_uint8
from utils.device import resolve_device, resolve_precision
from utils.errors import UserError
from utils.image_folder import folder_label
from utils.plots import save_labelled_grid
from utils.runs import MetricsLog, existing_runs, find_run, new_run

FAMILY = "diffusion"  # diffusion (pixels) or ldm (latents, class-conditional)
DATASET = "shapes"  # the teacher's data (when it is trained here)
DATA_ROOT = "data"  # torchvision's downloads, or the image folder of DATASET="folder"
TEACHER = None  # a finished diffusion run to distil; None: train one for TEACHER_MINUTES
TEACHER_MINUTES = 25.0  # that teacher's wall-clock budget (about what its students' rounds take)
METHODS = ("progressive", "reflow")  # DiffusionDistill's METHOD values to run
STEPS = (1, 2, 4)  # student steps scored
TEACHER_SAMPLERS = ("dpmpp2m-10", "ddim-50")  # the teacher's samplers scored
AUTOGUIDANCE = 2.0  # pixels: the teacher's autoguidance weight, in sampling and distillation
GUIDANCE = 2.0  # ldm: the teacher's CFG scale, in sampling and distillation (LDMEval's)
AUTOENCODER_SHARE = 0.35  # ldm: share of TEACHER_MINUTES for stage 1 (compare_families')
N_SAMPLES = 1000  # samples per row, from the same noise
FIGURE_COLUMNS = 8  # noise images in same_noise.png
OVERRIDES = {}  # extra constants per script, e.g. {"DiffusionDistill": ["--ROUND_STEPS=300"]}
SEED = 0  # seeds the runs and the shared noise
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where fast), bf16, fp32
SAVE_ROOT = "."  # saved_plots/ and saved_models/ are created here
RESULTS = "docs/results"  # publish the table here for docs/ (None: only print it)


def common(const) -> list[str]:
    return [f"--SEED={const.SEED}", f"--DEVICE={const.DEVICE}", f"--PRECISION={const.PRECISION}",
            f"--SAVE_ROOT={const.SAVE_ROOT}", f"--DATA_ROOT={const.DATA_ROOT}"]


_SCRIPTS = {"diffusion": ("Diffusion_run_scripts.DiffusionMain",
                         "Diffusion_run_scripts.DiffusionDistill"),
            "ldm": ("LDM_run_scripts.LDMDiffusionMain", "LDM_run_scripts.LDMDistill")}


def _minutes(run) -> float:
    return sum(r["seconds"] for r in MetricsLog(run.metrics_path).read()) / 60


def teacher_run(const) -> tuple[str, float]:
    """The teacher's name and its training minutes (trained here unless TEACHER names one)."""
    if const.TEACHER is None:
        data = [f"--DATASET={const.DATASET}", "--EPOCHS=100000"]
        minutes = const.TEACHER_MINUTES
        if const.FAMILY == "ldm":
            stage1 = minutes * const.AUTOENCODER_SHARE
            call(const, "LDM_run_scripts.LDMAutoencoderMain",
                 [*common(const), *data, f"--MINUTES={stage1}"])
            data, minutes = ["--EPOCHS=100000"], minutes - stage1
        call(const, _SCRIPTS[const.FAMILY][0], [*common(const), *data, f"--MINUTES={minutes}"])
    run = find_run(const.SAVE_ROOT, const.FAMILY, const.TEACHER or "latest")
    minutes = _minutes(run)
    if const.FAMILY == "ldm":  # both stages
        state = load_run(const.SAVE_ROOT, "ldm", run.name, torch.device("cpu")).state
        minutes += _minutes(find_run(const.SAVE_ROOT, "ldm_autoencoder",
                                     state["autoencoder_run"]))
    return run.name, minutes


def distil(const, teacher: str, method: str) -> tuple[str, float]:
    """A student of `method` for the teacher, distilled to min(STEPS) steps; its name and
    wall minutes."""
    before = set(existing_runs(const.SAVE_ROOT, const.FAMILY))
    guidance = (f"--AUTOGUIDANCE={const.AUTOGUIDANCE}" if const.FAMILY == "diffusion"
                else f"--GUIDANCE={const.GUIDANCE}")
    started = time.perf_counter()
    call(const, _SCRIPTS[const.FAMILY][1],
         [*common(const), f"--TEACHER={teacher}", f"--METHOD={method}",
          f"--STUDENT_STEPS={min(const.STEPS)}", guidance])
    minutes = (time.perf_counter() - started) / 60
    run = find_run(const.SAVE_ROOT, const.FAMILY, "latest")
    if run.name in before:
        raise UserError(f"{_SCRIPTS[const.FAMILY][1]} left no new run in {const.SAVE_ROOT}")
    return run.name, minutes


def draw(denoiser, noise: torch.Tensor, labels, sampler: str, steps: int, grid, decode,
         chunk: int = 250) -> tuple[torch.Tensor, float]:
    """uint8 samples from the shared noise (and labels) and the milliseconds per image they
    took, decoding included (`decode`: latents to images; None for pixels)."""
    started, out = time.perf_counter(), []
    for start in range(0, len(noise), chunk):
        y = None if labels is None else labels[start:start + chunk]
        x = sample(denoiser, noise[start:start + chunk].clone(), sampler, steps, timesteps=grid,
                   labels=y).x
        out.append(to_uint8(decode(x) if decode else x).cpu())
    return torch.cat(out), 1000 * (time.perf_counter() - started) / len(noise)


def teacher_sampled(const, loaded, amp_dtype):
    """The teacher as its eval script samples it (and as it taught)."""
    if const.FAMILY == "diffusion":
        return run_denoiser(loaded, amp_dtype, const.AUTOGUIDANCE)
    denoiser = checkpoint_denoiser(loaded.state, loaded.nets["net"], amp_dtype=amp_dtype,
                                   clip_x0=False)
    return guided(denoiser, loaded.nets["net"], const.GUIDANCE)


def rows_to_score(const, teacher: str, students: dict, device, amp_dtype) -> list[tuple]:
    """(label, denoiser, sampler, steps, grid, extra) for every row of the table."""
    loaded = load_run(const.SAVE_ROOT, const.FAMILY, teacher, device)
    clip = const.FAMILY == "diffusion"
    rows = []
    for spec in const.TEACHER_SAMPLERS:
        sampler, steps = spec.split("-")
        rows.append((f"teacher {spec}", teacher_sampled(const, loaded, amp_dtype), sampler,
                     int(steps), None, {}))
    for method, (name, minutes) in students.items():
        student = load_run(const.SAVE_ROOT, const.FAMILY, name, device)
        for steps in sorted(const.STEPS):
            if method == "progressive":
                denoiser = round_student(student.state, steps, device, amp_dtype, clip)
                kept = student.state.get("round_students", {}).get(steps)
                grid = kept["timesteps"] if kept else student.state["distilled"]["timesteps"]
            else:
                denoiser = checkpoint_denoiser(student.state, student.nets["net"],
                                               amp_dtype=amp_dtype, clip_x0=clip)
                grid = None
            rows.append((f"{method} {steps}", denoiser, "ddim", steps, grid,
                         {"run": name, "distill_minutes": minutes}))
    return rows


def sample_space(const, teacher: str, device) -> tuple:
    """(the data spec scored against, the shape of one sample, the number of classes, decode:
    latents to images or None)."""
    loaded = load_run(const.SAVE_ROOT, const.FAMILY, teacher, device)
    if const.FAMILY == "diffusion":
        spec = loaded.data
        return spec, (spec.channels, spec.image_size, spec.image_size), 0, None
    stage1 = load_run(const.SAVE_ROOT, "ldm_autoencoder", loaded.state["autoencoder_run"], device)
    scale, ae = loaded.state["scale_factor"], stage1.nets["autoencoder"]
    return (stage1.data, tuple(loaded.state["fixed_noise"].shape[1:]),
            loaded.nets["net"].num_classes, lambda z: decode_latents(ae, z, scale))


def markdown(results: list[dict], teacher: str, teacher_minutes: float) -> str:
    head = ("| sampler | steps | ms/img | FID (real vs real) | precision | recall | class acc | "
            "distillation min (teacher's training min) |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in results:
        cost = (f"{r['distill_minutes']:.1f} ({teacher_minutes:.1f})"
                if "distill_minutes" in r else "")
        acc = "n/a" if r["class_accuracy"] is None else f"{r['class_accuracy']:.3f}"
        lines.append(f"| {r['label']} | {r['steps']} | {r['ms']:.1f} | {r['fid']:.2f} "
                     f"({r['floor']:.2f}) | {r['precision']:.3f} | {r['recall']:.3f} | {acc} | "
                     f"{cost} |")
    return f"Teacher: `{teacher}`.\n\n" + "\n".join(lines)


def main(argv=None) -> list[dict]:
    const = resolve_constants(globals(), argv)
    check_positive(const, "N_SAMPLES", "TEACHER_MINUTES", "FIGURE_COLUMNS")
    if const.FAMILY not in _SCRIPTS:
        raise UserError(f"FAMILY must be diffusion or ldm, got {const.FAMILY!r}")
    if not set(const.METHODS) <= {"progressive", "reflow"} or not const.STEPS:
        raise UserError(f"METHODS must be progressive and/or reflow and STEPS not empty, got "
                        f"{const.METHODS!r}, {const.STEPS!r}")
    device = resolve_device(const.DEVICE)
    amp_dtype = resolve_precision(const.PRECISION, device)
    teacher, teacher_minutes = teacher_run(const)
    students = {method: distil(const, teacher, method) for method in const.METHODS}
    spec, shape, classes, decode = sample_space(const, teacher, device)
    generator = torch.Generator().manual_seed(const.SEED)
    noise = torch.randn((const.N_SAMPLES, *shape), generator=generator).to(device)
    labels = (torch.arange(const.N_SAMPLES) % classes).to(device) if classes else None
    results, figure = [], []
    for label, denoiser, sampler, steps, grid, extra in rows_to_score(const, teacher, students,
                                                                      device, amp_dtype):
        images, ms = draw(denoiser, noise, labels, sampler, steps, grid, decode)
        scores = evaluate_samples(images, labels, spec.dataset, device,
                                  save_root=const.SAVE_ROOT, data_root=const.DATA_ROOT,
                                  seed=spec.seed)
        results.append({"label": label, "steps": steps, "ms": ms, "fid": scores["fid"],
                        "floor": scores["real_vs_real"]["fid"],
                        "precision": scores["precision"], "recall": scores["recall"],
                        "class_accuracy": scores.get("class_accuracy"), **extra})
        figure.append(images[:const.FIGURE_COLUMNS])
        print(f"{label}: FID {scores['fid']:.2f}, {ms:.1f} ms/img")
    out = new_run(const.SAVE_ROOT, "compare", spec.dataset, f"distill-{const.FAMILY}").plots
    text = markdown(results, teacher, teacher_minutes)
    files.write_text(out / "results.md", text)
    files.write_json(out / "results.json", {"constants": vars(const), "rows": results})
    save_labelled_grid(torch.stack(figure), out / "same_noise.png",
                       row_labels=[r["label"] for r in results],
                       title="the same noise through the teacher and each student")
    data = folder_label(const.DATA_ROOT) if spec.dataset == "folder" else spec.dataset
    name = f"distill_{const.FAMILY}_{data}"
    publish(const.RESULTS, name, text, {"constants": vars(const), "rows": results},
            module=__name__, argv=argv, precision=precision_name(const.PRECISION))
    if const.RESULTS:
        shutil.copy(out / "same_noise.png", Path("saved_plots/showcase") / f"{name}.png")
    print(text)
    print(json.dumps({"out": str(out)}))
    return results


if __name__ == "__main__":
    run_cli(main)
