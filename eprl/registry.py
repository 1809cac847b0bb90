"""One registry type for every named choice (losses, advantages, entropy controls, agents, engines, ...).

    LOSSES = Registry("policy loss", group="eprl.losses")
    LOSSES.register("ppo", ppo_loss)                     # an object
    LOSSES.register("mine", "my_pkg.losses:my_loss")     # or "module:attr", imported on first get (as gymnasium.make)
    @LOSSES.register("other")                            # or as a decorator
    def other_loss(...): ...
    LOSSES.get("ppo"); LOSSES.names(); "ppo" in LOSSES

Installed packages add entries through the entry-point group (`[project.entry-points."eprl.losses"]
mine = "my_pkg.losses:my_loss"`), read once, on the first lookup; an entry point never replaces a name
registered in code. A registry behaves as a read-only mapping (`REG[name]`, `sorted(REG)`), as the plain
dicts it replaces did.
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterator, TypeVar, overload

from eprl.errors import ConfigError

T = TypeVar("T")


class UnknownNameError(ConfigError):
    """A name that is not registered; the message lists the registered ones."""


def load_target(target: str) -> Any:
    """'pkg.module:attr.sub' -> the object (the format of entry points and gymnasium ids)."""
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Names -> objects (or lazily imported "module:attr" strings), plus an entry-point group."""

    def __init__(self, kind: str, group: str | None = None):
        self.kind = kind  # what a name names, for messages: "policy loss", "engine", ...
        self.group = group  # entry-point group that installed packages add to (None: code only)
        self._entries: dict[str, T | str] = {}
        self._scanned = group is None

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, value: T | str) -> T | str: ...

    def register(self, name: str, value: Any = None) -> Any:
        """Register `value` under `name` (re-registering replaces it); without a value, a decorator."""
        if value is None:

            def deco(obj: T) -> T:
                self._entries[name] = obj
                return obj

            return deco
        self._entries[name] = value
        return value

    def _scan(self) -> None:
        if self._scanned or self.group is None:
            return
        self._scanned = True
        for ep in entry_points(group=self.group):
            if ep.name in self._entries:
                warnings.warn(
                    f"eprl: entry point {ep.name!r} ({ep.value}) of group {self.group!r} ignored: "
                    f"{self.kind} {ep.name!r} is registered already",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            self._entries[ep.name] = ep.value  # "module:attr": imported on first get

    def names(self) -> list[str]:
        self._scan()
        return sorted(self._entries)

    def check(self, name: str) -> str:
        """`name` if registered, else UnknownNameError naming the registered ones (config validation)."""
        if name not in self:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}")
        return name

    def get(self, name: str) -> T:
        value: Any = self._entries[self.check(name)]
        if isinstance(value, str):
            try:
                value = load_target(value)
            except (ImportError, AttributeError) as err:
                raise ConfigError(f"{self.kind} {name!r}: cannot load {value!r}: {err}") from err
            self._entries[name] = value
        return value

    # read-only mapping protocol, as the dicts this replaces
    def __contains__(self, name: object) -> bool:
        self._scan()
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r}, names={self.names()})"
