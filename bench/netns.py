"""Network namespaces for real multi-address clusters on one machine (FAULTS.md §3).

:class:`NetnsLab` builds a private network: a hub namespace holding a Linux bridge, and one
namespace per member (a node or a client), each with its own address on the bridge's subnet and
a veth pair to the hub. Processes are started inside a member's namespace with
``ip netns exec``. Nothing touches the machine's own network namespace, and every address used
lives inside namespaces the lab created. Setup is idempotent (leftovers of an earlier run with
the same prefix are removed first) and :meth:`NetnsLab.close` removes everything, also after a
failure. Needs root and iproute2.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence

__all__ = ["NetnsLab", "netns_available"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def netns_available() -> str | None:
    """None if namespaces can be made here; otherwise why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip command is not installed"
    probe = f"mprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"cannot create a network namespace: {exc.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class NetnsLab:
    """A hub with a bridge and one namespace per member.

    Args:
        prefix: names every namespace and interface (short: interface names have 15
            characters at most).
        members: member names (``"n1"``, ``"client"``, ...), in the order addresses are given.
        subnet: the first three octets of the private /24 (``10.77.0``); member ``i`` gets
            ``.{10 + i}``.
    """

    def __init__(self, prefix: str, members: Sequence[str], subnet: str = "10.77.0") -> None:
        if not prefix.isalnum() or len(prefix) > 6:
            raise ValueError("prefix: at most 6 letters or digits")
        self.prefix = prefix
        self.subnet = subnet
        self.members = list(members)
        self.hub = f"{prefix}-hub"
        self.addresses = {m: f"{subnet}.{10 + i}" for i, m in enumerate(self.members)}
        self._procs: list[subprocess.Popen] = []

    def ns(self, member: str) -> str:
        return f"{self.prefix}-{member}"

    def port(self, member: str) -> str:
        """The name of ``member``'s veth end in the hub (its port on the bridge)."""
        return f"{self.prefix}{self.members.index(member)}b"

    def hub_run(self, argv: Sequence[str], *, input: str | None = None,
                timeout: float = 30) -> subprocess.CompletedProcess:
        """Runs ``argv`` (``nft ...``, ``ip ...``) inside the hub namespace, where the bridge
        is: the place to cut, slow or drop traffic between members."""
        return subprocess.run(["ip", "netns", "exec", self.hub, *argv], input=input,
                              capture_output=True, text=True, timeout=timeout)

    def set_port(self, member: str, up: bool) -> None:
        """Takes ``member``'s bridge port down (cut off from every other member) or up."""
        _ip("-n", self.hub, "link", "set", self.port(member), "up" if up else "down")

    def setup(self) -> None:
        self.close()  # leftovers of an earlier run
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        _ip("-n", self.hub, "link", "set", "lo", "up")
        for i, member in enumerate(self.members):
            ns = self.ns(member)
            inner, outer = f"{self.prefix}{i}a", f"{self.prefix}{i}b"
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "add", inner, "type", "veth", "peer", "name", outer,
                "netns", self.hub)
            _ip("-n", ns, "addr", "add", f"{self.addresses[member]}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", self.hub, "link", "set", outer, "master", "br0")
            _ip("-n", self.hub, "link", "set", outer, "up")

    def popen(self, member: str, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Starts ``argv`` inside ``member``'s namespace; the lab stops it on close."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(member), *argv], **kwargs)
        self._procs.append(proc)
        return proc

    def run(self, member: str, argv: Sequence[str], timeout: float,
            **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns(member), *argv],
                              timeout=timeout, **kwargs)

    def close(self) -> None:
        """Stops the lab's processes (SIGTERM, then SIGKILL) and deletes its namespaces."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        for ns in self.leftover_namespaces():
            _ip("netns", "del", ns, check=False)

    def leftover_namespaces(self) -> list[str]:
        """The namespaces named with this lab's prefix that exist now."""
        listed = _ip("netns", "list", check=False).stdout.split("\n")
        return [line.split()[0] for line in listed
                if line.strip() and line.split()[0].startswith(f"{self.prefix}-")]

    def namespace_pids(self, ns: str) -> list[int]:
        """The processes inside namespace ``ns`` (``ip netns pids``)."""
        out = _ip("netns", "pids", ns, check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def __enter__(self) -> NetnsLab:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
