"""Build script for Meridian.

The C sources in native/ are compiled by cffi at install time into the top-level extension module
``_meridian_native`` (top level so that the same source tree works whether the package was
installed normally or in editable mode). Python code reaches it only through ``engine._native``.
"""

from setuptools import setup

VERSION = "0.1.0"

setup(
    name="meridian-db",
    version=VERSION,
    description="A globally distributed transactional key-value database (Raft + OCC + MVCC on LMDB)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=["engine", "raft", "bench", "bench.peers"],
    package_data={"engine": ["py.typed"]},
    cffi_modules=["native/build.py:ffibuilder"],
    install_requires=[
        "cffi>=1.15",
        "lmdb>=1.4",
        "msgpack>=1.0",
        # Below 0.25: from 0.25 on, nurseries group every exception that leaves them by
        # default (strict exception groups), and the engine and raft packages still rely on a
        # lone exception leaving a nursery as itself.
        "trio>=0.22,<0.25",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-trio>=0.8",
            "hypothesis>=6.80",
            # The power-loss tests' FUSE layer (bench/lossyfs.py), over Debian's libfuse3.
            "mfusepy>=3.0",
            # The benchmark harness's own tests draw its plots and check its latency
            # histograms, so CI needs the two packages of the "bench" extra as well.
            "matplotlib>=3.5",
            "hdrhistogram>=0.10",
        ],
        # python -m bench ycsb / scale / compare: HdrHistogram for latency percentiles that
        # merge across load processes without keeping samples, matplotlib for the PNG plots.
        "bench": [
            "matplotlib>=3.5",
            "hdrhistogram>=0.10",
        ],
    },
    entry_points={"console_scripts": ["meridian = engine.cli:main"]},
    zip_safe=False,
)
