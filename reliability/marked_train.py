"""``pix2pix train`` that announces each checkpoint phase on stdout, so a test can kill it there.

Run as ``python reliability/marked_train.py train --config FILE ...`` (the same arguments as
``pix2pix``). Before each phase it prints ``PHASE <name> <path>`` and then pauses for
``PIX2PIX_PHASE_PAUSE_S`` seconds (default 0), which gives a parent process time to send
SIGKILL while the checkpoint is in exactly that state:

- ``tensors-written``: a weights file is complete in its temp file, not yet renamed; the
  checkpoint folder is still a hidden temp folder (a kill "during a checkpoint write").
- ``folder-renamed``: the new checkpoint folder is in place, ``latest`` still names the old one.
- ``latest-published``: ``latest`` names the new checkpoint; old step folders not yet removed.

Pausing changes no random state, so a marked run trains exactly like ``pix2pix train``.
"""

from __future__ import annotations

import os
import sys
import time

import model.weights
import training.loop.checkpointing
from pix2pix.cli import main

PAUSE = float(os.environ.get("PIX2PIX_PHASE_PAUSE_S", "0"))


def announce(phase: str, detail: object) -> None:
    print(f"PHASE {phase} {detail}", flush=True)
    if PAUSE:
        time.sleep(PAUSE)


def install_markers() -> None:
    real_save_file = model.weights.save_file
    real_write_folder = training.loop.checkpointing.write_checkpoint_folder
    real_publish = training.loop.checkpointing.publish_latest

    def save_file(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        announce("tensors-written", filename)

    def write_checkpoint_folder(checkpoints, name, writer):
        folder = real_write_folder(checkpoints, name, writer)
        announce("folder-renamed", folder)
        return folder

    def publish_latest(checkpoints, name):
        real_publish(checkpoints, name)
        announce("latest-published", name)

    model.weights.save_file = save_file
    training.loop.checkpointing.write_checkpoint_folder = write_checkpoint_folder
    training.loop.checkpointing.publish_latest = publish_latest


if __name__ == "__main__":
    install_markers()
    sys.exit(main(sys.argv[1:]))
