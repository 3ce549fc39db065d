"""``python -m pcmci`` (and ``torchrun -m pcmci``) runs the command line."""
import sys

from pcmci.cli import main

sys.exit(main())
