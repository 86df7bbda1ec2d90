"""Run configuration: TOML files, command-line overrides, and errors that name the key."""

import typing
from pathlib import Path

import pytest

from pix2pix.commands.common import UsageError
from pix2pix.commands.train import parse_overrides
from training import config as config_module
from training.config import ConfigError, config_from_dict, load_config


def write(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_defaults_follow_the_paper():
    config = load_config()
    assert (config.train.lr, config.train.beta1, config.train.beta2) == (2e-4, 0.5, 0.999)
    assert config.train.lambda_l1 == 100.0 and config.train.gan_mode == "vanilla"
    assert (config.data.load_size, config.data.crop_size) == (286, 256)
    assert config.generator.num_downs == 8 and config.discriminator.n_layers == 3


def test_file_then_overrides(tmp_path):
    path = write(tmp_path, 'name = "x"\n[train]\nbatch_size = 4\nlr = 1\n')
    config = load_config(path, {"batch_size": "8", "data.flip": "false", "seed": "3"})
    assert config.name == "x"
    assert config.train.batch_size == 8
    assert config.train.lr == 1.0  # ints are accepted for float fields
    assert config.data.flip is False and config.seed == 3


@pytest.mark.parametrize(
    "text,message",
    [
        ("[train]\nbatch_sise = 4\n", "unknown config key 'train.batch_sise'"),
        ("[train]\nbatch_size = 'four'\n", "train.batch_size expects int"),
        ("[train]\ngan_mode = 'wgan'\n", "train.gan_mode must be one of"),
        ("[generator]\nupsample = 'bilinear'\n", "generator.upsample must be one of transpose"),
        ("[train]\nema_decay = 1.0\n", "train.ema_decay must be 0 \\(off\\) or between 0 and 1"),
        ("[data]\ncrop_size = 300\nload_size = 300\n", "multiple of 2\\*\\*generator.num_downs"),
        ("[data]\nload_size = 100\n", "data.load_size"),
        ("name = 'a/b'\n", "cannot be used as a run directory"),
        ("[train\n", "invalid TOML"),
        ("train = 3\n", "train must be a table"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"nonsense": "1"}, "unknown option --nonsense"),
        ({"base_width": "8"}, "ambiguous"),
        ({"train.compile": "maybe"}, "expects bool"),
        ({"train.precision": "fp8"}, "train.precision must be one of"),
        ({"upsample": "deconv"}, "generator.upsample must be one of transpose, resize"),
        ({"train.ema_decay": "-0.5"}, "train.ema_decay must be 0"),
    ],
)
def test_bad_overrides_name_the_option(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_saved_config_round_trips():
    config = load_config(None, {"train.batch_size": "3", "data.root": "somewhere"})
    import tomllib

    assert config_from_dict(tomllib.loads(config.to_toml())) == config


def test_shipped_configs_load():
    shipped = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))
    expected = {"synth-labels", "synth-color", "edges", "demo-facades", "demo-gray2color"}
    expected |= {
        f"{prefix}{task}"
        for prefix in ("", "paper-")
        for task in ("facades", "cityscapes", "maps", "colorization")
    }
    assert expected <= {path.stem for path in shipped}
    for path in shipped:
        config = load_config(path)
        assert config.name == path.stem
        config.validate()


def test_override_parsing():
    assert parse_overrides(["--a", "1", "--b.c=2"]) == {"a": "1", "b.c": "2"}
    with pytest.raises(UsageError, match="needs a value"):
        parse_overrides(["--a"])
    with pytest.raises(UsageError, match="unexpected argument"):
        parse_overrides(["stray"])


# Both spellings of an optional field: the old one is a different type at runtime.
@pytest.mark.parametrize("kind", [int | None, typing.Optional[int]])  # noqa: UP045
def test_optional_fields_take_their_inner_type_from_the_command_line(kind):
    assert config_module._coerce("train.example", " 3 ", kind) == 3
