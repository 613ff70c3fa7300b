"""Build the Cython hot path (fastproxy/_core) with setuptools.

`FASTPROXY_DEBUG=1` builds with line tracing and writes annotated HTML (make debug).
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTPROXY_DEBUG") == "1"

macros = [("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []
cflags = ["-O0", "-g"] if DEBUG else ["-O3"]

extensions = [
    Extension(
        f"fastproxy._core.{name}",
        [f"fastproxy/_core/{name}.pyx"],
        define_macros=macros,
        extra_compile_args=cflags,
    )
    for name in ("http1", "proxy")
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        annotate=DEBUG,
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": False,
            "cdivision": True,
            "linetrace": DEBUG,
            "embedsignature": True,
        },
    )
)
