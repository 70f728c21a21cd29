# A plain setup.py (no pyproject.toml) installs offline with the interpreter's
# bundled setuptools: these machines reach no Python package index.
from setuptools import setup

setup(name="greetlib", version="1.0.0", packages=["greetlib"])
