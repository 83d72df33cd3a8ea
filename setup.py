"""The one thing pyproject.toml cannot say without setuptools' experimental table: envlock's optional C extension.

envlock/_sizecheck.c is the size check of `verify` as one C loop on threads. It is optional: where no C compiler
is, the build warns and goes on, and envlock checks sizes in Python (envlock/probes/sizes.py), with the same answer.
"""

import sys

from setuptools import Extension, setup

# POSIX threads: -pthread where the compiler is gcc or clang (a compiler without it fails, and the build goes on).
threads = [] if sys.platform == "win32" else ["-pthread"]
setup(ext_modules=[Extension("envlock._sizecheck", ["envlock/_sizecheck.c"], optional=True,
                             extra_compile_args=threads, extra_link_args=threads)])
