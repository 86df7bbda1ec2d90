"""``python -m pix2pix`` runs the command line."""

import sys

from pix2pix.cli import main

sys.exit(main())
