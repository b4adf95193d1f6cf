"""``python -m tokenbench``: the command line, as launchers start it (``accelerate launch -m tokenbench compare ...``)."""

from tokenbench.cli import run

if __name__ == "__main__":
    run()
