"""The evaluator classifier and sample scoring, on a test-sized shapes run (4,000 images)."""
import shutil

import pytest
import torch

from train.evaluator import (THRESHOLDS, class_accuracy, evaluate_samples, evaluator_path,
                             get_evaluator)
from utils.data import load_dataset
from utils.errors import UserError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def evaluator_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluators")
    torch.manual_seed(0)
    get_evaluator("shapes", 32, 3, CPU, save_root=root, n_train=4000, epochs=3)
    return root


def test_evaluator_reaches_its_threshold_and_is_cached(evaluator_root):
    model, info = get_evaluator("shapes", 32, 3, CPU, save_root=evaluator_root)  # from cache
    assert info["test_accuracy"] >= THRESHOLDS["shapes"]
    assert info["train_images"] == 4000
    assert evaluator_path(evaluator_root, "shapes", 32, 3).is_file()


def test_real_images_score_like_the_floor_and_noise_does_not(evaluator_root):
    data = load_dataset("shapes", "train", image_size=32, n=4500)  # real, scored as generated
    real, labels = data.images[4000:], data.labels[4000:]
    good = evaluate_samples(real, labels, "shapes", CPU, save_root=evaluator_root)
    assert good["samples"] == 500 and good["class_accuracy"] > 0.97
    assert good["fid"] < 3 * good["real_vs_real"]["fid"] + 1.0
    assert good["precision"] > 0.8 and good["recall"] > 0.8
    assert good["hue"]["coverage"] == 1.0  # 500 images in 12 sectors: TV about 0.08 by chance
    assert good["hue"]["total_variation"] < 2 * good["real_vs_real"]["hue_total_variation"] + 0.05
    classes = good["classes"]  # the mix of shapes, seen by the classifier
    assert classes["names"] == ["circle", "square", "triangle", "star"]
    assert classes["total_variation"] < 2 * good["real_vs_real"]["class_total_variation"] + 0.05
    assert abs(classes["confident"] - classes["real_confident"]) < 0.1  # real as real
    noise = torch.randint(0, 256, (500, 3, 32, 32), dtype=torch.uint8)
    bad = evaluate_samples(noise, None, "shapes", CPU, save_root=evaluator_root)
    assert bad["fid"] > 10 * good["fid"] and bad["kid"] > good["kid"] + 5 * bad["kid_std"]
    assert bad["precision"] < 0.2 and "class_accuracy" not in bad
    with pytest.raises(UserError, match="EXTRACTOR"):
        evaluate_samples(noise, None, "shapes", CPU, save_root=evaluator_root, extractor="clip")


def test_class_accuracy_counts_the_labelled_class(evaluator_root):
    data = load_dataset("shapes", "test", image_size=32, n=400)
    kwargs = dict(save_root=evaluator_root)
    right = class_accuracy(data.images, data.labels, "shapes", CPU, **kwargs)
    wrong = class_accuracy(data.images, (data.labels + 1) % 4, "shapes", CPU, **kwargs)
    assert right > 0.97 and wrong < 0.03  # every image lands in exactly one class
    as_float = class_accuracy(data.first(400)[0], data.labels, "shapes", CPU, **kwargs)
    assert as_float == right  # [-1, 1] floats are the same images


def test_features_see_the_factors_a_class_ignores_and_tolerate_slight_noise(evaluator_root):
    """Samples of every shape but one narrow band of hues (a generator that lost the colours)
    score far from the floor; real images with slight noise are still classified."""
    from train.evaluator import factor_targets, predict
    model, _ = get_evaluator("shapes", 32, 3, CPU, save_root=evaluator_root)
    data = load_dataset("shapes", "train", image_size=32, n=12000)
    real, labels = data.images[4000:], data.labels[4000:]
    narrow = torch.from_numpy(data.factors["hue"][4000:] < 0.2)
    one_hue = evaluate_samples(real[narrow][:500], None, "shapes", CPU,
                               save_root=evaluator_root)
    mixed = evaluate_samples(real[~narrow][:500], None, "shapes", CPU, save_root=evaluator_root)
    assert one_hue["fid"] > 5 * mixed["fid"] and one_hue["recall"] < mixed["recall"]
    circles = real[torch.from_numpy(data.factors["shape"][4000:] == 0)][:500]
    only_circles = evaluate_samples(circles, None, "shapes", CPU, save_root=evaluator_root)
    real_share = only_circles["classes"]["real"][0]  # about a quarter of the held-out images
    assert only_circles["classes"]["fake"][0] > 0.97  # the classifier sees one class...
    assert only_circles["classes"]["total_variation"] == pytest.approx(1 - real_share, abs=0.03)
    # the hue histograms say the same in their own words: hues below 0.2 fill 2-3 of 12 sectors
    assert one_hue["hue"]["coverage"] < 0.35 and one_hue["hue"]["total_variation"] > 0.6
    assert mixed["hue"]["total_variation"] < one_hue["hue"]["total_variation"]
    x = real[:500].float() / 127.5 - 1
    noisy = x + 0.05 * torch.randn_like(x)
    assert (predict(model, noisy)[1] == labels[:500]).float().mean() > 0.95
    with torch.no_grad():  # the factor head regresses hue, scale and position
        model.eval()
        fitted = model.factor_head(model.features(x))
    target = factor_targets(data)[4000:4500]
    r2 = 1 - ((fitted - target) ** 2).mean(0) / target.var(0)
    assert (r2 > 0.8).all(), r2
    assert factor_targets(load_dataset("digits", "train", image_size=32, channels=1)) is None


def test_evalgan_writes_metrics(evaluator_root, tiny_gan, tmp_path):
    from GAN_run_scripts import evalGan, ganmain
    ganmain.main([*tiny_gan, "--IMAGE_SIZE=32"])
    root = tmp_path
    target = evaluator_path(root, "shapes", 32, 3)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(evaluator_path(evaluator_root, "shapes", 32, 3), target)
    evalGan.main(["--SAVE_ROOT", str(root), "--N_SAMPLES=50", "--GRID_SIZE=2", "--N_PAIRS=1",
                  "--STEPS=3"])
    import json
    from utils.runs import find_run
    metrics = json.loads((find_run(root, "gan").plots / "eval" / "metrics.json").read_text())
    assert metrics["samples"] == 50 and "evaluator CNN" in metrics["extractor"]
    assert {"fid", "kid", "precision", "recall", "real_vs_real", "hue"} <= set(metrics)
    assert (find_run(root, "gan").plots / "eval" / "hue_histogram.png").is_file()
    assert (find_run(root, "gan").plots / "eval" / "samples_by_class.png").is_file()


def test_class_rows_group_samples_by_the_classifier_or_by_the_label_asked_for():
    import numpy as np
    import torch
    from utils.plots import class_rows
    images = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 1, 2, 2)
    probs = np.array([[0.6, 0.4, 0.0], [0.1, 0.9, 0.0], [0.9, 0.1, 0.0], [0.2, 0.8, 0.0],
                      [0.3, 0.7, 0.0]])
    rows, labels = class_rows(images, probs, ["a", "b", "c"], per_row=2)
    # by the classifier: class a holds samples 2 (p .9) then 0 (.6); b its two surest, 1 and 3
    assert rows[:, :, 0, 0, 0].tolist() == [[2, 0], [1, 3], [0, 0]]
    assert labels == ["a: 40%", "b: 60%", "c: 0%"]
    asked = torch.tensor([0, 0, 1, 1, 2])
    rows, labels = class_rows(images, probs, ["a", "b", "c"], asked, per_row=2)
    assert rows[:, :, 0, 0, 0].tolist() == [[0, 1], [2, 3], [4, 0]]
    assert labels == ["a: 50% read as it", "b: 50% read as it", "c: 0% read as it"]


def test_evaluate_samples_cli_rejects_a_missing_or_bad_file(tmp_path):
    from benchmarks import evaluate_samples
    with pytest.raises(UserError, match="does not exist"):
        evaluate_samples.main([f"--NPZ={tmp_path / 'none.npz'}"])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="is not a samples.npz"):
        evaluate_samples.main([f"--NPZ={tmp_path / 'bad.npz'}"])


def test_compare_families_smoke(evaluator_root, tmp_path):
    """Every family trains for a tiny budget, is sampled and scored; table, JSON and bars."""
    import json
    from benchmarks import compare_families
    target = evaluator_path(tmp_path, "shapes", 32, 3)
    target.parent.mkdir(parents=True)
    shutil.copy(evaluator_path(evaluator_root, "shapes", 32, 3), target)
    tiny = {"ganmain": ["--WIDTH=8"], "vaemain": ["--WIDTH=8"],
            "DiffusionMain": ["--BASE=8", "--ATTENTION=()", "--SAMPLE_STEPS=2"],
            "DiffusionEval": ["--STEPS=2", "--GRID_SIZE=2", "--STRIP_IMAGES=1",
                              "--STRIP_COLUMNS=2", "--NOISED_T=(500,)"],
            "LDMAutoencoderMain": ["--BASE=8"], "LDMDiffusionMain": ["--BASE=8",
                                                                    "--SAMPLE_STEPS=2"],
            "LDMEval": ["--STEPS=2", "--SCALES=(0, 3)", "--NOISED_T=(500,)",
                        "--STRIP_IMAGES=1", "--STRIP_COLUMNS=2"]}
    rows = compare_families.main(["--SAVE_ROOT", str(tmp_path), "--MINUTES=0.01", "--RESULTS=None",
                                  "--N_TRAIN=256", "--N_SAMPLES=40", f"--OVERRIDES={tiny!r}",
                                  "--PRECISION=fp32"])
    assert [r["family"] for r in rows] == ["gan", "vae", "diffusion", "ldm"]
    for r in rows:
        assert r["samples"] == 40 and r["fid"] > 0 and r["sampling_ms"] > 0
        assert r["params_trained"] >= r["params_sampling"] > 0
        for stage in r["stages"]:  # the budget, not EPOCHS, ended every training stage
            assert 1 <= stage["epochs"] < compare_families._EPOCH_CAP and stage["images"] > 0
        assert (r["class_accuracy"] is None) == (r["family"] != "ldm")
        assert 0 <= r["class_tv"] <= 1 and 0 <= r["class_tv_floor"] <= 1  # shapes has classes
    assert len(rows[-1]["stages"]) == 2
    out = next((tmp_path / "saved_plots" / "compare").iterdir())
    table = (out / "results.md").read_text()
    assert all(r["label"] in table for r in rows) and (out / "bars.png").is_file()
    assert f"{rows[0]['class_tv']:.2f} ({rows[0]['class_tv_floor']:.2f})" in table
    assert json.loads((out / "results.json").read_text())["rows"][0]["fid"] == rows[0]["fid"]
    with pytest.raises(UserError, match="FAMILIES"):
        compare_families.main(["--SAVE_ROOT", str(tmp_path), "--FAMILIES=('gan', 'flow')"])


def test_inception_features_preprocess_like_imagenet_and_fail_offline(monkeypatch):
    """No network here: a stand-in network checks the input Inception-v3 would get."""
    import torchvision.models
    from train.evaluator import inception_features

    class StandIn(torch.nn.Module):  # returns each channel's mean, and the input size
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(1, 1)

        def forward(self, x):
            size = torch.full((len(x), 1), float(x.shape[-1]))
            return self.fc(torch.cat([x.mean(dim=(2, 3)), size], dim=1))

    monkeypatch.setattr(torchvision.models, "inception_v3", lambda weights: StandIn())
    grey = torch.full((2, 1, 16, 16), 255, dtype=torch.uint8)  # white, one channel
    features = inception_features(grey, CPU)
    imagenet_white = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224,
                                                                                0.225])
    assert features.shape == (2, 4) and (features[:, 3] == 299).all()  # resized to 299 x 299
    assert torch.allclose(torch.from_numpy(features[:, :3]).float(), imagenet_white.expand(2, 3),
                          atol=1e-5)

    def offline(weights):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models, "inception_v3", offline)
    with pytest.raises(UserError, match="EXTRACTOR='evaluator'"):
        inception_features(grey, CPU)


def test_compare_families_records_a_failed_family_and_stops_on_ctrl_c(tmp_path, monkeypatch):
    import json
    from benchmarks import compare_families
    from utils.errors import Interrupted

    def diverged(c):
        raise UserError("training stopped: loss g_loss became nan at step 7")

    def ctrl_c(c):
        raise Interrupted("interrupted; checkpoint saved")

    monkeypatch.setitem(compare_families._TRAINERS, "gan", diverged)
    monkeypatch.setitem(compare_families._TRAINERS, "vae", ctrl_c)
    with pytest.raises(Interrupted):
        compare_families.main(["--SAVE_ROOT", str(tmp_path), "--FAMILIES=('gan', 'vae')"])
    out = next((tmp_path / "saved_plots" / "compare").iterdir())
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows == [{"family": "gan", "label": "DCGAN", "error": "training stopped: loss g_loss "
                     "became nan at step 7"}]
    with pytest.raises(UserError, match="OVERRIDES"):
        compare_families.main(["--SAVE_ROOT", str(tmp_path), "--OVERRIDES={'ganMain': []}"])


def test_diffusion_recipe_study_smoke(evaluator_root, tmp_path):
    """A pixel and a latent (flow) recipe on shapes for a tiny budget: trained, scored,
    tabulated per family with the recipe's constants, charted; a failing recipe is recorded
    while the others go on."""
    import json
    from benchmarks import diffusion_recipes
    target = evaluator_path(tmp_path, "shapes", 32, 3)
    target.parent.mkdir(parents=True)
    shutil.copy(evaluator_path(evaluator_root, "shapes", 32, 3), target)
    tiny = {"DiffusionMain": ["--BASE=8", "--ATTENTION=()", "--SAMPLE_STEPS=2"],
            "LDMAutoencoderMain": ["--BASE=8"], "LDMDiffusionMain": ["--BASE=8",
                                                                    "--SAMPLE_STEPS=2"],
            "ganmain": ["--WIDTH=8"]}
    pixel = {"eps": [], "broken": ["--PREDICTION=nope"]}
    rows = diffusion_recipes.main([
        "--SAVE_ROOT", str(tmp_path), "--DATASETS=('shapes',)", "--MINUTES=0.01", "--RESULTS=None",
        "--AE_MINUTES=0.01", "--N_TRAIN=256", "--N_SAMPLES=20", "--EVAL_STEPS=2",
        f"--PIXEL={pixel!r}", "--LATENT={'flow': ['--PREDICTION=flow']}",
        "--GAN={'hinge': ['--LOSS=hinge']}", "--GAN_MINUTES=0.01", f"--OVERRIDES={tiny!r}",
        "--PRECISION=fp32"])
    assert [(r["family"], r["recipe"]) for r in rows] == [
        ("pixel", "eps"), ("pixel", "broken"), ("latent", "flow"), ("gan", "hinge")]
    assert "error" in rows[1]
    for r in (rows[0], rows[2], rows[3]):
        assert r["fid"] > 0 and r["fid_ratio"] == r["fid"] / r["fid_floor"]
        assert r["samples"] == 20 and r["images"] > 0 and 0 <= r["class_tv"] <= 1
    assert rows[2]["class_accuracy"] is not None and rows[0]["class_accuracy"] is None
    out = next((tmp_path / "saved_plots" / "recipes").iterdir())
    table = (out / "results.md").read_text()
    assert "## latent diffusion on shapes" in table and "--PREDICTION=flow" in table
    assert "## DCGAN on shapes" in table and "--LOSS=hinge" in table
    assert (out / "bars.png").is_file()
    assert len(json.loads((out / "results.json").read_text())["rows"]) == 4


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_an_evaluator_trains_inside_an_eval_context(tmp_path, context, monkeypatch):
    """An eval path runs under no_grad; the first one on a new data set trains the evaluator
    there (LDMEval's autoencoder report did, and died 'does not require grad')."""
    import train.evaluator as evaluator
    monkeypatch.setattr(evaluator, "MIN_STEPS", 1)  # two epochs of digits: a second
    data = load_dataset("digits", "test", image_size=8, n=50)
    with context():
        accuracy = class_accuracy(data.images, data.labels, "digits", CPU, save_root=tmp_path)
    assert evaluator_path(tmp_path, "digits", 8, 1).is_file()
    assert accuracy > 0.5  # trained, not left at its initialisation (chance is 0.1)


def test_the_peer_trains_for_its_minutes_and_is_scored_in_compare_families(evaluator_root,
                                                                             tmp_path):
    """lucidrains' denoising-diffusion-pytorch (dev-only) as a compare_families row: trained
    for the budget on the same data, sampled, scored by the same evaluator."""
    pytest.importorskip("denoising_diffusion_pytorch")
    from benchmarks import compare_families
    target = evaluator_path(tmp_path, "shapes", 32, 3)
    target.parent.mkdir(parents=True)
    shutil.copy(evaluator_path(evaluator_root, "shapes", 32, 3), target)
    tiny = {"peer_diffusion": ["--DIM=8", "--DIM_MULTS=(1, 2)", "--SAMPLING_STEPS=2"]}
    rows = compare_families.main(["--SAVE_ROOT", str(tmp_path), "--MINUTES=0.02",
                                  "--RESULTS=None", "--FAMILIES=('peer',)", "--N_TRAIN=256",
                                  "--N_SAMPLES=12", f"--OVERRIDES={tiny!r}"])
    (row,) = rows
    assert row["label"] == "denoising-diffusion-pytorch (peer)" and row["fid"] > 0
    assert row["samples"] == 12 and row["stages"][0]["images"] > 0
    assert "DDIM-2" in row["sampler"] and row["class_accuracy"] is None


def test_distill_compare_scores_teacher_and_students_on_the_same_noise(evaluator_root,
                                                                       tmp_path):
    from Diffusion_run_scripts import DiffusionMain
    from benchmarks import distill_compare
    target = evaluator_path(tmp_path, "shapes", 32, 3)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(evaluator_path(evaluator_root, "shapes", 32, 3), target)
    teacher = DiffusionMain.main([
        "--SAVE_ROOT", str(tmp_path), "--N_TRAIN=64", "--BASE=16", "--CHANNEL_MULT=(1, 2)",
        "--BATCH_SIZE=32", "--SAMPLE_STEPS=2", "--PROGRESSION_ROWS=2", "--EPOCHS=1",
        "--GUIDE_EPOCH=1", "--PRECISION=fp32", "--TIMESTEPS=50", "--TENSORBOARD=False"])
    tiny = {"DiffusionDistill": ["--TEACHER_STEPS=4", "--ROUND_STEPS=2", "--PAIRS=16",
                                 "--PAIR_STEPS=2", "--EPOCHS=1", "--BATCH_SIZE=8",
                                 "--PROGRESSION_ROWS=1", "--TENSORBOARD=False"]}
    rows = distill_compare.main([
        "--SAVE_ROOT", str(tmp_path), f"--TEACHER={teacher.name}", "--STEPS=(1, 2)",
        "--N_SAMPLES=12", "--TEACHER_SAMPLERS=('ddim-3', 'dpmpp2m-3')", "--RESULTS=None",
        "--PRECISION=fp32", "--FIGURE_COLUMNS=2", f"--OVERRIDES={tiny!r}"])
    assert [r["label"] for r in rows] == ["teacher ddim-3", "teacher dpmpp2m-3", "progressive 1",
                                         "progressive 2", "reflow 1", "reflow 2"]
    assert all(r["fid"] > 0 and r["ms"] > 0 for r in rows)
    assert all(r["distill_minutes"] > 0 for r in rows[2:]) and "run" not in rows[0]
    from utils.runs import find_run
    out = find_run(tmp_path, "compare", "latest", marker="results.md").plots
    assert (out / "same_noise.png").is_file() and "progressive" in (out / "results.md").read_text()
