"""Head-to-head: every family trained on one data set for the same wall-clock budget, then scored.

    python -m benchmarks.compare_families                    # shapes 32x32, 10 minutes per family
    python -m benchmarks.compare_families --MINUTES=3 --FAMILIES="('gan', 'vae')"

Each family trains with its run script's own defaults for MINUTES of wall time (EPOCHS is raised
so the budget, not the epoch count, stops it; a cosine learning rate is re-planned after each
epoch to end with the budget, train.lr.fit_to_budget). The LDM splits its budget:
AUTOENCODER_SHARE for stage 1, the rest for stage 2.
Then the family's eval script draws N_SAMPLES samples, times them, and scores them with the same
feature extractor against the same held-out images. Every script runs in its own process (python
-m, as a user would run it), so no family's memory or threads carry into the next and each
peak resident memory is measured on its own.

Writes to saved_plots/compare/<run>/: results.md (the table), results.html (the table and the
chart, linked from saved_plots/index.html), results.json (everything, rewritten after each
family so a crash keeps what finished) and bars.png. The trained runs stay in their
family folders (named in the table), with their usual figures and eval/ folders. The table is
also published for docs/ as docs/results/compare_<data>_<minutes>min.md (RESULTS=None: not).
"""
import json
import os
import subprocess
import sys
import time

import torch

from models.autoencoder import PatchDiscriminator
from train.inference import Loaded, load_run
from utils import files
from utils.config import check_positive, resolve_constants
from utils.device import resolve_device, resolve_precision
from utils.cli import run_cli
from utils.errors import INTERRUPTED_STATUS, Interrupted, UserError
from utils.plots import save_bar_charts
from benchmarks.report import precision_name, publish
from utils.image_folder import folder_label
from utils.run_index import write_results_page
from utils.runs import MetricsLog, Run, existing_runs, find_run, new_run
from VAE_run_scripts import vaemain

DATASET = "shapes"  # shapes, digits (embedded); cifar10, mnist, ... (online)
IMAGE_SIZE = 32  # pixels
N_TRAIN = None  # cap on training images (None: the whole split)
MINUTES = 10.0  # wall-clock training budget per family
FAMILIES = ("gan", "vae", "diffusion", "ldm")  # which families, in this order
AUTOENCODER_SHARE = 0.35  # LDM: share of its budget spent on the autoencoder (stage 1)
N_SAMPLES = 2000  # samples scored per family (the LDM draws N_SAMPLES // classes per class)
EXTRACTOR = "evaluator"  # features: evaluator (the project's classifier) or inception (online)
OVERRIDES = {}  # extra constants per script, e.g. {"DiffusionMain": ["--BASE=16"]}
SEED = 0  # seeds every run
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where fast), bf16, fp32
SAVE_ROOT = "."  # saved_plots/ and saved_models/ are created here
RESULTS = "docs/results"  # the table is published here for docs/ (None: not published)
DATA_ROOT = "data"  # torchvision's downloads, or the image folder of DATASET="folder"

_EPOCH_CAP = 100_000  # EPOCHS given to the training scripts: the budget stops them first
_LABELS = {"gan": "DCGAN", "vae": f"beta-VAE ({vaemain.OBJECTIVE}, beta {vaemain.BETA:g})",
           "diffusion": "diffusion (pixels)", "ldm": "LDM (latent, CFG)",
           "peer": "denoising-diffusion-pytorch (peer)"}
_PANELS = [("params_m", "parameters used to sample (M)"), ("img_per_s", "training img/s"),
          ("sampling_ms", "sampling ms/img (log)"), ("fid", "FID, log (dashed: real vs real)"),
          ("kid", "KID"), ("precision", "precision"), ("recall", "recall"),
          ("class_tv", "class mix total variation (unconditional too)"),
          ("class_accuracy", "class accuracy (conditional)")]


def n_params(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def train_args(const, minutes: float, *, data: bool = True) -> list[str]:
    args = [f"--SEED={const.SEED}", f"--DEVICE={const.DEVICE}", f"--PRECISION={const.PRECISION}",
            f"--SAVE_ROOT={const.SAVE_ROOT}", f"--DATA_ROOT={const.DATA_ROOT}",
            f"--EPOCHS={_EPOCH_CAP}", f"--MINUTES={minutes}"]
    if data:
        args += [f"--DATASET={const.DATASET}", f"--IMAGE_SIZE={const.IMAGE_SIZE}",
                 f"--N_TRAIN={const.N_TRAIN}"]
    return args


def eval_args(const, run: Run) -> list[str]:
    return [f"--RUN={run.name}", f"--SEED={const.SEED}", f"--DEVICE={const.DEVICE}",
            f"--SAVE_ROOT={const.SAVE_ROOT}", f"--DATA_ROOT={const.DATA_ROOT}",
            f"--EXTRACTOR={const.EXTRACTOR}", "--METRICS=True"]


def call(const, script: str, args: list[str]) -> dict:
    """`python -m <script> args` (plus OVERRIDES for it) in a child process, so each job's memory
    is returned when it ends and its peak is its own; returns wall seconds and peak RSS (MB)."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", script, *args,
                              *const.OVERRIDES.get(script.split(".")[-1], [])])
    try:
        _, status, usage = os.wait4(child.pid, 0)
    except KeyboardInterrupt:  # the child got the Ctrl-C too: let it save its checkpoint
        child.wait()
        raise Interrupted(f"interrupted during {script}; finished families are in "
                          f"results.json") from None
    child.returncode = code = os.waitstatus_to_exitcode(status)
    if code == INTERRUPTED_STATUS:
        raise Interrupted(f"{script} was interrupted; finished families are in results.json")
    if code != 0:
        raise UserError(f"{script} failed with exit status {code} (its message is above)")
    return {"wall_seconds": time.perf_counter() - started,
            "peak_rss_mb": usage.ru_maxrss / 1024}  # ru_maxrss is in kilobytes on Linux


def train(const, script: str, family: str, args: list[str]) -> tuple[Run, dict, Loaded]:
    """Run a training script; returns its new run, what it did, and the run loaded (on the CPU)."""
    before = set(existing_runs(const.SAVE_ROOT, family))
    cost = call(const, script, args)
    run = find_run(const.SAVE_ROOT, family, "latest")
    if run.name in before:
        raise UserError(f"{script} finished but left no new {family} run in {const.SAVE_ROOT}")
    loaded = load_run(const.SAVE_ROOT, family, run.name, torch.device("cpu"))
    state = loaded.state
    seconds = sum(r["seconds"] for r in MetricsLog(run.metrics_path).read()[:state["epoch"]])
    return run, {"run": run.name, "epochs": state["epoch"], "steps": state["step"],
                 "images": state["images"], "loop_seconds": seconds,
                 "img_per_s": state["images"] / max(seconds, 1e-9), **cost}, loaded


def evaluate(const, script: str, run: Run, info: dict, *args: str) -> None:
    """Run an eval script on the run; its peak memory goes into info."""
    info["eval_peak_rss_mb"] = call(const, script, [*eval_args(const, run), *args])["peak_rss_mb"]


def train_gan(const) -> tuple[list[dict], Run, tuple[int, int]]:
    run, info, loaded = train(const, "GAN_run_scripts.ganmain", "gan",
                              train_args(const, const.MINUTES))
    evaluate(const, "GAN_run_scripts.evalGan", run, info, f"--N_SAMPLES={const.N_SAMPLES}")
    g, d = loaded.nets["generator"], loaded.nets["discriminator"]
    return [info], run, (n_params(g, d), n_params(g))


def train_vae(const) -> tuple[list[dict], Run, tuple[int, int]]:
    run, info, loaded = train(const, "VAE_run_scripts.vaemain", "vae",
                              train_args(const, const.MINUTES))
    evaluate(const, "VAE_run_scripts.vaeEval", run, info, f"--N_SAMPLES={const.N_SAMPLES}")
    model = loaded.nets["vae"]
    return [info], run, (n_params(model), n_params(model.decoder))


def train_diffusion(const) -> tuple[list[dict], Run, tuple[int, int]]:
    run, info, loaded = train(const, "Diffusion_run_scripts.DiffusionMain", "diffusion",
                              train_args(const, const.MINUTES))
    evaluate(const, "Diffusion_run_scripts.DiffusionEval", run, info,
             f"--N_SAMPLES={const.N_SAMPLES}",
             f"--PRECISION={const.PRECISION}", "--COMPARE=('ddim-10',)", "--COMPARE_IMAGES=1")
    unet = n_params(loaded.nets["net"])
    return [info], run, (unet, unet)


def train_ldm(const) -> tuple[list[dict], Run, tuple[int, int]]:
    stage1 = const.MINUTES * const.AUTOENCODER_SHARE
    ae_run, ae_info, ae_loaded = train(const, "LDM_run_scripts.LDMAutoencoderMain",
                                       "ldm_autoencoder", train_args(const, stage1))
    run, info, loaded = train(const, "LDM_run_scripts.LDMDiffusionMain", "ldm", [
        *train_args(const, const.MINUTES - stage1, data=False), f"--AUTOENCODER_RUN={ae_run.name}"])
    classes = len(loaded.data.held_out(1, const.DATA_ROOT).class_names)
    evaluate(const, "LDM_run_scripts.LDMEval", run, info,
             f"--PER_CLASS={max(1, const.N_SAMPLES // classes)}", f"--PRECISION={const.PRECISION}")
    ae = ae_loaded.nets["autoencoder"]
    disc = PatchDiscriminator(**ae_loaded.state["model_args"]["discriminator"])
    unet = loaded.nets["net"]
    return [ae_info, info], run, (n_params(ae, disc, unet), n_params(ae.decoder, unet))


def train_peer(const) -> tuple[list[dict], Run, tuple[int, int]]:
    """lucidrains' denoising-diffusion-pytorch (benchmarks/peer_diffusion.py, a dev-only
    dependency) for the same minutes on the same data, scored the same way."""
    before = set(existing_runs(const.SAVE_ROOT, "peer"))
    cost = call(const, "benchmarks.peer_diffusion", [
        f"--SEED={const.SEED}", f"--DEVICE={const.DEVICE}", f"--SAVE_ROOT={const.SAVE_ROOT}",
        f"--DATA_ROOT={const.DATA_ROOT}", f"--MINUTES={const.MINUTES}",
        f"--DATASET={const.DATASET}", f"--IMAGE_SIZE={const.IMAGE_SIZE}",
        f"--N_TRAIN={const.N_TRAIN}", f"--N_SAMPLES={const.N_SAMPLES}",
        f"--EXTRACTOR={const.EXTRACTOR}"])
    run = find_run(const.SAVE_ROOT, "peer", "latest", marker="peer.json")
    if run.name in before:
        raise UserError(f"the peer finished but left no new run in {const.SAVE_ROOT}")
    info = json.loads((run.plots / "peer.json").read_text())
    stage = {"run": run.name, "epochs": None, "steps": info["steps"], "images": info["images"],
             "loop_seconds": info["loop_seconds"], "img_per_s": info["img_per_s"], **cost}
    return [stage], run, (info["params"], info["params"])


_SCRIPTS = ("ganmain", "evalGan", "vaemain", "vaeEval", "DiffusionMain", "DiffusionEval",
           "LDMAutoencoderMain", "LDMDiffusionMain", "LDMEval", "peer_diffusion")
_TRAINERS = {"gan": train_gan, "vae": train_vae, "diffusion": train_diffusion, "ldm": train_ldm,
             "peer": train_peer}


def summarise(family: str, stages: list[dict], run: Run, params: tuple[int, int]) -> dict:
    """One row: the stages' training numbers with the eval script's metrics.json."""
    metrics = json.loads((run.plots / "eval" / "metrics.json").read_text())
    images = sum(s["images"] for s in stages)
    return {"family": family, "label": _LABELS[family], "runs": [s["run"] for s in stages],
            "stages": stages, "params_trained": params[0], "params_sampling": params[1],
            "peak_rss_mb": max(max(s["peak_rss_mb"], s.get("eval_peak_rss_mb", 0))
                               for s in stages),
            "train_minutes": sum(s["wall_seconds"] for s in stages) / 60, "images": images,
            "stage_img_per_s": [s["img_per_s"] for s in stages],
            "img_per_s": images / max(sum(s["loop_seconds"] for s in stages), 1e-9),
            "stage_images": [s["images"] for s in stages],
            "sampling_ms": metrics["sampling"]["ms_per_image"],
            "sampler": metrics["sampling"]["sampler"], "fid": metrics["fid"],
            "fid_floor": metrics["real_vs_real"]["fid"], "kid": metrics["kid"],
            "kid_std": metrics["kid_std"], "precision": metrics["precision"],
            "recall": metrics["recall"], "class_accuracy": metrics.get("class_accuracy"),
            **class_mix(metrics),
            "samples": metrics["samples"], "extractor": metrics["extractor"]}


def class_mix(metrics: dict) -> dict:
    """The total variation between the classes the evaluator sees in the samples and in real
    images, with its real-vs-real floor (None for data without classes)."""
    if "classes" not in metrics:
        return {"class_tv": None, "class_tv_floor": None}
    return {"class_tv": metrics["classes"]["total_variation"],
            "class_tv_floor": metrics["real_vs_real"]["class_total_variation"]}


def class_mix_cell(row: dict) -> str:
    if row.get("class_tv") is None:
        return "n/a"
    return f"{row['class_tv']:.2f} ({row['class_tv_floor']:.2f})"


def markdown(rows: list[dict], const) -> str:
    """The results table, with what was measured and how."""
    device = resolve_device(const.DEVICE)
    precision = "bf16 autocast" if resolve_precision(const.PRECISION, device) else "fp32"
    columns = ["family", "params (trained / sampling)", "training min", "images seen",
               "train img/s", "peak RSS MB", "sampler", "sampling ms/img", "FID (real vs real)",
               "KID", "precision", "recall", "class mix TV (floor)", "class acc"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | failed: {r['error']} |" + " |" * (len(columns) - 2))
            continue
        acc = "n/a" if r["class_accuracy"] is None else f"{r['class_accuracy']:.3f}"
        per_stage = " / ".join(f"{v:.0f}" for v in r["stage_img_per_s"])
        lines.append(
            f"| {r['label']} | {r['params_trained'] / 1e6:.2f}M / {r['params_sampling'] / 1e6:.2f}M"
            f" | {r['train_minutes']:.1f} | {' / '.join(f'{v:,}' for v in r['stage_images'])} | "
            f"{per_stage} | {r['peak_rss_mb']:.0f} | {r['sampler']} | {r['sampling_ms']:.2f} | "
            f"{r['fid']:.1f} ({r['fid_floor']:.1f}) | {r['kid']:.3g} +- {r['kid_std']:.2g} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {class_mix_cell(r)} | {acc} |")
    done = [r for r in rows if "error" not in r]
    how = (f"{done[0]['samples']} samples per family, features: {done[0]['extractor']}"
           if done else "no family finished")
    return "\n".join([
        f"# {const.DATASET} {const.IMAGE_SIZE}x{const.IMAGE_SIZE}: {const.MINUTES:g} minutes of "
        f"training per "
        f"family", "",
        f"{torch.get_num_threads()} CPU threads, device {device}, {precision}; "
        f"{how}. Training minutes are wall time of the training scripts (data, per-epoch "
        f"evaluation and figures included); images and img/s count only the epochs (LDM: "
        f"autoencoder / latent UNet); peak RSS is the largest of the family's training and "
        f"eval processes. FID is biased at small sample counts: compare it with the real-vs-real "
        f"floor of the same size.", "", *lines, ""])


def main(argv=None) -> list[dict]:
    const = resolve_constants(globals(), argv)
    check_positive(const, "MINUTES", "N_SAMPLES")
    unknown = [f for f in const.FAMILIES if f not in _TRAINERS]
    if unknown or not const.FAMILIES:
        raise UserError(f"FAMILIES={const.FAMILIES!r}: choose from {', '.join(_TRAINERS)}")
    if not 0 < const.AUTOENCODER_SHARE < 1:
        raise UserError(f"AUTOENCODER_SHARE must be in (0, 1), got {const.AUTOENCODER_SHARE}")
    if not isinstance(const.OVERRIDES, dict) or not set(const.OVERRIDES) <= set(_SCRIPTS):
        raise UserError(f"OVERRIDES must map script names ({', '.join(_SCRIPTS)}) to "
                        f"lists of constants, got {const.OVERRIDES!r}")
    out = new_run(const.SAVE_ROOT, "compare", const.DATASET, f"{const.MINUTES:g}min").plots
    rows = []
    for family in const.FAMILIES:
        print(f"=== {_LABELS[family]}: {const.MINUTES:g} minutes ===")
        try:
            rows.append(summarise(family, *_TRAINERS[family](const)))
        except Interrupted:
            raise
        except UserError as err:  # e.g. a diverged GAN: the other families still run
            print(f"{family} failed: {err}")
            rows.append({"family": family, "label": _LABELS[family], "error": str(err)})
        files.write_json(out / "results.json", {"constants": vars(const), "rows": rows})
    files.write_text(out / "results.md", markdown(rows, const))
    done = {r["label"]: {**r, "params_m": r["params_sampling"] / 1e6}
            for r in rows if "error" not in r}
    save_bar_charts(done, _PANELS, out / "bars.png", log_y=["sampling_ms", "fid"],
                    fractions=["precision", "recall", "class_tv", "class_accuracy"],
                    marks={"fid": {k: r["fid_floor"] for k, r in done.items()}},
                    title=f"{const.DATASET}: {const.MINUTES:g} minutes of training per family")
    write_results_page(out, markdown(rows, const))
    data = folder_label(const.DATA_ROOT) if const.DATASET == "folder" else const.DATASET
    publish(const.RESULTS, f"compare_{data}_{const.MINUTES:g}min", markdown(rows, const),
            {"constants": vars(const), "rows": rows},
            module=__name__, argv=argv, precision=precision_name(const.PRECISION))
    print(markdown(rows, const))
    print(f"done: {out / 'results.md'}, bars.png")
    return rows


if __name__ == "__main__":
    run_cli(main)
