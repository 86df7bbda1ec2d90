"""The command line end to end: synth data, train, resume, translate, and error exits."""

import subprocess
import sys

import numpy as np
from PIL import Image

from pix2pix.cli import build_parser
from tests.conftest import write_label_dataset


def pix2pix(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "pix2pix", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


TINY = [
    "--generator.num_downs", "5", "--generator.base_width", "8",
    "--discriminator.base_width", "8", "--data.load_size", "36", "--data.crop_size", "32",
    "--data.num_workers", "0", "--batch_size", "2", "--log_every", "2",
]  # fmt: skip


def test_synth_train_resume_translate(tmp_path):
    data = tmp_path / "synth"
    result = pix2pix("data", "synth", "--out", data, "--n", "8", "--size", "48", "--quiet")
    assert result.returncode == 0, result.stderr
    assert (data / "palette.json").is_file()

    config = tmp_path / "run.toml"
    config.write_text(
        f'name = "cli"\nruns_dir = "{tmp_path / "runs"}"\n'
        f'[data]\nroot = "{data}"\ninput_kind = "label_map"\n'
    )
    result = pix2pix("train", "--config", config, *TINY, "--max_steps", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "done: 2 steps" in result.stdout
    run = tmp_path / "runs" / "cli"

    result = pix2pix("train", "--resume-run", run, "--max_steps", "4", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "done: 4 steps" in result.stdout

    labels = np.zeros((333, 517), dtype=np.uint8)
    labels[200:] = 5
    Image.fromarray(labels, "L").save(tmp_path / "odd.png")
    out = tmp_path / "out"
    result = pix2pix("translate", run, tmp_path / "odd.png", "--out", out)
    assert result.returncode == 0, result.stderr
    assert Image.open(out / "odd.png").size == (517, 333)
    # The run's weights in another inference mode: each image's own batch-norm statistics.
    sample = tmp_path / "sample"
    result = pix2pix(
        "translate", run, tmp_path / "odd.png", "--out", sample, "--inference-mode", "sample"
    )
    assert result.returncode == 0, result.stderr
    pixels = [np.asarray(Image.open(folder / "odd.png"), dtype=int) for folder in (out, sample)]
    assert pixels[1].shape == pixels[0].shape and np.abs(pixels[1] - pixels[0]).mean() > 1


def test_train_refuses_to_overwrite_and_reports_bad_data(tmp_path):
    data = write_label_dataset(tmp_path / "data")
    (data / "train" / "B" / "0000.png").unlink()
    config = tmp_path / "run.toml"
    config.write_text(
        f'name = "bad"\nruns_dir = "{tmp_path / "runs"}"\n'
        f'[data]\nroot = "{data}"\ninput_kind = "label_map"\n'
    )
    result = pix2pix("train", "--config", config, *TINY, "--quiet")
    assert result.returncode == 1
    assert "in A/ without a B: 0000.png" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_flags_exit_with_usage_errors(tmp_path):
    result = pix2pix("train", "--config", tmp_path / "missing.toml")
    assert result.returncode == 2 and "config file not found" in result.stderr
    config = tmp_path / "run.toml"
    config.write_text("")
    result = pix2pix("train", "--config", config, "--bacth_size", "2")
    assert result.returncode == 2 and "unknown option --bacth_size" in result.stderr


def test_translate_reports_unusable_inputs(tmp_path):
    result = pix2pix("translate", tmp_path / "no-model", tmp_path, "--out", tmp_path / "o")
    assert result.returncode == 1 and "no such file or directory" in result.stderr


def test_palette_tolerance_is_one_flag_with_tolerance_as_a_hidden_alias():
    parser = build_parser()
    verbs = {
        "translate": (["translate", "model", "image.png", "--out", "out"], None),
        "segmenter train": (["segmenter", "train", "--data", "data"], 0),
    }
    for name, (argv, default) in verbs.items():
        assert parser.parse_args(argv).palette_tolerance == default, name
        for flag in ("--palette-tolerance", "--tolerance"):
            assert parser.parse_args([*argv, flag, "255"]).palette_tolerance == 255, (name, flag)
        help_text = pix2pix(*name.split(), "--help").stdout
        assert "--palette-tolerance" in help_text and "--tolerance" not in help_text, name
    evaluate = ["evaluate", "model", "--data", "data"]
    assert parser.parse_args(evaluate).palette_tolerance is None
    assert parser.parse_args([*evaluate, "--palette-tolerance", "9"]).palette_tolerance == 9
