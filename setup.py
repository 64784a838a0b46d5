"""Packaging: `kernels/` installs as `seqtune.kernels` and `profiles/` as `seqtune.profiles`.

A setup.py (rather than a static package list) so that a new kernel folder under kernels/ is
packaged without anyone editing a list.
"""
from setuptools import find_packages, setup

kernel_packages = ["seqtune.kernels"] + [f"seqtune.kernels.{p}" for p in find_packages("kernels")]
setup(
    packages=find_packages(include=["seqtune", "seqtune.*"]) + kernel_packages + ["seqtune.profiles"],
    package_dir={"seqtune.kernels": "kernels", "seqtune.profiles": "profiles"},
    package_data={"seqtune.profiles": ["*.yaml"]},
)
