"""The recipe study: which diffusion recipe learns the most in a fixed budget of CPU minutes.

    python -m benchmarks.diffusion_recipes                  # about an hour on 2 idle cores
    python -m benchmarks.diffusion_recipes --DATASETS="('digits',)" --MINUTES=5

Every recipe is a real DiffusionMain (pixels), LDMDiffusionMain (latents) or ganmain (the
DCGAN) run with the script's defaults plus the recipe's constants, trained for MINUTES of wall
time (GAN_MINUTES for a GAN; the LDM recipes share one LDMAutoencoderMain run per data set,
trained for AE_MINUTES), then sampled by its eval script with the same sampler and scored
by the project's evaluator against held-out images: FID with its real-vs-real floor,
precision, recall, the class-mix distance (the classes the evaluator sees in the samples
against the real mix), class accuracy for the class-conditional latent models, and sampling
ms/img. Each script runs in its own process (as benchmarks.compare_families does).

Writes saved_plots/recipes/<run>/: results.md (a table per family and data set, best FID
first), results.html (the tables and the chart, linked from saved_plots/index.html),
results.json (rewritten after every recipe, so a crash keeps what finished) and bars.png.
The trained runs stay in their family folders, named in the table.
"""
import json
from types import SimpleNamespace

from benchmarks.compare_families import (call, class_mix, class_mix_cell, eval_args, train,
                                         train_args)
from utils import files
from utils.config import check_positive, resolve_constants
from utils.cli import run_cli
from utils.errors import Interrupted, UserError
from utils.plots import save_bar_charts
from benchmarks.report import precision_name, publish
from utils.run_index import write_results_page
from utils.runs import new_run

DATASETS = ("shapes", "digits")  # embedded data sets to run every recipe on
IMAGE_SIZE = 32  # pixels
N_TRAIN = None  # cap on training images (None: the whole split)
MINUTES = 4.0  # training budget of one recipe
AE_MINUTES = 3.0  # budget of the latent recipes' shared autoencoder, per data set
_V_MINSNR = ["--PREDICTION=v", "--MIN_SNR_GAMMA=5", "--DROPOUT=0.0"]  # recipes' constants
_FLOW = ["--PREDICTION=flow", "--DROPOUT=0.0"]
_EPS = ["--PREDICTION=epsilon", "--DROPOUT=0.1"]  # DDPM's target, the study's old default
PIXEL = {"eps": _EPS, "v-minsnr5-nodrop": _V_MINSNR, "flow-nodrop": _FLOW}  # DiffusionMain recipes
LATENT = {"v": ["--PREDICTION=v"], "flow": ["--PREDICTION=flow"]}  # LDMDiffusionMain recipes
GAN = {}  # ganmain recipes, e.g. {"bce": [], "hinge-sn": ["--LOSS=hinge", "--SPECTRAL_NORM=True"]}
GAN_MINUTES = 3.0  # training budget of one GAN recipe
N_SAMPLES = 200  # samples scored per recipe
EVAL_SAMPLER = "ddim"  # the sampler every recipe is scored with
EVAL_STEPS = 25  # its steps
EXTRACTOR = "evaluator"  # features: evaluator (the project's classifier) or inception (online)
OVERRIDES = {}  # extra constants per script for every recipe, e.g. {"DiffusionMain": [...]}
SEED = 0  # seeds every run
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where fast), bf16, fp32
SAVE_ROOT = "."  # saved_plots/ and saved_models/ are created here
RESULTS = "docs/results"  # the table is published here for docs/ (None: not published)
DATA_ROOT = "data"  # torchvision's downloads, or the image folder of DATASET="folder"

_FIGURES = {"DiffusionEval": ["--GRID_SIZE=4", "--STRIP_IMAGES=1", "--STRIP_COLUMNS=4",
                              "--NOISED_T=(500,)", "--COMPARE=('ddim-10',)",
                              "--COMPARE_IMAGES=1"],
            "LDMEval": ["--SCALES=(0, 3)", "--STRIP_IMAGES=1", "--STRIP_COLUMNS=4",
                        "--NOISED_T=(500,)"],
            "evalGan": ["--GRID_SIZE=4", "--N_PAIRS=1", "--STEPS=4"]}  # figures kept small
_PANELS = [("fid_ratio", "FID / real-vs-real floor (log)"), ("precision", "precision"),
           ("recall", "recall"), ("class_tv", "class mix total variation"),
           ("class_accuracy", "class accuracy (latent)"),
           ("sampling_ms", "sampling ms/img")]


_SCRIPTS = {"pixel": ("Diffusion_run_scripts", "DiffusionMain", "DiffusionEval", "diffusion"),
            "latent": ("LDM_run_scripts", "LDMDiffusionMain", "LDMEval", "ldm"),
            "gan": ("GAN_run_scripts", "ganmain", "evalGan", "gan")}  # family -> scripts, folder


def _eval_args(ns, family: str, loaded) -> list[str]:
    """How many samples each family's eval script draws, and with which sampler."""
    if family == "gan":
        return [f"--N_SAMPLES={ns.N_SAMPLES}"]
    steps = [f"--STEPS={ns.EVAL_STEPS}", f"--PRECISION={ns.PRECISION}"]
    if family == "pixel":
        return [f"--N_SAMPLES={ns.N_SAMPLES}", f"--SAMPLER={ns.EVAL_SAMPLER}", *steps]
    per_class = max(1, ns.N_SAMPLES // len(loaded.data.held_out(1, ns.DATA_ROOT).class_names))
    return [f"--PER_CLASS={per_class}", *steps]


def score(ns, family: str, recipe: str, args: list[str], stage1=None) -> dict:
    """Train one recipe, sample and score it; its row of the table."""
    package, script, evaluator, folder = _SCRIPTS[family]
    extra = [] if stage1 is None else [f"--AUTOENCODER_RUN={stage1.name}"]
    minutes = ns.GAN_MINUTES if family == "gan" else ns.MINUTES
    run, info, loaded = train(ns, f"{package}.{script}", folder,
                              [*train_args(ns, minutes, data=stage1 is None), *extra, *args])
    call(ns, f"{package}.{evaluator}", [*eval_args(ns, run), *_eval_args(ns, family, loaded),
                                        *_FIGURES[evaluator]])
    metrics = json.loads((run.plots / "eval" / "metrics.json").read_text())
    floor = metrics["real_vs_real"]["fid"]
    sampling = metrics.get("sampling", {}).get("ms_per_image", float("nan"))
    return {"family": family, "dataset": ns.DATASET, "recipe": recipe, "args": args,
            "run": run.name, "minutes": minutes, "epochs": info["epochs"],
            "images": info["images"], "img_per_s": info["img_per_s"], "fid": metrics["fid"],
            "fid_floor": floor, "fid_ratio": metrics["fid"] / max(floor, 1e-9),
            "precision": metrics["precision"], "recall": metrics["recall"],
            "class_accuracy": metrics.get("class_accuracy"), "sampling_ms": sampling,
            **class_mix(metrics), "samples": metrics["samples"]}


def markdown(rows: list[dict], const) -> str:
    """One table per family and data set, best FID first."""
    lines = [f"# Diffusion recipes: {const.MINUTES:g} minutes of training each "
             f"({const.AE_MINUTES:g} for each latent family's autoencoder, "
             f"{const.GAN_MINUTES:g} for each GAN recipe)", "",
             f"Scored on {const.N_SAMPLES} samples ({const.EVAL_SAMPLER}-{const.EVAL_STEPS}) "
             f"with the {const.EXTRACTOR} features; FID is biased at this sample count, so "
             f"compare it with the real-vs-real floor of the same size.", ""]
    for family, dataset in dict.fromkeys((r["family"], r["dataset"]) for r in rows):
        group = sorted((r for r in rows if (r["family"], r["dataset"]) == (family, dataset)),
                       key=lambda r: r.get("fid", float("inf")))
        title = "DCGAN" if family == "gan" else f"{family} diffusion"
        lines += [f"## {title} on {dataset}", "",
                  "| recipe | constants | FID (floor) | precision | recall | class mix TV (floor) "
                  "| class acc | img/s | images seen | sampling ms/img | run |", "|---" * 11 + "|"]
        for r in group:
            if "error" in r:
                lines.append(f"| {r['recipe']} | failed: {r['error']} |" + " |" * 9)
                continue
            acc = "n/a" if r["class_accuracy"] is None else f"{r['class_accuracy']:.3f}"
            lines.append(f"| {r['recipe']} | {' '.join(r['args']) or '(defaults)'} | "
                         f"{r['fid']:.1f} ({r['fid_floor']:.1f}) | {r['precision']:.3f} | "
                         f"{r['recall']:.3f} | {class_mix_cell(r)} | {acc} | "
                         f"{r['img_per_s']:.0f} | "
                         f"{r['images']:,} | {r['sampling_ms']:.1f} | {r['run']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    const = resolve_constants(globals(), argv)
    check_positive(const, "MINUTES", "AE_MINUTES", "GAN_MINUTES", "N_SAMPLES", "EVAL_STEPS")
    if not const.DATASETS or not (const.PIXEL or const.LATENT or const.GAN):
        raise UserError("DATASETS and at least one of PIXEL, LATENT, GAN must be non-empty")
    out = new_run(const.SAVE_ROOT, "recipes", "-".join(const.DATASETS), f"{const.MINUTES:g}min")
    rows = []
    for dataset in const.DATASETS:
        ns = SimpleNamespace(**{**vars(const), "DATASET": dataset})
        stage1 = None
        if const.LATENT:
            print(f"=== {dataset}: the latent recipes' autoencoder ===")
            stage1 = train(ns, "LDM_run_scripts.LDMAutoencoderMain", "ldm_autoencoder",
                           train_args(ns, const.AE_MINUTES))[0]
        recipes = [("pixel", name, args, None) for name, args in const.PIXEL.items()]
        recipes += [("latent", name, args, stage1) for name, args in const.LATENT.items()]
        recipes += [("gan", name, args, None) for name, args in const.GAN.items()]
        for family, name, args, ae_run in recipes:
            print(f"=== {dataset}: {family} recipe {name} ({' '.join(args) or 'defaults'}) ===")
            try:
                rows.append(score(ns, family, name, list(args), ae_run))
            except Interrupted:
                raise
            except UserError as err:  # a diverged recipe: the others still run
                rows.append({"family": family, "dataset": dataset, "recipe": name,
                             "args": list(args), "error": str(err)})
            files.write_json(out.plots / "results.json", {"constants": vars(const), "rows": rows})
    files.write_text(out.plots / "results.md", markdown(rows, const))
    done = {f"{r['family']}/{r['dataset']}/{r['recipe']}": r for r in rows if "error" not in r}
    save_bar_charts(done, _PANELS, out.plots / "bars.png", log_y=["fid_ratio"],
                    fractions=["precision", "recall", "class_tv", "class_accuracy"],
                    title=f"Diffusion recipes, {const.MINUTES:g} minutes each")
    write_results_page(out.plots, markdown(rows, const))
    publish(const.RESULTS, "diffusion_recipes", markdown(rows, const),
            {"constants": vars(const), "rows": rows},
            module=__name__, argv=argv, precision=precision_name(const.PRECISION))
    print(markdown(rows, const))
    return rows


if __name__ == "__main__":
    run_cli(main)
