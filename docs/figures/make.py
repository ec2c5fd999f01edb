"""Regenerate the figures that docs/examples.md shows, by running the examples themselves:

    .venv/bin/python docs/figures/make.py

optimizers.png comes from examples/optimizers.py; babysit/*.png from examples/babysit.py in its
quick mode on scikit-learn's 8×8 digits (on MNIST the same script draws the same plots). The
PNGs are committed (as 256-colour palettes, a quarter of the size), so that `mkdocs build`
needs no training.
"""
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def run(*args):
    subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, check=True,
                   env={**os.environ, "MPLBACKEND": "Agg"})


def shrink(png: Path):
    """Rewrite a PNG as a 256-colour palette image (plots have few colours; no visible loss)."""
    from PIL import Image   # installed with matplotlib
    with Image.open(png) as image:
        small = image.convert("RGB").quantize(256)
    small.save(png, optimize=True)


if __name__ == "__main__":
    run("examples/optimizers.py", "--out", HERE / "optimizers.png")
    run("examples/babysit.py", "--dataset", "digits", "--epochs", "2", "--members", "3",
        "--trials", "8", "--out", HERE / "babysit")
    (HERE / "babysit" / "summary.json").unlink(missing_ok=True)
    for png in sorted(HERE.rglob("*.png")):
        shrink(png)
