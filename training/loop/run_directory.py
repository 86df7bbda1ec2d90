"""A run's directory: its resolved config, spec, metrics log and sample grids beside the
checkpoints, enough to resume, evaluate or export it without the command that made it."""

from __future__ import annotations

import json
import logging
import shutil
import tomllib
from pathlib import Path

from model.atomic_files import write_text_atomic
from model.checkpoint import CHECKPOINTS_DIR
from model.spec import SPEC_FILENAME, GeneratorSpec
from training.config import Config, ConfigError, config_from_dict
from training.errors import TrainingError

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "config.toml"
METRICS_FILENAME = "metrics.jsonl"
SAMPLES_DIR = "samples"


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINTS_DIR / "latest").is_file()


def check_start(run_dir: Path, resume: bool) -> None:
    """Refuse to resume a run with no checkpoint, or to start over one that has one."""
    if resume and not has_checkpoint(run_dir):
        raise TrainingError(
            f"{run_dir}: nothing to resume (no checkpoints/latest); start it again without --resume"
        )
    if not resume and has_checkpoint(run_dir):
        raise TrainingError(
            f"{run_dir} already exists: pass --resume to continue it, or choose another --name"
        )


def create(run_dir: Path, config: Config, spec: GeneratorSpec) -> None:
    """Lay out a new run: config and spec written, a leftover log and samples cleared."""
    if run_dir.exists() and any(run_dir.iterdir()):
        # A run stopped before its first checkpoint holds nothing worth keeping.
        logger.warning("%s has no checkpoint yet; starting it afresh", run_dir)
        (run_dir / METRICS_FILENAME).unlink(missing_ok=True)
        shutil.rmtree(run_dir / SAMPLES_DIR, ignore_errors=True)
    (run_dir / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / CONFIG_FILENAME, config.to_toml())
    spec.save(run_dir / SPEC_FILENAME)


def sample_grid_path(run_dir: Path, step: int) -> Path:
    """Where the validation at ``step`` saves its A | G(A) | B grid."""
    return run_dir / SAMPLES_DIR / f"step_{step:08d}.png"


def append_record(metrics_file, record: dict) -> None:
    """One line of ``metrics.jsonl``, flushed at once: it is what a person tails while the run
    goes on."""
    metrics_file.write(json.dumps(record) + "\n")
    metrics_file.flush()


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config a run saved, for resuming it without its original command."""
    path = Path(run_dir) / CONFIG_FILENAME
    if not path.is_file():
        raise ConfigError(f"{path}: not found; is {run_dir} a run directory?")
    return config_from_dict(tomllib.loads(path.read_text(encoding="utf-8")))
