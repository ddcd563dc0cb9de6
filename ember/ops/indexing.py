"""Indexing (``x[key]`` and ``x[key] = value``) — being written."""

from __future__ import annotations

from typing import Any


def getitem(x: Any, key: Any) -> Any:
    raise NotImplementedError("indexing is being written")


def setitem(x: Any, key: Any, value: Any) -> None:
    raise NotImplementedError("indexing is being written")
