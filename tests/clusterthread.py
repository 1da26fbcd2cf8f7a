"""A cluster running in a background thread, for tests of code that does not use trio."""

from __future__ import annotations

import threading

import trio

from engine.local import open_local_cluster

__all__ = ["ClusterThread"]


class ClusterThread:
    """Runs ``open_local_cluster`` in its own thread and trio loop until :meth:`stop`."""

    def __init__(self, regions=("us-east",), nodes_per_region=1, seed=11) -> None:
        self._args = (tuple(regions), nodes_per_region, seed)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.addresses: list[str] = []
        self._thread = threading.Thread(target=self._run, name="test-cluster")

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        regions, nodes_per_region, seed = self._args
        async with open_local_cluster(regions, nodes_per_region, seed=seed) as cluster:
            self.addresses = cluster.client_addresses()
            self._ready.set()
            await trio.to_thread.run_sync(self._stop.wait)

    def start(self) -> list[str]:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self.addresses

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
