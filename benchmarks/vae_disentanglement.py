"""The disentanglement study: which beta-VAE setting gives latents that each capture one factor.

    python -m benchmarks.vae_disentanglement                # about an hour on 2 idle cores
    python -m benchmarks.vae_disentanglement --SEEDS="(0,)" --EPOCHS=3

Every setting is a real vaemain run (the script's defaults plus the setting's constants) on
`shapes`, repeated for each of SEEDS (MIG varies a lot from seed to seed), each in its own
process. Each run is scored on held-out images by what vaemain writes: MIG (Chen et al. 2018),
SAP (Kumar et al. 2018) and DCI disentanglement (Eastwood & Williams 2018) of the posterior
means against the ground-truth factors, the reconstruction error (held-out mean squared error
per pixel, images in [-1, 1]) and the active dimensions.

Writes saved_plots/disentanglement/<run>/: results.md (per setting: the median and the range
over seeds of every score, best median MIG first), results.html, results.json (every run,
rewritten after each, so a crash keeps what finished) and spread.png (every seed as a dot, the
median as a bar). The runs stay in saved_plots/vae/, named in results.json.
"""
import json
from types import SimpleNamespace

import numpy as np

from benchmarks.compare_families import call
from utils import files
from utils.config import check_positive, resolve_constants
from utils.cli import run_cli
from utils.errors import Interrupted, UserError
from utils.plots import save_spread_chart
from benchmarks.report import precision_name, publish
from utils.run_index import write_results_page
from utils.runs import MetricsLog, existing_runs, find_run, new_run

DATASET = "shapes"  # a data set with ground-truth factors: shapes or shapes-arc
IMAGE_SIZE = 32  # pixels
N_TRAIN = None  # cap on training images (None: the whole split)
EPOCHS = 30  # epochs of every run (docs/studies/vae.md: the second round; the first used 10)
SEEDS = (0, 1, 2)  # every setting runs once per seed
SETTINGS = {  # name -> vaemain constants
    "beta1": ["--OBJECTIVE=beta", "--BETA_MODE=fixed", "--BETA=1"],
    "beta4": ["--OBJECTIVE=beta", "--BETA_MODE=fixed", "--BETA=4"],
    "beta16": ["--OBJECTIVE=beta", "--BETA_MODE=fixed", "--BETA=16"],
    "adaptive": ["--OBJECTIVE=beta", "--BETA_MODE=adaptive", "--BETA_INIT=1"],
    "tcvae6": ["--OBJECTIVE=tcvae", "--BETA_MODE=fixed", "--BETA=6"],
    "tcvae20": ["--OBJECTIVE=tcvae", "--BETA_MODE=fixed", "--BETA=20"],
    "capacity25": ["--OBJECTIVE=capacity", "--CAPACITY_MAX=25"],  # clipped (GRAD_CLIP auto)
}
OVERRIDES = []  # constants added to every run (e.g. ["--LATENT_DIM=6"])
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where fast), bf16, fp32
SAVE_ROOT = "."  # saved_plots/ and saved_models/ are created here
RESULTS = "docs/results"  # the table is published here for docs/ (None: not published)
DATA_ROOT = "data"  # torchvision's downloads, or the image folder of DATASET="folder"

SCORES = [("mig", "MIG (higher: one latent per factor)"), ("sap", "SAP"),
          ("dci", "DCI disentanglement"),
          ("mse", "held-out MSE per pixel"), ("active", "active dims")]


def run_setting(const, name: str, args: list[str], seed: int) -> dict:
    """One vaemain run of a setting and seed; its scores."""
    before = set(existing_runs(const.SAVE_ROOT, "vae"))
    call(SimpleNamespace(OVERRIDES={}), "VAE_run_scripts.vaemain", [
        f"--DATASET={const.DATASET}", f"--IMAGE_SIZE={const.IMAGE_SIZE}",
        f"--N_TRAIN={const.N_TRAIN}", f"--EPOCHS={const.EPOCHS}", f"--SEED={seed}",
        f"--DEVICE={const.DEVICE}", f"--PRECISION={const.PRECISION}",
        f"--SAVE_ROOT={const.SAVE_ROOT}", f"--DATA_ROOT={const.DATA_ROOT}",
        f"--TAG={name}-seed{seed}", *args, *const.OVERRIDES])
    run = find_run(const.SAVE_ROOT, "vae", "latest")
    if run.name in before:
        raise UserError(f"vaemain left no new run for {name} (seed {seed})")
    report = json.loads((run.plots / "report.json").read_text())
    last = MetricsLog(run.metrics_path).read()[-1]
    return {"setting": name, "args": args, "seed": seed, "run": run.name,
            "mig": report["mig"], "sap": report["sap"], "dci": report["dci"],
            "mse": last["test_mse"], "active": last["test_active"], "beta": last["beta"],
            "kl": last["test_kl"],
            "best_latent": {f["factor"]: f["best_latent"] for f in report["factors"]}}


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per setting: median, min and max over seeds of every score."""
    out = {}
    for name in dict.fromkeys(r["setting"] for r in rows if "error" not in r):
        group = [r for r in rows if r["setting"] == name and "error" not in r]
        out[name] = {key: {"median": float(np.median([r[key] for r in group])),
                           "min": float(min(r[key] for r in group)),
                           "max": float(max(r[key] for r in group)),
                           "values": [r[key] for r in group]}
                     for key, _ in SCORES + [("beta", ""), ("kl", "")]}
        out[name]["args"], out[name]["seeds"] = group[0]["args"], len(group)
    return out


def markdown(summary: dict, rows: list[dict], const) -> str:
    lines = [f"# beta-VAE disentanglement on {const.DATASET}: {const.EPOCHS} epochs, "
             f"seeds {', '.join(map(str, const.SEEDS))}", "",
             "Median over seeds, with the range in brackets. MIG, SAP and DCI of the posterior "
             "means against the ground-truth factors; MSE per pixel of held-out "
             "reconstructions (images in [-1, 1]); beta and KL at the last epoch.", "",
             "| setting | constants | MIG | SAP | DCI | MSE | active dims | final beta | KL |",
             "|---" * 9 + "|"]
    for name, s in sorted(summary.items(), key=lambda kv: -kv[1]["mig"]["median"]):
        def cell(key, fmt="{:.3f}"):
            v = s[key]
            return (f"{fmt.format(v['median'])} ({fmt.format(v['min'])}-"
                    f"{fmt.format(v['max'])})")
        lines.append(f"| {name} | {' '.join(s['args'])} | {cell('mig')} | {cell('sap')} | "
                     f"{cell('dci')} | {cell('mse', '{:.4f}')} | {cell('active', '{:.0f}')} | "
                     f"{cell('beta', '{:.2f}')} | {cell('kl', '{:.1f}')} |")
    for r in rows:
        if "error" in r:
            lines.append(f"\n{r['setting']} seed {r['seed']} failed: {r['error']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    const = resolve_constants(globals(), argv)
    check_positive(const, "EPOCHS")
    if not const.SEEDS or not const.SETTINGS:
        raise UserError("SEEDS and SETTINGS must be non-empty")
    out = new_run(const.SAVE_ROOT, "disentanglement", const.DATASET, f"{const.EPOCHS}ep")
    rows = []
    for name, args in const.SETTINGS.items():
        for seed in const.SEEDS:
            print(f"=== {name} ({' '.join(args)}), seed {seed} ===")
            try:
                rows.append(run_setting(const, name, list(args), seed))
            except Interrupted:
                raise
            except UserError as err:  # a diverged run: the others still run
                rows.append({"setting": name, "args": list(args), "seed": seed,
                             "error": str(err)})
            files.write_json(out.plots / "results.json", {"constants": vars(const), "rows": rows})
    summary = summarise(rows)
    text = markdown(summary, rows, const)
    files.write_text(out.plots / "results.md", text)
    save_spread_chart(summary, SCORES, out.plots / "spread.png",
                      title=f"beta-VAE settings on {const.DATASET}, {const.EPOCHS} epochs")
    write_results_page(out.plots, text)
    publish(const.RESULTS, "vae_disentanglement", text, {"constants": vars(const), "rows": rows},
            module=__name__, argv=argv, precision=precision_name(const.PRECISION))
    print(text)
    return rows


if __name__ == "__main__":
    run_cli(main)
