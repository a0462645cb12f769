"""Name → factory registries for tasks, backends and interventions, with did-you-mean errors.

Built-in entries register themselves exactly as a third-party plugin would: with the
``register`` decorator of the matching registry. Heavy dependencies are imported lazily
inside the factories, so ``import fixable`` stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fixable.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A typed mapping from a name to a factory, filled by the ``register`` decorator."""

    def __init__(self, kind: str, builtin_modules: tuple[str, ...] = ()):
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._builtin_modules = builtin_modules
        self._loaded = False

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories and self._factories[name] is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorator

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._builtin_modules:
                importlib.import_module(module)

    def get(self, name: str) -> Callable[..., T]:
        self._load_builtins()
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._factories) from None

    def create(self, name: str, *args, **kwargs) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        self._load_builtins()
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


tasks: Registry = Registry("task", ("fixable.tasks",))
backends: Registry = Registry("backend", ("fixable.backends",))
