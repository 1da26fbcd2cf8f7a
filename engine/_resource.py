"""The shape the stores share: ``Store.open(path)`` as an alias of the constructor, ``path``,
and use as a context manager that closes on exit."""

from __future__ import annotations

import os
from typing import Any, Self


class Resource:
    _path: str

    @classmethod
    def open(cls, path: str | os.PathLike[str], **kwargs: Any) -> Self:
        """``cls(path, **kwargs)``: reads well as ``with Store.open(path) as store:``."""
        return cls(path, **kwargs)

    @property
    def path(self) -> str:
        """The path the store was opened with."""
        return self._path

    def close(self) -> None:  # pragma: no cover - every store defines it
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
