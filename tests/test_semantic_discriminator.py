"""OASIS's segmenting discriminator (``train.lambda_semantic``): the network, its class-balanced
losses, training with it (checkpoints and exact resume) and the config's refusals."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint import latest_checkpoint
from model.networks import SemanticDiscriminator, init_weights, spectral_normalize
from tests.conftest import LOGGED_SHORT_RUN, tiny_config, train_with_a_break
from training.config import ConfigError, load_config
from training.errors import TrainingError
from training.loop.checkpointing import weights_file
from training.loop.losses import SemanticLoss
from training.loop.trainer import Trainer

LABELS = {"data.input_kind": "label_map", "data.one_hot": "true"}
SEMANTIC = {**LABELS, "train.lambda_semantic": "1", "discriminator.semantic_width": "4"}


def one_hot(ids: torch.Tensor, classes: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(ids, classes).permute(0, 3, 1, 2).float()


def test_semantic_discriminator_labels_every_pixel_with_the_classes_and_fake():
    network = SemanticDiscriminator(3, num_classes=5, base_width=4)
    init_weights(network)
    spectral_normalize(network)

    logits = network(torch.randn(2, 3, 32, 48))

    assert logits.shape == (2, 6, 32, 48)
    with pytest.raises(ValueError, match=r"divisible by 16, got \(40, 32\)"):
        network(torch.randn(1, 3, 40, 32))


def test_every_output_pixel_depends_on_its_neighbourhood_through_the_skips():
    network = SemanticDiscriminator(3, num_classes=2, base_width=4)
    init_weights(network, gain=0.2)
    image = torch.zeros(1, 3, 32, 32, requires_grad=True)

    network(image)[0, :, 5, 7].sum().backward()

    near = image.grad[0, :, 4:7, 6:9].abs().sum()
    assert near > 0  # the full-resolution skip sees the pixel itself
    assert image.grad[0, :, 20:, 20:].abs().sum() > 0  # the coarse levels see far


def test_class_weights_make_every_present_class_weigh_the_same():
    ids = torch.zeros(1, 4, 4, dtype=torch.long)
    ids[0, 0] = 1  # class 1 covers a quarter, class 0 the rest, class 2 is absent

    labels, weights = SemanticLoss().classes(one_hot(ids))

    assert torch.equal(labels, ids)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[labels == 0].sum() == pytest.approx(weights[labels == 1].sum())
    assert weights[0, 0, 0] == pytest.approx(16 / (2 * 4))


def test_ignored_classes_weigh_nothing_and_the_rest_keep_a_mean_weight_of_one():
    ids = torch.zeros(1, 4, 4, dtype=torch.long)
    ids[0, 0] = 1
    ids[0, 1, :2] = 2  # class 0: 10 pixels, class 1: 4, class 2: 2
    loss = SemanticLoss(ignore=(0,))

    labels, weights = loss.classes(one_hot(ids))

    assert torch.all(weights[labels == 0] == 0)
    assert weights[labels == 1].sum() == pytest.approx(weights[labels == 2].sum())
    assert weights.sum() == pytest.approx(16.0)  # as many as pixels, spread over 6 of them
    logits = torch.zeros(1, 4, 4, 4)
    logits[:, 3] = 20 * (ids == 0).float()  # "fake" only where the class is ignored
    # The 6 kept pixels score log 4 each (all logits 0); the 10 ignored ones would score ~0.
    assert loss.fake(logits, one_hot(ids)) == pytest.approx(math.log(4))
    assert SemanticLoss().fake(logits, one_hot(ids)) == pytest.approx(6 / 16 * math.log(4))
    assert loss.accuracy(20 * one_hot(ids, 4), one_hot(ids)) == 1.0


def test_the_real_term_rewards_the_maps_class_and_the_fake_term_the_last_logit():
    ids = torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    maps = one_hot(ids)
    loss = SemanticLoss()
    right = 20 * torch.nn.functional.pad(maps, (0, 0, 0, 0, 0, 1))  # 3 classes + fake at 0
    fake = torch.zeros(2, 4, 8, 8)
    fake[:, 3] = 20

    assert loss.real(right, maps) < 1e-6
    assert loss.real(fake, maps) > 10
    assert loss.fake(fake, maps) < 1e-6
    assert loss.fake(right, maps) > 10
    assert loss.accuracy(right, maps) == 1.0
    assert loss.accuracy(fake, maps) == 0.0


def test_the_generator_term_moves_the_image_towards_its_maps_classes():
    torch.manual_seed(0)
    network = SemanticDiscriminator(3, num_classes=3, base_width=4)
    init_weights(network, gain=0.2)
    maps = one_hot(torch.randint(0, 3, (1, 16, 16)))
    image = torch.randn(1, 3, 16, 16, requires_grad=True)
    loss = SemanticLoss()

    before = loss.real(network(image), maps)
    before.backward()
    with torch.no_grad():
        stepped = image - 0.05 * image.grad / image.grad.abs().max()

    assert loss.real(network(stepped), maps) < before


def weights(folder):
    tensors = {}
    for prefix, filename in (
        ("G", "generator.safetensors"),
        ("S", weights_file("semantic_discriminator")),
    ):
        tensors |= {f"{prefix}.{k}": v for k, v in load_file(str(folder / filename)).items()}
    return tensors


def test_training_with_it_logs_its_terms_saves_it_and_resumes_exactly(label_dataset, tmp_path):
    common = {
        **SEMANTIC,
        "discriminator.num_scales": "2",
        "discriminator.n_layers": "2",
        "train.lambda_feat": "10",
        "train.r1_gamma": "1",
        **LOGGED_SHORT_RUN,
    }
    straight = tiny_config(label_dataset, tmp_path, name="straight", **common)
    trainer = Trainer(straight, progress=False)
    optimized = {id(p) for group in trainer.optimizer_d.param_groups for p in group["params"]}
    assert all(
        id(p) in optimized for p in trainer.discriminators["semantic_discriminator"].parameters()
    )
    initial = {
        k: v.clone()
        for k, v in trainer.discriminators["semantic_discriminator"].state_dict().items()
    }
    trainer.train()

    records = [json.loads(line) for line in (straight.run_dir / "metrics.jsonl").open()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert len(train_records) == 6
    for record in train_records:
        assert record["G_sem"] > 0 and record["D_sem"] > 0, record
        assert 0 <= record["D_sem_acc"] <= 1
    final = trainer.discriminators["semantic_discriminator"].state_dict()
    assert any(not torch.equal(final[k], initial[k]) for k in initial)

    expected = weights(latest_checkpoint(straight.run_dir / "checkpoints"))
    actual = weights(train_with_a_break(label_dataset, tmp_path, 2, **common))
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def test_resuming_with_the_option_switched_is_refused_by_name(label_dataset, tmp_path):
    short = {**LABELS, "train.max_steps": "1", "train.epochs": "1", "train.epochs_decay": "0"}
    Trainer(tiny_config(label_dataset, tmp_path, name="plain", **short), progress=False).train()
    switched = tiny_config(label_dataset, tmp_path, name="plain", **(short | SEMANTIC))

    with pytest.raises(TrainingError, match="without a semantic discriminator.*lambda_semantic"):
        Trainer(switched, resume=True, progress=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.input_kind": "photo"}, "needs data.input_kind = 'label_map'"),
        ({"data.one_hot": "false"}, "with data.one_hot = true"),
        ({"data.load_size": "40", "data.crop_size": "40", "generator.num_downs": "3"}, "of 16"),
        ({"train.lambda_semantic": "-1"}, "train.lambda_semantic"),
        ({"train.lambda_gan": "0"}, "train.lambda_semantic"),
        ({"discriminator.semantic_width": "0"}, "discriminator.semantic_width"),
        ({"train.lambda_semantic": "0", "train.semantic_ignore": "sky"}, "train.semantic_ignore"),
    ],
)
def test_bad_semantic_options_are_config_errors_naming_the_field(overrides, message):
    base = {"data.load_size": "64", "data.crop_size": "64", "generator.num_downs": "6"}
    with pytest.raises(ConfigError, match=message):
        load_config(None, base | SEMANTIC | overrides)


def test_an_ignored_class_missing_from_the_palette_is_named(label_dataset, tmp_path):
    config = tiny_config(
        label_dataset, tmp_path, **SEMANTIC, **{"train.semantic_ignore": "sky, cloud"}
    )

    with pytest.raises(
        ConfigError, match=r"'cloud', not a class of the palette \(sky, grass, rock\)"
    ):
        Trainer(config, progress=False)
