"""The backbone registry: built-ins, registered calls, entry-point plugins, timm.

Lookups go: built-in or registered name, then the ``dogclf.backbones`` entry
points (loaded only when a name is missed or a listing is asked for), then
``timm/<model>``. Entry points name a factory that returns a
:class:`~dogclf.backbones.spec.BackboneSpec`; the registry validates it, checks
the name, and records which distribution supplied it.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import threading
from collections.abc import Callable, Iterable

from dogclf._sorting import natural_key
from dogclf.backbones.spec import BackboneSpec, validate_spec
from dogclf.backbones.timm_backbones import PREFIX as TIMM_PREFIX
from dogclf.backbones.timm_backbones import timm_spec
from dogclf.backbones.torchvision_backbones import builtin_specs
from dogclf.errors import DuplicateBackboneError, InvalidBackboneSpecError, UnknownBackboneError

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackboneRegistry",
    "default_registry",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]

ENTRY_POINT_GROUP = "dogclf.backbones"

EntryPointsFn = Callable[[str], Iterable[importlib.metadata.EntryPoint]]


def _entry_points(group: str) -> Iterable[importlib.metadata.EntryPoint]:
    """The one seam through which dogclf reads installed entry points."""
    return importlib.metadata.entry_points(group=group)


def _dist_label(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return f"entry point {entry_point.value!r}"
    return f"{dist.metadata['Name']} {dist.version}"


class BackboneRegistry:
    """Maps backbone names to specs.

    Args:
        entry_points: Returns the entry points of a group; tests inject fakes here.
        group: The entry-point group to read plugins from.
        builtins: Whether to start with dogclf's built-in backbones.
    """

    def __init__(
        self,
        *,
        entry_points: EntryPointsFn = _entry_points,
        group: str = ENTRY_POINT_GROUP,
        builtins: bool = True,
    ) -> None:
        self._entry_points = entry_points
        self._group = group
        self._specs: dict[str, BackboneSpec] = {}
        self._plugins_loaded = False
        self._lock = threading.RLock()
        if builtins:
            for spec in builtin_specs():
                self._specs[spec.name] = spec

    def register(self, spec: BackboneSpec, *, override: bool = False, source: str = "register_backbone()") -> None:
        """Adds a backbone.

        Args:
            spec: The backbone to add.
            override: Replace an existing backbone of the same name instead of raising.
            source: Who registers it, named in errors and listings.

        Raises:
            DuplicateBackboneError: If the name is taken and ``override`` is false.
            InvalidBackboneSpecError: If the spec is not usable.
        """
        validate_spec(spec, where=source)
        with self._lock:
            existing = self._specs.get(spec.name)
            if existing is not None and not override:
                raise DuplicateBackboneError(
                    f"Backbone {spec.name!r} is already registered (by {existing.distribution or 'an earlier call'}); "
                    f"{source} tried to register it again. Pick another name, or pass override=True to replace it."
                )
            if not spec.distribution:
                spec = _with_distribution(spec, source)
            self._specs[spec.name] = spec

    def unregister(self, name: str) -> None:
        """Removes a registered backbone (tests and notebooks use this)."""
        with self._lock:
            self._specs.pop(name, None)

    def get(self, name: str) -> BackboneSpec:
        """Returns the spec called ``name``.

        Raises:
            UnknownBackboneError: Listing the known names.
        """
        with self._lock:
            if name in self._specs:
                return self._specs[name]
            if name.startswith(TIMM_PREFIX):
                return timm_spec(name)
            self._load_plugins()
            if name in self._specs:
                return self._specs[name]
            known = ", ".join(sorted(self._specs, key=natural_key))
            close = [n for n in self._specs if n.lower().startswith(name.lower()[:3])] if name else []
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownBackboneError(
                f"Unknown backbone {name!r}.{hint} Known backbones: {known}; or any timm model as "
                f"'timm/<model>'. Plugins add more through the {self._group!r} entry-point group "
                "(see `dogclf backbones`)."
            )

    def names(self, pattern: str = "*") -> list[str]:
        """Returns the known names matching a wildcard ``pattern``, naturally sorted."""
        with self._lock:
            self._load_plugins()
            return sorted((n for n in self._specs if fnmatch.fnmatchcase(n, pattern)), key=natural_key)

    def list(self, pattern: str = "*") -> list[BackboneSpec]:
        """Returns the specs whose names match ``pattern``, naturally sorted."""
        return [self._specs[n] for n in self.names(pattern)]

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        seen: dict[str, str] = {}
        loaded: dict[str, BackboneSpec] = {}
        for entry_point in self._entry_points(self._group):
            label = _dist_label(entry_point)
            if entry_point.name in seen:
                raise DuplicateBackboneError(
                    f"Two installed plugins provide backbone {entry_point.name!r}: {seen[entry_point.name]} and "
                    f"{label}. Uninstall one of them."
                )
            seen[entry_point.name] = label
            existing = self._specs.get(entry_point.name)
            if existing is not None:
                raise DuplicateBackboneError(
                    f"Plugin {label} provides backbone {entry_point.name!r} through entry point "
                    f"{entry_point.value!r}, but {existing.distribution or 'a registered backbone'} already has that "
                    "name. Rename the plugin's entry point, or uninstall the plugin."
                )
            where = f"plugin {label} (entry point {entry_point.name} = {entry_point.value})"
            try:
                factory = entry_point.load()
            except Exception as exc:
                raise InvalidBackboneSpecError(f"Could not import {where}: {type(exc).__name__}: {exc}") from exc
            if not callable(factory):
                raise InvalidBackboneSpecError(
                    f"{where} must name a factory function returning a BackboneSpec, got {type(factory).__name__}"
                )
            try:
                spec = factory()
            except Exception as exc:
                raise InvalidBackboneSpecError(f"{where} raised {type(exc).__name__}: {exc}") from exc
            spec = validate_spec(spec, where=where)
            if spec.name != entry_point.name:
                raise InvalidBackboneSpecError(
                    f"{where} returned a spec named {spec.name!r}; it must match the entry-point name "
                    f"{entry_point.name!r}."
                )
            loaded[spec.name] = _with_distribution(spec, label)
        # Only a complete, valid set is kept: after an error, the next lookup reports it again.
        self._specs.update(loaded)
        self._plugins_loaded = True


def _with_distribution(spec: BackboneSpec, distribution: str) -> BackboneSpec:
    import dataclasses

    return dataclasses.replace(spec, distribution=distribution)


_DEFAULT: BackboneRegistry | None = None
_DEFAULT_LOCK = threading.Lock()


def default_registry() -> BackboneRegistry:
    """Returns the process-wide registry, created on first use."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = BackboneRegistry()
        return _DEFAULT


def get_backbone(name: str) -> BackboneSpec:
    """Returns the backbone spec called ``name`` from the default registry."""
    return default_registry().get(name)


def list_backbones(pattern: str = "*") -> list[BackboneSpec]:
    """Returns every known backbone whose name matches the wildcard ``pattern``."""
    return default_registry().list(pattern)


def register_backbone(spec: BackboneSpec, *, override: bool = False) -> BackboneSpec:
    """Registers a backbone in the default registry and returns it.

    Args:
        spec: The backbone.
        override: Replace a backbone already registered under that name.
    """
    default_registry().register(spec, override=override)
    return default_registry().get(spec.name)
