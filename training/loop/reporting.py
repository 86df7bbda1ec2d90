"""Where a run's records go as it trains: ``metrics.jsonl``, the progress bar and the trackers.

Rank 0 writes; on the other ranks a reporter only moves its (hidden) progress bar.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from tqdm import tqdm

from training.config import Config
from training.loop import run_directory
from training.loop.run_directory import METRICS_FILENAME
from training.loop.tracking import SAMPLES_TAG, Tracker, record_scalars

logger = logging.getLogger(__name__)


class Reporter:
    """Sends each train and val record to the log, the bar and every tracker; a context
    manager that starts the trackers on entry and closes everything on exit."""

    def __init__(
        self,
        config: Config,
        trackers: list[Tracker],
        main: bool,
        step: int,
        total_steps: int,
        progress: bool,
    ):
        self.config, self.trackers, self.main, self.step = config, trackers, main, step
        self.bar = tqdm(
            total=total_steps, initial=step, disable=not (progress and main), desc=config.name,
            unit="step", dynamic_ncols=True,
        )  # fmt: skip
        self.metrics_file = None
        self.started: list[Tracker] = []

    def __enter__(self) -> Reporter:
        try:
            if self.main:
                path = self.config.run_dir / METRICS_FILENAME
                self.metrics_file = open(path, "a", encoding="utf-8")
            # A tracker that cannot start (MLflow's store refused, say) stops the run here,
            # before it trains.
            for tracker in self.trackers:
                tracker.start(self.config, self.step)
                self.started.append(tracker)
        except BaseException as error:
            self.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self.bar.close()
        if self.metrics_file is not None:
            self.metrics_file.close()
        for tracker in self.started:
            try:
                tracker.close(succeeded=error_type is None)
            except Exception:
                # A tracker that fails to close must not hide the run's own outcome.
                logger.exception("closing the %s tracker failed", type(tracker).__name__)
        self.started = []

    def advance(self) -> None:
        self.bar.update(1)

    def train_record(self, record: dict[str, Any]) -> None:
        """One log interval's record: the log line, the bar's summary and the curves."""
        self._write(record)
        postfix = {"G_L1": f"{record['G_L1']:.3f}", "img_s": f"{record['images_per_s']:.1f}"}
        if "G_GAN" in record and "D_real" in record:
            postfix["G_GAN"] = f"{record['G_GAN']:.3f}"
            postfix["D"] = f"{(record['D_real'] + record['D_fake']) / 2:.3f}"
        self.bar.set_postfix(postfix)

    def validation_record(self, record: dict[str, Any]) -> None:
        """A validation's record, after its sample grid when one was written."""
        grid = run_directory.sample_grid_path(self.config.run_dir, record["step"])
        if self.started and grid.is_file():
            self._each("image", record["step"], SAMPLES_TAG, grid)
        self._write(record)

    def flush(self) -> None:
        """Before a checkpoint: every tracker's points so far on disk or sent."""
        self._each("flush")

    def _write(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        run_directory.append_record(self.metrics_file, record)
        if self.started:
            self._each("scalars", record["step"], record_scalars(record))

    def _each(self, method: str, *arguments: Any) -> None:
        """Call ``method`` on every started tracker. One that fails (its server gone, its disk
        full) is closed and dropped with a warning: the run goes on, and metrics.jsonl keeps
        every record."""
        for tracker in list(self.started):
            try:
                getattr(tracker, method)(*arguments)
            except Exception as error:
                logger.warning(
                    "the %s tracker failed (%s: %s); training goes on without it",
                    type(tracker).__name__, type(error).__name__, error,
                )  # fmt: skip
                self.started.remove(tracker)
                with contextlib.suppress(Exception):
                    tracker.close(succeeded=False)
