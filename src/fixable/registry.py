"""Name → factory registries for tasks, backends and interventions, with did-you-mean errors.

Built-in entries register themselves exactly as a third-party plugin would: with the
``register`` decorator of the matching registry. Heavy dependencies are imported lazily
inside the factories, so ``import fixable`` stays cheap.

Third-party packages add entries without editing fixable, through entry points in the
groups ``fixable.backends`` and ``fixable.tasks`` (``pyproject.toml``)::

    [project.entry-points."fixable.backends"]
    mybackend = "my_package.backend:MyBackend"

The entry point's name is the registry name and its object the factory. Plug-ins are
loaded with the built-ins, on the first lookup; one that fails to load is logged and
skipped, so a broken plug-in never breaks the commands that do not use it.
``fixable.testing`` checks that a plug-in keeps the contract.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fixable.errors import UnknownNameError

T = TypeVar("T")
logger = logging.getLogger(__name__)


class Registry(Generic[T]):
    """A typed mapping from a name to a factory, filled by the ``register`` decorator."""

    def __init__(
        self, kind: str, builtin_modules: tuple[str, ...] = (), entry_point_group: str = ""
    ):
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._builtin_modules = builtin_modules
        self._entry_point_group = entry_point_group
        self._plugins: dict[str, str] = {}  # name → "distribution version" of plug-in entries
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
            if self._entry_point_group:
                self._load_plugins()

    def _load_plugins(self) -> None:
        for point in importlib.metadata.entry_points(group=self._entry_point_group):
            dist = f"{point.dist.name} {point.dist.version}" if point.dist else "unknown"
            try:
                factory = point.load()
            except Exception as e:  # a broken plug-in must not break the others
                logger.warning(
                    "%s plug-in %r (%s) failed to load and is skipped: %s",
                    self.kind,
                    point.name,
                    dist,
                    e,
                )
                continue
            if point.name in self._factories and self._factories[point.name] is not factory:
                logger.warning(
                    "%s plug-in %r (%s) is skipped: the name is taken by %r",
                    self.kind,
                    point.name,
                    dist,
                    self._factories[point.name],
                )
                continue
            self._factories[point.name] = factory
            self._plugins[point.name] = dist

    def origin(self, name: str) -> str:
        """Where an entry comes from: ``"built-in"`` or the plug-in's distribution."""
        self.get(name)
        return self._plugins.get(name, "built-in")

    def reload(self) -> None:
        """Look for plug-ins again (after a package was installed in this process)."""
        for name in list(self._plugins):
            del self._factories[name]
        self._plugins.clear()
        self._loaded = False

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


tasks: Registry = Registry("task", ("fixable.tasks",), "fixable.tasks")
backends: Registry = Registry("backend", ("fixable.backends",), "fixable.backends")
