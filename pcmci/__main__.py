"""``python -m pcmci`` (and ``torchrun -m pcmci``) runs the command line."""
import sys

from pcmci.cli import main

if __name__ == "__main__":  # not when multiprocessing's spawn re-imports the main module in a worker
    sys.exit(main())
