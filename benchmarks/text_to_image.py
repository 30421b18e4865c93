"""Text-to-image from scratch, measured: the three stages trained (or given), then prompt
faithfulness read by the attribute reader, FID against the test scenes, a guidance sweep, the
time of a 4-image prompt grid, and the figures.

    python -m benchmarks.text_to_image                                   # train all stages
    python -m benchmarks.text_to_image --TEXT_ENCODERS='("frozen", "joint", "scratch")'
    python -m benchmarks.text_to_image --T2I_RUNS='("003",)' --RESULTS=None

Stages (each its own script in a child process, timed): TextEncoderMain (ENCODER_EPOCHS),
LDMAutoencoderMain on scenes (AUTOENCODER_EPOCHS), and one TextToImageMain per TEXT_ENCODERS
entry (UNET_MINUTES each). Prompts are the captions of the first N_PROMPTS test scenes (a
quarter of them held-out compositions); each gets one image through the Stable Diffusion
pipeline at the run's guidance, SAMPLER and STEPS. The attribute reader (trained on the ground
truth of scenes of every composition, held-out ones included: it is the judge, not the model;
its own faithfulness on the real test scenes is the ceiling row) reads
every image against its prompt: one-object prompts, the share with all attributes right, seen
and held-out apart; two-object prompts, the binding rate. Writes saved_plots/compare/<run>/
(results.md, prompt_grid.png with the reader's verdict under each image, guidance_sweep.png) and
publishes docs/results/text_to_image_scenes.md with the figures in saved_plots/showcase/.
"""
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.compare_families import call
from benchmarks.report import precision_name, publish
from train.attribute_reader import faithfulness, read, train_reader, verdicts
from train.evaluator import evaluate_samples
from train.stable_diffusion import StableDiffusion
from train.text_to_image import FAMILY, load_components
from utils import files
from utils.cli import run_cli
from utils.config import check_positive, resolve_constants
from utils.data import DataSpec, to_uint8
from utils.device import resolve_device
from utils.errors import UserError
from utils.plots import save_captioned_grid
from utils.runs import MetricsLog, existing_runs, find_run, load_checkpoint, new_run
from utils.scenes import (READER_HEADS, attribute_targets, captions, held_out_scene,
                          parse_caption, scene_targets)

TEXT_ENCODER_RUN = None  # a finished TextEncoderMain run; None: train one
AUTOENCODER_RUN = None  # a finished LDMAutoencoderMain run on scenes; None: train one
T2I_RUNS = None  # finished TextToImageMain runs to score; None: train one per TEXT_ENCODERS
TEXT_ENCODERS = ("joint",)  # TextToImageMain's TEXT_ENCODER for each run trained here
ENCODER_EPOCHS = 6  # TextEncoderMain's epochs
AUTOENCODER_EPOCHS = 3  # LDMAutoencoderMain's epochs on the 20,000 training scenes
UNET_MINUTES = 35.0  # TextToImageMain's budget per run (EPOCHS is its cap)
N_PROMPTS = 1000  # test-split captions, one image each
STEPS = 20  # sampler steps
SAMPLER = "dpmpp2m"  # the pipeline's sampler
GUIDANCE = None  # text CFG scale (None: each run's own GUIDANCE)
GUIDANCE_SWEEP = (1.0, 2.0, 3.0, 5.0, 8.0)  # scales of the sweep
N_SWEEP = 400  # prompts per sweep point
FIGURE_SEEDS = 4  # columns of the prompt grid
READER_SCENES = 20000  # scenes the attribute reader learns from (every composition)
FIGURE_PROMPTS = ("a small red star in the top left corner", "a large blue circle in the centre",
                  "a yellow triangle at the bottom right", "a large green star on the left",
                  "a small purple triangle at the top", "a pink square above a cyan circle",
                  "a red circle to the left of a blue square")
OVERRIDES = {}  # extra constants per script, e.g. {"TextToImageMain": ["--BASE=96"]}
SEED = 0  # seeds the stages, the prompts' captions and the noise
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # the stages' PRECISION (sampling here is fp32)
SAVE_ROOT = "."  # saved_plots/ and saved_models/ are created here
RESULTS = "docs/results"  # publish the table here for docs/ (None: only print it)


def stage(const, script: str, family: str, which, args: list[str]) -> tuple[str, float]:
    """A finished run of `family` (`which`), or a new one trained by `script`: (name, minutes
    of its training loop)."""
    if which is None:
        before = set(existing_runs(const.SAVE_ROOT, family))
        call(const, f"LDM_run_scripts.{script}", [f"--SAVE_ROOT={const.SAVE_ROOT}",
                                                  f"--SEED={const.SEED}",
                                                  f"--DEVICE={const.DEVICE}", *args])
        which = find_run(const.SAVE_ROOT, family, "latest").name
        if which in before:
            raise UserError(f"{script} left no new {family} run")
    run = find_run(const.SAVE_ROOT, family, which)
    minutes = sum(r.get("seconds", 0) for r in MetricsLog(run.metrics_path).read()) / 60
    return run.name, minutes


def prompt_set(const) -> tuple[list[str], dict, np.ndarray, object]:
    """The first N_PROMPTS test scenes' captions, their reader targets, and which are held-out."""
    test = DataSpec("scenes", 32, 3, const.SEED).held_out(const.N_PROMPTS)
    texts = captions(test.scenes, const.SEED + 11)
    held = np.array([held_out_scene(test.scenes, i) for i in range(len(texts))])
    return texts, scene_targets(test.scenes), held, test


@torch.no_grad()
def generate(pipe: StableDiffusion, prompts: list[str], guidance: float, const, seed: int = 0,
             batch: int = 100) -> torch.Tensor:
    """One uint8 image per prompt, each batch from its own seed."""
    out = []
    for k, start in enumerate(range(0, len(prompts), batch)):
        result = pipe.generate(prompts[start:start + batch], steps=const.STEPS,
                               guidance=guidance, sampler=const.SAMPLER, height=32, width=32,
                               seed=(const.SEED + seed) * 1000 + k)
        out.append(to_uint8(result.images))
    return torch.cat(out)


def split_scores(seen: dict, asked: dict, held: np.ndarray) -> dict:
    """faithfulness() for the seen and the held-out prompts apart."""
    out = {}
    for name, rows in (("seen", ~held), ("held_out", held)):
        index = torch.as_tensor(np.flatnonzero(rows))
        if len(index):
            out[name] = faithfulness({k: v[index] for k, v in seen.items()},
                                     {k: v[index] for k, v in asked.items()})
    return out


def grid_seconds(pipe: StableDiffusion, const) -> float:
    """Best of three: a 4-image prompt grid at 32x32 with STEPS steps (decoding included)."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        pipe.generate(list(const.FIGURE_PROMPTS[:4]), steps=const.STEPS, guidance=3.0,
                      sampler=const.SAMPLER, height=32, width=32, seed=0)
        times.append(time.perf_counter() - started)
    return min(times)


def figures(pipe, reader, run_name: str, guidance: float, const, out: Path) -> None:
    """prompt_grid.png (rows: FIGURE_PROMPTS, columns: seeds, the verdict under each) and
    guidance_sweep.png (rows: prompts, columns: GUIDANCE_SWEEP, one seed)."""
    targets = [attribute_targets(parse_caption(p)) for p in const.FIGURE_PROMPTS]
    asked = {k: torch.tensor([t[k] for t in targets]) for k in READER_HEADS}
    columns = [generate(pipe, list(const.FIGURE_PROMPTS), guidance, const, seed=s)
               for s in range(const.FIGURE_SEEDS)]
    _captioned(reader, columns, asked, [f"seed {s}" for s in range(const.FIGURE_SEEDS)],
               out / "prompt_grid.png", const, f"{run_name}: guidance {guidance:g}")
    sweep = [generate(pipe, list(const.FIGURE_PROMPTS), w, const)
             for w in const.GUIDANCE_SWEEP]
    _captioned(reader, sweep, asked, [f"w = {w:g}" for w in const.GUIDANCE_SWEEP],
               out / "guidance_sweep.png", const, f"{run_name}: text guidance sweep, seed "
               f"{const.SEED}")


def _captioned(reader, columns, asked, col_labels, path, const, title) -> None:
    said = [verdicts(read(reader, images), asked) for images in columns]
    rows = torch.stack(columns, dim=1)  # (prompts, columns, C, H, W)
    save_captioned_grid(rows, [[said[c][r] for c in range(len(columns))]
                               for r in range(len(rows))], path,
                        row_labels=list(const.FIGURE_PROMPTS), col_labels=col_labels,
                        title=title)


def _share(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _row(r: dict) -> str:
    f = r["faithfulness"]

    def get(split, group, key):
        return _share(f.get(split, {}).get(group, {}).get(key))
    fid = f"{r['fid']:.1f} ({r['fid_floor']:.2f})" if "fid" in r else "n/a"
    grid = f"{r['grid_seconds']:.2f}" if "grid_seconds" in r else "n/a"
    return (f"| {r['label']} | {r.get('guidance', 'n/a')} | "
            f"{get('seen', 'one_object', 'all_right')} | "
            f"{get('held_out', 'one_object', 'all_right')} | "
            f"{get('seen', 'two_objects', 'binding')} | "
            f"{get('held_out', 'two_objects', 'binding')} | {fid} | {grid} |")


def markdown(rows: list[dict], ceiling: dict, sweep: list[dict], stages: dict, const) -> str:
    lines = [
        f"Prompts: the captions of the first {const.N_PROMPTS} test scenes (a quarter are "
        f"held-out compositions, never in training), one image each, {const.SAMPLER} "
        f"{const.STEPS} steps. The attribute reader reads each image against its prompt; "
        f"'real test scenes' is the reader on the real images of those scenes (its ceiling). "
        f"FID: the evaluator CNN trained on scenes, samples against the test scenes (floor: "
        f"training against test scenes).", "",
        "| model | guidance | one object, all right: seen | one object: held-out | "
        "two objects, binding: seen | two objects: held-out | FID (floor) | 4-image grid, s |",
        "|---|---|---|---|---|---|---|---|", *(_row(r) for r in [ceiling, *rows])]
    if sweep:
        lines += ["", f"Guidance sweep ({const.N_SWEEP} prompts, {sweep[0]['label']}):", "",
                  "| guidance | one object, all right: seen | held-out | binding: seen | "
                  "held-out |", "|---|---|---|---|---|"]
        for r in sweep:
            lines.append("| " + " | ".join(_row(r).split(" | ")[1:6]) + " |")
    lines += ["", "Training minutes (each stage's loop): " + ", ".join(
        f"{name} {minutes:.1f}" for name, minutes in stages.items())
        + f"; total {sum(stages.values()):.1f}.", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    const = resolve_constants(globals(), argv)
    check_positive(const, "N_PROMPTS", "STEPS", "N_SWEEP", "FIGURE_SEEDS", "UNET_MINUTES",
                   "READER_SCENES")
    device = resolve_device(const.DEVICE)
    precision = f"--PRECISION={const.PRECISION}"
    encoder, encoder_minutes = stage(const, "TextEncoderMain", "text_encoder",
                                     const.TEXT_ENCODER_RUN,
                                     [f"--EPOCHS={const.ENCODER_EPOCHS}", precision])
    autoencoder, ae_minutes = stage(const, "LDMAutoencoderMain", "ldm_autoencoder",
                                    const.AUTOENCODER_RUN,
                                    ["--DATASET=scenes", f"--EPOCHS={const.AUTOENCODER_EPOCHS}",
                                     precision])
    stages = {f"text encoder ({encoder})": encoder_minutes,
              f"autoencoder ({autoencoder})": ae_minutes}
    runs = list(const.T2I_RUNS or [])
    for name in runs:  # given runs: their own training minutes
        run_name, minutes = stage(const, "TextToImageMain", FAMILY, name, [])
        stages[f"UNet ({run_name})"] = minutes
    if not runs:
        for mode in const.TEXT_ENCODERS:
            name, minutes = stage(const, "TextToImageMain", FAMILY, None, [
                f"--TEXT_ENCODER={mode}", f"--TEXT_ENCODER_RUN={encoder}",
                f"--AUTOENCODER_RUN={autoencoder}", f"--MINUTES={const.UNET_MINUTES}",
                precision])
            runs.append(name)
            stages[f"UNet ({name})"] = minutes
    prompts, asked, held, test = prompt_set(const)
    # the judge sees every composition (the model never does): scenes drawn as the test split
    # draws them, held-out ones included, from another seed than the prompts'
    train = DataSpec("scenes", 32, 3, const.SEED + 1).load("test", const.READER_SCENES)
    print("training the attribute reader on rendered scenes of every composition")
    reader = train_reader(train.images, scene_targets(train.scenes), seed=const.SEED,
                          device=device)
    ceiling = {"label": "real test scenes",
               "faithfulness": split_scores(read(reader, test.images), asked, held)}
    out = new_run(const.SAVE_ROOT, "compare", "scenes", "t2i").plots
    rows, sweep = [], []
    for k, name in enumerate(runs):
        parts = load_components(const.SAVE_ROOT, name, device)
        pipe = StableDiffusion(parts, device, torch.float32)
        guidance = const.GUIDANCE or parts.defaults["guidance"]
        config = load_checkpoint(find_run(const.SAVE_ROOT, FAMILY, name).checkpoint,
                                 FAMILY)["config"]
        images = generate(pipe, prompts, guidance, const)
        scores = evaluate_samples(images, None, "scenes", device, save_root=const.SAVE_ROOT,
                                  seed=const.SEED)
        rows.append({"label": f"{name} (text encoder {config['TEXT_ENCODER']})",
                     "run": name, "guidance": guidance,
                     "faithfulness": split_scores(read(reader, images), asked, held),
                     "fid": scores["fid"], "fid_floor": scores["real_vs_real"]["fid"],
                     "grid_seconds": grid_seconds(pipe, const)})
        print(_row(rows[-1]))
        if k == 0:  # the sweep and the figures for the first run
            for w in const.GUIDANCE_SWEEP:
                few = generate(pipe, prompts[:const.N_SWEEP], w, const)
                sweep.append({"label": name, "guidance": w, "faithfulness": split_scores(
                    read(reader, few), {key: v[:const.N_SWEEP] for key, v in asked.items()},
                    held[:const.N_SWEEP])})
            figures(pipe, reader, name, guidance, const, out)
    text = markdown(rows, ceiling, sweep, stages, const)
    data = {"constants": vars(const), "rows": rows, "ceiling": ceiling, "sweep": sweep,
            "stages_minutes": stages}
    files.write_text(out / "results.md", text)
    files.write_json(out / "results.json", data)
    publish(const.RESULTS, "text_to_image_scenes", text, data, module=__name__, argv=argv,
            precision=precision_name(const.PRECISION))
    if const.RESULTS:
        for figure in ("prompt_grid", "guidance_sweep"):
            shutil.copy(out / f"{figure}.png", Path("saved_plots/showcase") / f"t2i_{figure}.png")
    print(text)
    print(json.dumps({"out": str(out)}))
    return data


if __name__ == "__main__":
    run_cli(main)
