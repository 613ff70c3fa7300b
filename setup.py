"""Build the Cython hot path (fastproxy/_core) with setuptools.

`FASTPROXY_DEBUG=1` builds with line tracing and writes annotated HTML (make debug).
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTPROXY_DEBUG") == "1"

macros = [("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []
cflags = ["-O0", "-g"] if DEBUG else ["-O3"]

# tls links libssl: the same library Python's own ssl module loads (checked at import)
LIBRARIES = {"tls": ["ssl", "crypto"]}

if not os.path.exists("/usr/include/openssl/ssl.h") and not os.environ.get("CFLAGS"):
    print("warning: OpenSSL headers not found in /usr/include/openssl: install libssl-dev "
          "(Debian) or set CFLAGS to their -I path")

extensions = [
    Extension(
        f"fastproxy._core.{name}",
        [f"fastproxy/_core/{name}.pyx"],
        define_macros=macros,
        extra_compile_args=cflags,
        libraries=LIBRARIES.get(name, []),
    )
    for name in ("http1", "hpack", "http2", "tls", "proxy")
]

setup(
    # the five modules compile side by side (pip install ., the image's build stage)
    options={"build_ext": {"parallel": os.cpu_count() or 1}},
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
