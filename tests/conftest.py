import os
import subprocess

import pytest

# Child processes the tests start import the same working tree as the tests themselves.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p
)


def pytest_addoption(parser):
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run the long variants marked @pytest.mark.slow",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long variant: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def lossy(tmp_path):
    """``lossy(unit=4096, kernel_cache=False)`` mounts a fresh LossyFS, or skips the test
    where FUSE is missing (unless MERIDIAN_REQUIRE_FUSE=1)."""
    from bench.lossyfs import LossyFS, LossyFSUnavailable, unavailable_reason

    reason = unavailable_reason()
    if reason is not None and os.environ.get("MERIDIAN_REQUIRE_FUSE") != "1":
        pytest.skip(f"LossyFS needs FUSE: {reason}")
    mounted = []

    def mount(unit: int = 4096, kernel_cache: bool = False):
        fs = LossyFS(tmp_path / f"fs{len(mounted)}", unit=unit, kernel_cache=kernel_cache)
        try:
            fs.start()
        except LossyFSUnavailable as exc:
            if os.environ.get("MERIDIAN_REQUIRE_FUSE") == "1":
                raise
            pytest.skip(f"LossyFS cannot mount here: {exc}")
        mounted.append(fs)
        return fs

    try:
        yield mount
    finally:
        for fs in mounted:
            fs.close()


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size="1m")`` mounts a fresh tmpfs of that size (a real ENOSPC once it is full),
    or skips the test where mounting is not allowed (root only)."""
    mounted = []

    def mount(size: str = "1m"):
        mnt = tmp_path / f"tmpfs{len(mounted)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                           capture_output=True, check=False)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(mnt)
        return mnt

    try:
        yield mount
    finally:
        for mnt in mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def ext4(tmp_path):
    """``ext4(size_mib=32)`` mounts a fresh ext4 file system made in a loop-mounted image, or
    skips the test where that is not allowed (root only). Unlike tmpfs, ext4 keeps what a
    ``posix_fallocate`` that runs out of space allocated before it failed."""
    mounted = []

    def mount(size_mib: int = 32):
        image = tmp_path / f"ext4-{len(mounted)}.img"
        mnt = tmp_path / f"ext4-{len(mounted)}"
        mnt.mkdir()
        with open(image, "wb") as f:
            f.truncate(size_mib << 20)
        for cmd in (["mkfs.ext4", "-q", "-F", str(image)],
                    ["mount", "-o", "loop", str(image), str(mnt)]):
            try:
                r = subprocess.run(cmd, capture_output=True, check=False)
            except FileNotFoundError as exc:
                pytest.skip(f"cannot make an ext4 file system here: {exc}")
            if r.returncode != 0:
                pytest.skip(f"cannot mount an ext4 image here: {r.stderr.decode().strip()}")
        mounted.append(mnt)
        return mnt

    try:
        yield mount
    finally:
        for mnt in mounted:
            subprocess.run(["umount", str(mnt)], check=False)
