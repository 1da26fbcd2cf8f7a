"""cffi build script: compiles native/*.c into the extension module ``_meridian_native``.

The declarations given to cffi are read from the headers themselves (the part between
``BEGIN CDEF`` and ``END CDEF``), so the C and the Python view of the API cannot drift apart.
Run by setuptools through ``cffi_modules``; ``python native/build.py`` builds in place.
"""

import os
import re
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
HEADERS = ("crc32c.h", "logstore.h", "adjudicator.h", "syncer.h")
SOURCES = ("crc32c.c", "logstore.c", "adjudicator.c", "syncer.c")


def _cdef(header: str) -> str:
    with open(os.path.join(HERE, header), encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"/\* BEGIN CDEF \*/(.*?)/\* END CDEF \*/", text, re.S)
    if match is None:
        raise SystemExit(f"native/{header}: no BEGIN CDEF / END CDEF section")
    return match.group(1)


def _rel(name: str) -> str:
    # setuptools wants source paths relative to setup.py; cffi_modules runs from there.
    return os.path.relpath(os.path.join(HERE, name))


ffibuilder = FFI()
ffibuilder.cdef("\n".join(_cdef(h) for h in HEADERS))
ffibuilder.set_source(
    "_meridian_native",
    "\n".join(f'#include "{h}"' for h in HEADERS),
    sources=[_rel(s) for s in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-pthread"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.dirname(HERE), verbose="-v" in sys.argv)
