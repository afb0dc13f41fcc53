"""The one thing pyproject.toml cannot say without an experimental table: the compiled product_photo input recipe
for greyscale models (contract/_product_photo.c). It gives the same bytes as the numpy code in contract/recipes.py
at a sixth of its cost per photo served. Optional: without a C compiler the package installs without it and the
numpy code runs. No fused multiply-adds (-ffp-contract=off): they would round differently."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("contract._product_photo", ["contract/_product_photo.c"], optional=True,
                             extra_compile_args=["-O3", "-ffp-contract=off"])])
