"""Evaluation end to end on synthetic data: metrics, the FCN-score pipeline, reports and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import CHECKPOINTS_DIR, publish_latest, save_model_folder
from model.networks import build_generator, init_weights
from model.spec import GeneratorArchitecture, GeneratorSpec
from pix2pix.cli import main
from training.data.datasets import data_config_for
from training.data.synth import LANDSCAPE_PALETTE
from training.errors import DataError
from training.evaluation.evaluate import evaluate_model, evaluate_models
from training.evaluation.report import write_report
from training.evaluation.segmenter import (
    Segmenter,
    score_real_photos,
    segmentation_data_config,
    train_segmenter,
)

ARCHITECTURE = GeneratorArchitecture(num_downs=3, base_width=4, norm="batch", dropout=True)


def save_generator(folder: Path, spec: GeneratorSpec, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    generator = build_generator(spec.architecture, spec.in_channels, spec.out_channels)
    init_weights(generator)
    return save_model_folder(folder, generator.eval(), spec)


def labels_spec() -> GeneratorSpec:
    return GeneratorSpec(
        ARCHITECTURE,
        len(LANDSCAPE_PALETTE),
        3,
        input_kind="label_map",
        palette=LANDSCAPE_PALETTE,
        one_hot=True,
        train_size=64,
        pad_multiple=8,
        task="labels2photo",
    )


@pytest.fixture(scope="module")
def segmenter_folder(synth_labels, tmp_path_factory) -> Path:
    """A tiny segmenter trained for a few seconds on the synthetic landscapes."""
    out = tmp_path_factory.mktemp("segmenter") / "segmenter"
    data = segmentation_data_config(synth_labels, 64)
    train_segmenter(
        data, out, steps=20, batch_size=4, base_width=8, num_downs=3, lr=3e-3, progress=False
    )
    return out


@pytest.fixture(scope="module")
def label_run(tmp_path_factory) -> Path:
    """A run directory holding a checkpoint of an untrained label-map model and a log."""
    run = tmp_path_factory.mktemp("runs") / "tiny-labels"
    save_generator(run / CHECKPOINTS_DIR / "step_00000010", labels_spec())
    publish_latest(run / CHECKPOINTS_DIR, "step_00000010")
    records = [
        {"kind": "train", "step": step, "G_GAN": 1.0 + step / 10, "G_L1": 0.3 - step / 100}
        | {"D_real": 0.5, "D_fake": 0.4, "D_acc_real": 0.7, "D_acc_fake": 0.8}
        for step in (5, 10)
    ]
    records.append({"kind": "val", "step": 10, "val_l1": 0.25})
    lines = [json.dumps(record) for record in records]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def files_referenced(page: Path) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page.read_text(encoding="utf-8"))


def assert_self_contained(report: Path) -> None:
    page = report / "index.html"
    assert page.is_file()
    references = files_referenced(page)
    assert references, "the page should show figures and link metrics.json"
    for reference in references:
        assert "://" not in reference and not reference.startswith(("/", "..")), reference
        assert (report / reference).is_file(), f"index.html references missing {reference}"


def test_data_config_follows_the_model_spec(synth_labels, synth_color):
    config = data_config_for(labels_spec(), synth_labels, "test")
    assert (config.layout, config.input_kind, config.crop_size) == ("folders", "label_map", 64)
    gray = GeneratorSpec(ARCHITECTURE, 1, 2, input_kind="grayscale", color_space="lab")
    assert data_config_for(gray, synth_color, "test").layout == "colorization"
    with pytest.raises(DataError, match="split folder not found"):
        data_config_for(gray, synth_color, "nonexistent")


def test_segmenter_round_trips_through_its_folder(segmenter_folder, synth_labels):
    segmenter = Segmenter.load(segmenter_folder)
    assert segmenter.spec.size == 64 and segmenter.spec.num_classes == len(LANDSCAPE_PALETTE)
    assert segmenter.spec.trained["steps"] == 20
    photos = np.random.default_rng(0).integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
    first = segmenter.predict(photos)
    assert first.shape == (2, 48, 40) and first.dtype == np.uint8
    assert set(np.unique(first)) <= {c.id for c in LANDSCAPE_PALETTE}
    assert np.array_equal(first, Segmenter.load(segmenter_folder).predict(photos))


def test_fcn_score_end_to_end_on_synthetic_landscapes(label_run, segmenter_folder, synth_labels):
    evaluation = evaluate_model(
        label_run, synth_labels, "test", segmenter=segmenter_folder, samples=3
    )
    values = evaluation.metrics
    for key in ("fcn_pixel_accuracy", "fcn_class_accuracy", "fcn_mean_iou", "real_mean_iou"):
        assert 0.0 <= values[key] <= 1.0, key
    # The upper bound is the same segmenter on the real test photos, scored independently.
    data = segmentation_data_config(synth_labels, 64)
    real = score_real_photos(Segmenter.load(segmenter_folder), data, "test")
    assert values["real_pixel_accuracy"] == pytest.approx(real.pixel_accuracy)
    assert values["real_mean_iou"] == pytest.approx(real.mean_iou)
    # Even a few seconds of training beat an untrained generator's gray mush.
    assert values["real_pixel_accuracy"] > values["fcn_pixel_accuracy"]
    assert len(evaluation.per_class) == len(LANDSCAPE_PALETTE)
    assert evaluation.count == 4 and len(evaluation.samples) == 3
    assert evaluation.name == "tiny-labels"  # the run, not its checkpoint
    assert any("FID and KID skipped" in note for note in evaluation.notes)


def test_every_task_gets_pixel_metrics_and_sharpness(label_run, synth_labels):
    evaluation = evaluate_model(label_run, synth_labels, "test", samples=0)
    values = evaluation.metrics
    assert 0.0 < values["l1"] < 1.0
    assert values["psnr"] > 0 and -1.0 <= values["ssim"] <= 1.0
    assert values["sharpness_ratio"] > 0 and values["laplacian_ratio"] > 0
    assert "fcn_pixel_accuracy" not in values  # no segmenter next to this dataset
    assert any("FCN-score skipped" in note for note in evaluation.notes)


def test_every_task_gets_the_artifact_scores_in_json_and_tables(label_run, synth_labels, tmp_path):
    evaluation = evaluate_model(label_run, synth_labels, "test", samples=0)
    values = evaluation.metrics
    assert np.isfinite(values["checkerboard"])
    assert 0.0 <= values["blob_rate"] <= 1.0
    report = tmp_path / "report"
    write_report([evaluation], report)
    saved = json.loads((report / "metrics.json").read_text())["models"][0]["metrics"]
    assert saved["checkerboard"] == pytest.approx(values["checkerboard"], abs=1e-6)
    assert saved["blob_rate"] == pytest.approx(values["blob_rate"], abs=1e-6)
    for page in ("table.md", "index.html"):
        text = (report / page).read_text()
        assert "Checkerboard vs targets (dB)" in text and "Outputs with a white blob" in text


def test_colorization_metrics(synth_color, tmp_path):
    spec = GeneratorSpec(
        ARCHITECTURE, 1, 2, input_kind="grayscale", color_space="lab", train_size=64,
        pad_multiple=8, task="gray2color",
    )  # fmt: skip
    model = save_generator(tmp_path / "gray", spec)
    evaluation = evaluate_model(model, synth_color, "test", samples=2)
    values = evaluation.metrics
    for key in ("ab_acc_5", "ab_acc_10", "ab_acc_20", "ab_auc"):
        assert 0.0 <= values[key] <= 1.0, key
    assert values["ab_acc_5"] <= values["ab_acc_10"] <= values["ab_acc_20"]
    curve = evaluation.curves["ab_accuracy"]
    assert len(curve) == 151 and np.all(np.diff(curve) >= 0)
    assert values["colorfulness_target"] > 0 and values["psnr_ab"] > 0
    # An untrained colorizer's output is nearly gray: far less colorful than the photos.
    assert values["colorfulness_ratio"] < 1.0
    report = tmp_path / "report"
    write_report([evaluation], report)
    assert (report / "ab_accuracy.png").is_file()
    assert_self_contained(report)


def test_report_files_exist_and_the_page_links_only_its_own_files(
    label_run, segmenter_folder, synth_labels, tmp_path
):
    evaluation = evaluate_model(label_run, synth_labels, segmenter=segmenter_folder, samples=2)
    report = tmp_path / "report"
    write_report([evaluation], report)
    for name in ("metrics.json", "table.md", "samples.png", "training.png", "index.html"):
        assert (report / name).is_file(), name
    assert_self_contained(report)
    data = json.loads((report / "metrics.json").read_text())
    model = data["models"][0]
    assert model["count"] == 4 and model["metrics"]["l1"] == pytest.approx(
        evaluation.metrics["l1"], abs=1e-6
    )
    assert "FCN mean IoU" in (report / "table.md").read_text()


def test_a_second_report_removes_figures_it_no_longer_draws(label_run, synth_labels, tmp_path):
    report = tmp_path / "report"
    write_report([evaluate_model(label_run, synth_labels, samples=2)], report)
    assert (report / "samples.png").is_file()
    write_report([evaluate_model(label_run, synth_labels, samples=0)], report)
    assert not (report / "samples.png").exists()
    assert_self_contained(report)


def test_compare_lines_models_up_on_the_same_samples(label_run, synth_labels, tmp_path):
    other = save_generator(tmp_path / "other", labels_spec(), seed=1)
    evaluations = evaluate_models(
        [label_run, other], synth_labels, "test", names=["first", "second"], samples=2
    )
    assert [e.name for e in evaluations] == ["first", "second"]
    assert evaluations[0].sample_indices == evaluations[1].sample_indices
    assert evaluations[0].metrics["l1"] != evaluations[1].metrics["l1"]
    report = tmp_path / "compare"
    write_report(evaluations, report)
    models = json.loads((report / "metrics.json").read_text())["models"]
    assert len(models) == 2
    assert all({"checkerboard", "blob_rate"} <= set(model["metrics"]) for model in models)
    assert_self_contained(report)


def test_compare_refuses_models_with_different_inputs(label_run, synth_labels, tmp_path):
    gray = GeneratorSpec(ARCHITECTURE, 1, 2, input_kind="grayscale", color_space="lab")
    model = save_generator(tmp_path / "gray", gray)
    with pytest.raises(DataError, match="different inputs"):
        evaluate_models([label_run, model], synth_labels)


def test_cli_evaluate_and_compare_write_reports(label_run, synth_labels, tmp_path, capsys):
    report = tmp_path / "cli-report"
    data = ["--data", str(synth_labels), "--quiet"]
    code = main(["evaluate", str(label_run), *data, "--out", str(report), "--samples", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "PSNR (dB)" in printed and "FID and KID skipped" in printed
    assert "Checkerboard vs targets (dB)" in printed and "Outputs with a white blob" in printed
    assert_self_contained(report)
    compare = tmp_path / "cli-compare"
    options = ["--out", str(compare), "--names", "a,b", "--samples", "1"]
    code = main(["compare", str(label_run), str(label_run), *data, *options])
    assert code == 0
    assert "Checkerboard vs targets (dB)" in capsys.readouterr().out
    assert_self_contained(compare)


def test_cli_reports_unusable_inception_weights(label_run, synth_labels, tmp_path, capsys):
    weights = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(1008, 4)}, weights)
    options = ["--out", str(tmp_path / "r"), "--inception", str(weights), "--quiet"]
    code = main(["evaluate", str(label_run), "--data", str(synth_labels), *options])
    assert code == 1
    assert "cannot use these Inception weights" in capsys.readouterr().err


def test_cli_segmenter_train_saves_beside_the_data(synth_labels, tmp_path, capsys):
    out = tmp_path / "segmenter"
    options = ["--steps", "2", "--batch-size", "2", "--width", "4", "--num-downs", "3"]
    code = main(
        ["segmenter", "train", "--data", str(synth_labels), "--out", str(out), *options, "--quiet"]
    )
    assert code == 0
    assert Segmenter.load(out).spec.size == 64
    assert "val pixel accuracy" in capsys.readouterr().out


def test_compare_runs_one_model_in_two_inference_modes(label_run, synth_labels, tmp_path, capsys):
    data = ["--data", str(synth_labels), "--quiet", "--samples", "1"]
    out = tmp_path / "modes"
    modes = ["--inference-mode", "eval,sample"]
    code = main(["compare", str(label_run), str(label_run), *data, "--out", str(out), *modes])
    assert code == 0
    models = json.loads((out / "metrics.json").read_text())["models"]
    assert [model["name"] for model in models] == ["tiny-labels (eval)", "tiny-labels (sample)"]
    assert models[0]["metrics"]["l1"] != models[1]["metrics"]["l1"]
    capsys.readouterr()
    for mode, message in [("eval,sample", "one --inference-mode"), ("running", "choose from")]:
        arguments = ["evaluate", str(label_run), *data, "--inference-mode", mode]
        assert main([*arguments, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(DataError, match="3 inference modes given for 2 models"):
        evaluate_models([label_run, label_run], synth_labels, inference_mode=["eval"] * 3)
