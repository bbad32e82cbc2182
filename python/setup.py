"""The optional C module (memcuda._speedups): built where a C compiler and
Python's headers are at hand, left out (pure Python, same results) where not."""
from setuptools import Extension, setup

setup(
    ext_modules=[Extension("memcuda._speedups", ["memcuda/_speedups.c", "memcuda/_mapping.c"], depends=["memcuda/_mapping.h"],
                           libraries=["dl"], py_limited_api=True, optional=True,
                           define_macros=[("Py_LIMITED_API", "0x03090000")])],
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
