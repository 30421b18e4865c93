"""Smoke runs of every VAE script into a temporary folder, plus exact resume."""
import json

import pytest
import torch

from utils.errors import UserError
from utils.runs import MetricsLog, find_run, load_checkpoint

TINY = ["--IMAGE_SIZE=16", "--N_TRAIN=256", "--LATENT_DIM=4", "--BATCH_SIZE=64",
        "--PRECISION=fp32"]


def test_vaemain_adaptive_resumes_exactly(tmp_path):
    from VAE_run_scripts import vaemain
    straight, split = tmp_path / "a", tmp_path / "b"
    args = [*TINY, "--WIDTH=8", "--BETA_WARMUP=1", "--CHECKPOINT_EVERY=1",
            "--OBJECTIVE=beta", "--BETA_MODE=adaptive"]
    vaemain.main([*args, "--SAVE_ROOT", str(straight), "--EPOCHS=3"])
    vaemain.main([*args, "--SAVE_ROOT", str(split), "--EPOCHS=2"])
    vaemain.main(["--SAVE_ROOT", str(split), "--EPOCHS=3", "--RESUME=latest",
                  "--PRECISION=fp32"])
    a = load_checkpoint(find_run(straight, "vae").checkpoint)
    b = load_checkpoint(find_run(split, "vae").checkpoint)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["beta_scheduler"] == b["beta_scheduler"]
    records = MetricsLog(find_run(split, "vae").metrics_path).read()
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[0]["beta"] == records[1]["beta"] == 1.0  # the first call only records
    assert records[2]["beta"] == a["beta_scheduler"]["beta"] != 1.0
    run = find_run(straight, "vae")
    for name in ("losses.png", "progression.png", "reconstructions.png", "prior_samples.png",
                 "traversal_dims.png", "report.json"):
        assert (run.plots / name).is_file(), name
    report = json.loads((run.plots / "report.json").read_text())
    assert [f["factor"] for f in report["factors"]][:2] == ["shape", "hue"]
    assert 0 <= report["mig"] <= 1 and len(report["kl_dims"]) == 4

    from VAE_run_scripts import vaeEval
    from utils.samples import load_samples_npz
    report = vaeEval.main(["--SAVE_ROOT", str(straight), "--N_SAMPLES=7", "--DIM=2",
                           "--METRICS=False",
                           "--N_VALUES=5"])
    assert (run.plots / "eval" / "traversal_z2.png").is_file()
    last = MetricsLog(run.metrics_path).read()[-1]
    assert report["held_out"] == {"mse": last["test_mse"], "kl": last["test_kl"]}
    assert json.loads((run.plots / "eval" / "report.json").read_text())["held_out"] == \
        report["held_out"]
    images, labels = load_samples_npz(run.plots / "eval" / "samples.npz")
    assert images.shape == (7, 3, 16, 16) and labels is None
    with pytest.raises(UserError, match="DIM=9"):
        vaeEval.main(["--SAVE_ROOT", str(straight), "--DIM=9"])


def test_vae_experiment_and_comparison(tmp_path):
    from VAE_run_scripts import vaeExperiment
    vaeExperiment.main([*TINY, "--EPOCHS=2", "--SAVE_ROOT", str(tmp_path), "--DATASET=digits"])
    folder = find_run(tmp_path, "vae_experiment", marker="experiment.json").plots
    rows = json.loads((folder / "comparison.json").read_text())
    assert len(rows) == 3 and all(r["epochs"] == 2 for r in rows.values())
    betas = [r["beta_trajectory"] for r in rows.values()]
    assert betas[0] == [1.0, 1.0] and betas[1] == [4.0, 4.0]
    for name in ("per_run.png", "overlay.png", "comparison.md", "config.json"):
        assert (folder / name).is_file(), name
    assert set(next(iter(rows.values()))["best_latent"]) == {"class"}  # digits: MIG vs label
    runs = json.loads((folder / "experiment.json").read_text())["runs"]
    for name in runs:  # the beta-VAE objective, whatever vaemain's default is
        config = json.loads((tmp_path / "saved_plots" / "vae" / name / "config.json").read_text())
        assert config["OBJECTIVE"] == "beta", name


def test_vae_scripts_reject_bad_constants(tmp_path):
    from VAE_run_scripts import vaeEval, vaeEvalExperiments, vaemain
    with pytest.raises(UserError, match="BETA_MODE"):
        vaemain.main([*TINY, "--SAVE_ROOT", str(tmp_path), "--BETA_MODE=cyclic"])
    with pytest.raises(UserError, match="beta_min <= beta_init"):
        vaemain.main([*TINY, "--SAVE_ROOT", str(tmp_path), "--BETA_MODE=adaptive",
                      "--BETA_INIT=20"])
    with pytest.raises(UserError, match="no vae run"):
        vaeEval.main(["--SAVE_ROOT", str(tmp_path)])
    with pytest.raises(UserError, match="no vae_experiment run"):
        vaeEvalExperiments.main(["--SAVE_ROOT", str(tmp_path)])


def test_traversal_labels_name_back_the_factors_of_a_known_encoder(monkeypatch, tmp_path):
    """An "encoder" whose latents are the factors themselves, shuffled and scaled: the report,
    the traversal labels and the per-factor panel must name each latent's factor back."""
    import numpy as np
    from train import vae_figures
    from utils.data import load_dataset
    test = load_dataset("shapes", "test", image_size=16)
    order = ["pos_y", "hue", "shape", "pos_x", "scale", "rotation"]  # latent i = order[i]
    table = np.stack([np.asarray(test.factors[k], float) * (2 + i) for i, k in
                      enumerate(order)], 1)
    monkeypatch.setattr(vae_figures, "posterior_means",
                        lambda model, x, batch_size=500: torch.from_numpy(table[:len(x)]).float())
    report = vae_figures.factor_report(None, test)
    names = vae_figures.latent_names(report)
    assert {i: names[i].split(" ")[0] for i in names} == dict(enumerate(order))
    assert report["mig"] > 0.6 and report["sap"] > 0.3 and report["dci"] > 0.8
    assert {f["factor"]: f["best_latent"] for f in report["dci_factors"]}["hue"] == 1
    assert {f["factor"]: f["best_latent"] for f in report["sap_factors"]}["pos_x"] == 3
    labels = []
    monkeypatch.setattr(vae_figures, "decode", lambda model, z: torch.zeros(len(z), 3, 16, 16))
    monkeypatch.setattr(vae_figures, "save_labelled_grid",
                        lambda rows, path, row_labels, *a, **k: labels.extend(row_labels))
    vae_figures.save_factor_traversals(None, torch.zeros(2, 3, 16, 16), report,
                                       tmp_path / "f.png", n_images=2)
    assert [label.split(" (")[0] for label in labels if label] == [
        f"{k}: z{order.index(k)}" for k in ("shape", "hue", "scale", "rotation", "pos_x",
                                            "pos_y")]
    assert vae_figures.save_mi_matrix(report, tmp_path / "mi.png").is_file()
    assert report["polar"] == []  # hue on one axis: no pair's angle carries it better


def test_a_known_polar_code_gets_angle_and_radius_rows(monkeypatch, tmp_path):
    """An "encoder" that holds hue as the angle and scale as the radius of (z1, z4): the report
    finds the pair, and the traversal turns it through hue 0 -> 1 at each image's own radius,
    then moves it out from the centre along each image's own angle."""
    import numpy as np
    from train import vae_figures
    from utils.data import load_dataset
    test = load_dataset("shapes", "test", image_size=16)
    f = {k: np.asarray(test.factors[k], float) for k in test.factors}
    radius, angle = 5 * f["scale"], 2 * np.pi * f["hue"] + 0.5
    table = np.stack([f["pos_y"], radius * np.cos(angle) + 1, f["shape"], f["pos_x"],
                      radius * np.sin(angle) - 2, f["rotation"]], 1)
    monkeypatch.setattr(vae_figures, "posterior_means",
                        lambda model, x, batch_size=500: torch.from_numpy(table[:len(x)]).float())
    report = vae_figures.factor_report(None, test)
    [polar] = report["polar"]
    assert (polar["factor"], polar["pair"]) == ("hue", [1, 4])
    assert [f["factor"] for f in polar["radius_factors"]] == ["scale"]
    assert polar["resultant"] > 0.99 and polar["sign"] == 1
    assert abs(polar["offset"] - 0.5) < 0.02 and polar["normalized_mi"] > polar["single_mi"]
    assert np.allclose(polar["centre"], [1, -2], atol=0.01)
    decoded, labels = [], []
    monkeypatch.setattr(vae_figures, "decode",
                        lambda model, z: decoded.append(z) or torch.zeros(len(z), 3, 16, 16))
    monkeypatch.setattr(vae_figures, "save_labelled_grid",
                        lambda rows, path, row_labels, *a, **k: labels.extend(row_labels))
    vae_figures.save_polar_traversals(None, torch.zeros(2, 3, 16, 16), report, tmp_path / "p.png",
                                      n_values=5, n_images=2)
    turns, rays = (z.double().unflatten(0, (2, 5)) for z in decoded)
    centre = torch.tensor(polar["centre"], dtype=torch.float64)
    own = torch.from_numpy(table[:2, [1, 4]]) - centre
    for z in (turns, rays):  # the other latents keep each image's own values
        assert torch.allclose(z[:, :, [0, 2, 3, 5]], torch.from_numpy(table[:2, [0, 2, 3, 5]])
                              .unsqueeze(1).expand(2, 5, 4), atol=1e-5)
    d = turns[:, :, [1, 4]] - centre
    hue = torch.remainder(torch.atan2(d[..., 1], d[..., 0]) - polar["offset"], 2 * np.pi)
    assert torch.allclose(d.norm(dim=-1), own.norm(dim=-1, keepdim=True).expand(2, 5),
                          atol=1e-4)
    columns = torch.linspace(0, 1, 5, dtype=torch.float64)  # hue 0, 0.25, ..., 1 (= 0 again)
    assert torch.allclose(torch.cos(hue), torch.cos(2 * np.pi * columns), atol=1e-4)
    assert torch.allclose(torch.sin(hue), torch.sin(2 * np.pi * columns), atol=1e-4)
    d = rays[:, :, [1, 4]] - centre
    lo, hi = np.quantile(np.hypot(*(table[:, [1, 4]] - polar["centre"]).T), [0.02, 0.98])
    assert torch.allclose(d.norm(dim=-1), torch.linspace(lo, hi, 5, dtype=torch.float64)
                          .expand(2, 5), atol=1e-4)  # the radii the data uses
    assert torch.allclose(torch.atan2(d[..., 1], d[..., 0]),
                          torch.atan2(own[:, 1], own[:, 0])[:, None].expand(2, 5), atol=1e-4)
    assert [label.split("\n")[0] for label in labels if label] == [
        "hue: angle of (z1, z4)", f"scale: radius of (z1, z4), {lo:.1f} to {hi:.1f}"]


def test_vaemain_tcvae_and_capacity_objectives_train_and_log_their_terms(tmp_path):
    from VAE_run_scripts import vaemain
    run, report = vaemain.main([*TINY, "--WIDTH=8", "--EPOCHS=1", "--SAVE_ROOT", str(tmp_path),
                                "--OBJECTIVE=tcvae", "--BETA_MODE=fixed", "--BETA=6"])
    record = MetricsLog(run.metrics_path).read()[-1]
    assert "train_tc" in record and run.name.endswith("tcvae-beta6")
    for name in ("factor_traversals.png", "mi_matrix.png"):
        assert (run.plots / name).is_file(), name
    assert "sap" in report and 0 <= report["dci"] <= 1
    run, _ = vaemain.main([*TINY, "--WIDTH=8", "--EPOCHS=2", "--SAVE_ROOT", str(tmp_path),
                           "--OBJECTIVE=capacity", "--CAPACITY_MAX=4", "--CAPACITY_EPOCHS=2"])
    records = MetricsLog(run.metrics_path).read()
    assert [r["capacity"] for r in records] == [2.0, 4.0]
    assert run.name.endswith("capacity-C4")  # BETA plays no part in the capacity objective
    with pytest.raises(UserError, match="OBJECTIVE"):
        vaemain.main([*TINY, "--SAVE_ROOT", str(tmp_path), "--OBJECTIVE=factor"])
    assert vaemain.grad_clip("auto", "capacity", 1000.0) == 1000.0  # only capacity is clipped
    assert vaemain.grad_clip("auto", "tcvae", 1000.0) == 0.0
    assert vaemain.grad_clip(None, "capacity", 1000.0) == 0.0
    assert vaemain.grad_clip(50, "beta", 1000.0) == 50.0
    with pytest.raises(UserError, match="GRAD_CLIP"):
        vaemain.main([*TINY, "--SAVE_ROOT", str(tmp_path), "--GRAD_CLIP=-1"])


def test_disentanglement_study_smoke(tmp_path):
    """Two settings, two seeds, one epoch each: every run scored, the medians and ranges
    tabulated, the spread chart and the results page written."""
    from benchmarks import vae_disentanglement
    settings = {"beta4": ["--OBJECTIVE=beta", "--BETA_MODE=fixed", "--BETA=4"],
                "tcvae": ["--OBJECTIVE=tcvae", "--BETA_MODE=fixed", "--BETA=6"]}
    rows = vae_disentanglement.main([
        "--SAVE_ROOT", str(tmp_path), "--IMAGE_SIZE=16", "--N_TRAIN=256", "--EPOCHS=1",
        "--RESULTS=None",
        "--SEEDS=(0, 1)", f"--SETTINGS={settings!r}", "--PRECISION=fp32",
        "--OVERRIDES=['--WIDTH=8', '--LATENT_DIM=4', '--BATCH_SIZE=64']"])
    assert [(r["setting"], r["seed"]) for r in rows] == [("beta4", 0), ("beta4", 1),
                                                         ("tcvae", 0), ("tcvae", 1)]
    assert all(0 <= r["mig"] <= 1 and r["mse"] > 0 for r in rows)
    assert rows[0]["run"] != rows[1]["run"] and rows[0]["mig"] != rows[1]["mig"]
    out = find_run(tmp_path, "disentanglement", marker="results.md").plots
    table = (out / "results.md").read_text()
    assert "| beta4 |" in table and "| tcvae |" in table
    for name in ("spread.png", "results.html", "results.json"):
        assert (out / name).is_file(), name
    summary = vae_disentanglement.summarise(rows)
    mig = [r["mig"] for r in rows[:2]]
    assert summary["beta4"]["mig"]["min"] == min(mig) and summary["beta4"]["seeds"] == 2
