"""One small registry class, instantiated once per kind of part (models, samplers, fusers, layouts, ...).

A preset names each part by string; ``Registry.build(name, **kwargs)`` constructs it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from .errors import LesiondiffError


class Registry:
    """Maps names to factories (classes or functions).

    >>> SAMPLERS = Registry("sampler")
    >>> @SAMPLERS.register("ddim")
    ... def make_ddim(**kw): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = factory
            return factory

        return add

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._items[name]
        except KeyError:
            raise LesiondiffError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, /, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._items
