"""Package discovery, the one part of the build pyproject.toml cannot say: every package under
dfer_cli/ is found (a module added later cannot be left out of the wheel), plus weights/ as
the data-only package dfer_weights, so `pip install .` predicts with the default weights."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["dfer_cli", "dfer_cli.*"]) + ["dfer_weights"],
      package_dir={"dfer_weights": "weights"})
