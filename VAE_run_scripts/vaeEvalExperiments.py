"""Compare the runs of a beta-VAE experiment (made by vaeExperiment).

    python -m VAE_run_scripts.vaeEvalExperiments                 # the latest experiment
    python -m VAE_run_scripts.vaeEvalExperiments --EXPERIMENT=002

Writes to saved_plots/vae_experiment/<experiment>/: per_run.png (a row per run: total, KL + recon,
beta, KL, reconstruction, active dims; train solid, test dashed), overlay.png (the runs on shared
axes), comparison.md and comparison.json (final test reconstruction MSE, KL, active dims, MIG).
"""
import json

from train.vae import LOG_PANELS, LOSS_PANELS
from utils import files
from utils.config import resolve_constants
from utils.cli import run_cli
from utils.errors import UserError
from utils.plots import save_run_curves
from utils.runs import MetricsLog, find_run

EXPERIMENT = "latest"  # experiment name or number, or latest
SAVE_ROOT = "."  # folder holding saved_plots/ and saved_models/


def summary(records: list[dict], report: dict) -> dict:
    last = records[-1]
    return {"epochs": last["epoch"], "beta_final": last["beta"],
            "beta_trajectory": [round(r["beta"], 4) for r in records],
            "test_recon_sum": last["test_recon"], "test_mse_per_pixel": last["test_mse"],
            "test_kl": last["test_kl"], "train_active": last["train_active"],
            "test_active": last["test_active"], "mig": report.get("mig"),
            "best_latent": {f["factor"]: f["best_latent"] for f in report.get("factors", [])}}


def markdown(rows: dict[str, dict]) -> str:
    lines = ["| run | epochs | final beta | test recon MSE / pixel | test KL (nats) | "
             "active dims (train / test) | MIG |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        mig = "n/a" if r["mig"] is None else f"{r['mig']:.3f}"
        lines.append(f"| {name} | {r['epochs']} | {r['beta_final']:.3g} | "
                     f"{r['test_mse_per_pixel']:.4f} | {r['test_kl']:.2f} | "
                     f"{r['train_active']} / {r['test_active']} | {mig} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    const = resolve_constants(globals(), argv)
    experiment = find_run(const.SAVE_ROOT, "vae_experiment", const.EXPERIMENT,
                          marker="experiment.json")
    listing = experiment.plots / "experiment.json"
    if not listing.is_file():
        raise UserError(f"{experiment.plots} has no experiment.json; run vaeExperiment first")
    runs, rows = {}, {}
    for name in json.loads(listing.read_text())["runs"]:
        run = find_run(const.SAVE_ROOT, "vae", name)
        records = MetricsLog(run.metrics_path).read()
        if not records:
            raise UserError(f"run {name} has no logged epochs")
        report_path = run.plots / "report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        runs[name], rows[name] = records, summary(records, report)
    out = experiment.plots
    save_run_curves(runs, LOSS_PANELS, out / "per_run.png", LOG_PANELS,
                    title=f"{experiment.name}: each run (train solid, test dashed)")
    test_panels = [(title, [k for k in keys if not k.startswith("train_")] or keys)
                   for title, keys in LOSS_PANELS]
    save_run_curves(runs, test_panels, out / "overlay.png", LOG_PANELS, overlay=True,
                    title=f"{experiment.name}: runs on shared axes (test; beta as used)")
    files.write_json(out / "comparison.json", rows)
    table = markdown(rows)
    files.write_text(out / "comparison.md", table)
    print(table + f"done: figures in {out}")


if __name__ == "__main__":
    run_cli(main)
