"""``python -m tokenbench``: the command line, as launchers start it (``accelerate launch -m tokenbench compare ...``)."""

import sys

from tokenbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
