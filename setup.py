"""The optional C speedups of the recorder (traincheck_rewrite/runtime/_speedups.c); everything else is in
pyproject.toml. Without a C compiler the package installs and runs on its Python reference code."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("traincheck_rewrite.runtime._speedups", ["traincheck_rewrite/runtime/_speedups.c"], optional=True)])
