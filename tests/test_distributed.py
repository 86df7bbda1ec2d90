"""Data-parallel training: two gloo processes on the CPU train exactly like one process."""

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint import latest_checkpoint
from tests.conftest import tiny_config, write_label_dataset
from training.loop.sampling import EpochSampler
from training.loop.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"data.input_kind": "label_map"}
# Instance norm and no dropout: every sample's gradient is independent of the others in its
# batch, so splitting a batch across processes changes nothing but the summation order.
EXACT = {
    **LABELS,
    "generator.norm": "instance",
    "discriminator.norm": "instance",
    "generator.dropout": "false",
}

WORKER = textwrap.dedent(
    """
    import os, sys, tomllib
    from safetensors.torch import save_file
    from training.config import config_from_dict
    from training.loop.distributed import teardown
    from training.loop.trainer import Trainer

    def load(path):
        return config_from_dict(tomllib.loads(open(path).read()))

    probe, exact, straight, split = (load(path) for path in sys.argv[1:5])
    out, rank = sys.argv[5], os.environ["RANK"]
    # One step's gradients: this rank's half of the global batch, all-reduced by DDP.
    trainer = Trainer(probe, progress=False)
    _, batch = next(trainer.batches())
    trainer.train_step(trainer._to_device(batch["A"]), trainer._to_device(batch["B"]))
    grads = {f"G.{k}": p.grad for k, p in trainer.generator.named_parameters()}
    grads |= {f"D.{k}": p.grad for k, p in trainer.discriminator.named_parameters()}
    grads["batch.A"] = batch["A"]
    save_file({k: v.contiguous() for k, v in grads.items()}, f"{out}/grads{rank}.safetensors")

    trainer = Trainer(exact, progress=False)
    trainer.train()
    tensors = {f"G.{k}": v for k, v in trainer.generator.state_dict().items()}
    tensors |= {f"D.{k}": v for k, v in trainer.discriminator.state_dict().items()}
    tensors |= {f"EMA.{k}": v for k, v in trainer.generator_ema.state_dict().items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, f"{out}/rank{rank}.safetensors")
    Trainer(straight, progress=False).train()
    Trainer(split, progress=False).train()
    split.train.max_steps = straight.train.max_steps
    Trainer(split, resume=True, progress=False).train()
    teardown()
    """
)


def run_processes(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a launcher in its own session, so a hang takes every worker down with it."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{command[:6]} did not finish in {timeout} s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    return subprocess.CompletedProcess(command, process.returncode, output)


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def inert_biases(trainer: Trainer) -> set[str]:
    """Conv biases that feed an affine-free instance norm: it subtracts them again, so their
    true gradient is zero, what is computed is rounding noise, and Adam turns that noise into
    full-size steps."""
    names = set()
    for prefix, network in (("G.", trainer.generator), ("D.", trainer.discriminator)):
        modules = list(network.named_modules())
        for (name, module), (_, following) in itertools.pairwise(modules):
            if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d) and isinstance(
                following, torch.nn.InstanceNorm2d
            ):
                names.add(f"{prefix}{name}.bias")
    return names


def checkpoint_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    folder = latest_checkpoint(run_dir / "checkpoints")
    return {f"G.{k}": v for k, v in load_file(str(folder / "generator.safetensors")).items()} | {
        f"D.{k}": v for k, v in load_file(str(folder / "discriminator.safetensors")).items()
    }


def first_step_gradients(trainer: Trainer) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The first batch's inputs and the gradients of one training step on it."""
    _, batch = next(trainer.batches())
    trainer.train_step(trainer._to_device(batch["A"]), trainer._to_device(batch["B"]))
    grads = {f"G.{k}": p.grad.clone() for k, p in trainer.generator.named_parameters()}
    grads |= {f"D.{k}": p.grad.clone() for k, p in trainer.discriminator.named_parameters()}
    return batch["A"], grads


def adam_step_bounds(steps: int, beta1: float, beta2: float) -> list[float]:
    """The largest |m_hat / sqrt(v_hat)| that Adam can reach at steps 1..``steps``, whatever
    the gradients: m_hat = sum(a_i g_i) and v_hat = sum(b_i g_i^2) with Adam's bias-corrected
    weights a_i, b_i, so by Cauchy-Schwarz |m_hat| <= sqrt(sum(a_i^2 / b_i) * v_hat)."""
    bounds = []
    for t in range(1, steps + 1):
        a = [(1 - beta1) * beta1 ** (t - i) / (1 - beta1**t) for i in range(1, t + 1)]
        b = [(1 - beta2) * beta2 ** (t - i) / (1 - beta2**t) for i in range(1, t + 1)]
        bounds.append(math.sqrt(sum(x * x / y for x, y in zip(a, b, strict=True))))
    return bounds


# A gradient element is a reduction over up to batch x height x width = 4 x 32 x 32 terms,
# summed in another order by a batch of 2 plus an all-reduce than by a batch of 4 (and with
# other oneDNN blockings on each CPU): about sqrt(4096) = 64 units of rounding per reduction,
# compounded over the network's depth. 2^10 float32 ulps of the tensor's largest gradient
# bounds that with room, and is still 100x below what a missing all-reduce or a wrong split
# of the batch produces (about 1e-1 of the largest gradient).
GRADIENT_TOLERANCE = 2**10 * torch.finfo(torch.float32).eps


def test_ranks_shard_each_epoch_without_overlap_and_resume_mid_epoch():
    # 11 pairs, batch 2 per rank on 2 ranks: 2 steps (8 pairs) per epoch, 3 dropped.
    shards = [EpochSampler(11, 3, per_epoch=4, rank=rank, world_size=2) for rank in (0, 1)]
    first, second = (list(itertools.islice(sampler, 8)) for sampler in shards)
    assert [epoch for epoch, _ in first] == [0] * 4 + [1] * 4
    for epoch in (0, 1):
        mine = [i for e, i in first if e == epoch]
        theirs = [i for e, i in second if e == epoch]
        assert len(set(mine + theirs)) == 8
    assert shards[0].epoch_order(0) != shards[0].epoch_order(1)  # reshuffled per epoch
    # Step s of rank r holds global positions s*B*N + j*N + r: one process's batch s at B*N.
    single = EpochSampler(11, 3, per_epoch=8)
    assert sorted(first[4:6] + second[4:6]) == sorted(itertools.islice(single, 8, 12))
    resumed = EpochSampler(11, 3, per_epoch=4, rank=1, world_size=2)
    resumed.set_position(1, 2)
    assert list(itertools.islice(resumed, 2)) == second[6:]


@pytest.mark.numeric
def test_two_gloo_processes_train_like_one_and_resume_exactly(tmp_path):
    data = write_label_dataset(tmp_path / "data", counts=(12, 2, 2))
    # 12 pairs at a global batch of 4: 3 steps per epoch, so 4 steps cross an epoch boundary
    # (and a reshuffle).
    # With a moving average of the generator's weights, which checkpoints serve.
    steps = {"train.max_steps": "4", "train.save_every": "4", "train.ema_decay": "0.9"}
    alone = {**EXACT, "train.batch_size": "4"}
    single = tiny_config(data, tmp_path, name="single", **alone, **steps)
    reference = Trainer(single, progress=False)
    reference.train()
    single_batch, single_grads = first_step_gradients(
        Trainer(tiny_config(data, tmp_path, name="single-probe", **alone), progress=False)
    )

    # The same on two processes at batch 2 each. Batch norm and dropout on for the resume
    # check: a resumed run must restore every rank's own dropout stream.
    probe = tiny_config(data, tmp_path, name="probe", **EXACT)
    exact = tiny_config(data, tmp_path, name="exact", **EXACT, **steps)
    noisy = {**LABELS, "train.save_every": "2", "train.max_steps": "6", "train.ema_decay": "0.9"}
    straight = tiny_config(data, tmp_path, name="straight", **noisy)
    split = tiny_config(data, tmp_path, name="split", **noisy | {"train.max_steps": "4"})
    paths = []
    for config in (probe, exact, straight, split):
        paths.append(tmp_path / f"{config.name}.toml")
        paths[-1].write_text(config.to_toml())
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    run_processes([*torchrun(), str(worker), *map(str, paths), str(tmp_path)])

    # Ranks end every step with the same weights, bit for bit: DDP's whole promise; and so
    # with the same moving average.
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys() and any(name.startswith("EMA.") for name in rank0)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name

    # Rank r holds positions r and r + 2 of the global batch of 4.
    grads0 = load_file(str(tmp_path / "grads0.safetensors"))
    grads1 = load_file(str(tmp_path / "grads1.safetensors"))
    halves = grads0.pop("batch.A"), grads1.pop("batch.A")
    assert torch.equal(
        torch.stack([halves[0][0], halves[1][0], halves[0][1], halves[1][1]]), single_batch
    )
    # The all-reduced gradients are the gradients of the whole batch, up to summation order.
    inert = inert_biases(reference)
    assert inert and inert < single_grads.keys() == grads0.keys()
    for name, expected in single_grads.items():
        assert torch.equal(grads0[name], grads1[name]), name
        if name in inert:
            continue
        tolerance = GRADIENT_TOLERANCE * expected.abs().max().item()
        error = (grads0[name] - expected).abs().max().item()
        assert error <= tolerance, f"{name}: gradient off by {error:.2e} > {tolerance:.2e}"

    # Trained weights: where a gradient is close to zero, another summation order can flip its
    # sign, and Adam moves an element by up to lr * bound_t at step t whatever the gradient's
    # size, so two equivalent runs can part by twice the sum of those steps and no more.
    train = single.train
    bounds = adam_step_bounds(single.train.max_steps, train.beta1, train.beta2)
    parting = 2 * train.lr * sum(bounds)
    expected, actual = checkpoint_weights(single.run_dir), checkpoint_weights(exact.run_dir)
    assert expected.keys() == actual.keys()
    for name in expected.keys() - inert:
        error = (actual[name] - expected[name]).abs().max().item()
        assert error <= parting, f"{name}: weights part by {error:.2e} > {parting:.2e}"

    # Resuming is exact by design: same kernels, same order, restored RNG streams.
    resumed, uninterrupted = checkpoint_weights(split.run_dir), checkpoint_weights(straight.run_dir)
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name


def test_nproc_runs_itself_under_torchrun_and_only_rank_0_writes(tmp_path):
    data = write_label_dataset(tmp_path / "data", counts=(8, 2, 2))
    config = tiny_config(data, tmp_path, name="run", **LABELS, **{"train.max_steps": "3"})
    config_path = tmp_path / "run.toml"
    config_path.write_text(config.to_toml())
    cli = [sys.executable, "-m", "pix2pix.cli", "train", "--nproc", "2", "--quiet"]
    output = run_processes([*cli, "--config", str(config_path)]).stdout
    assert output.count("done: 3 steps") == 1, output
    assert output.count("training run on cpu (fp32): 3 steps, 2 per epoch, batch 2 x 2") == 1

    run = config.run_dir
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [3]
    assert [r["step"] for r in records if r["kind"] == "val"] == [3]
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"latest", "step_00000003"}
