"""Plugin discovery (entry points), built-ins, and the registry of named factories and models.

Environment:

* ``DECODEKIT_DISABLE_PLUGIN_AUTOLOAD=1``: load no third-party plugin from entry points (the
  built-ins are always there).
* ``DECODEKIT_LOAD_PLUGINS=a,b``: load exactly these entry points of the ``decodekit`` group (an
  allowlist; it wins over the off switch). An empty value loads none.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy
from pydantic import BaseModel, ConfigDict

from decodekit import hookspecs
from decodekit.errors import ConfigError, PluginError

ENTRY_POINT_GROUP = "decodekit"
BUILTIN_MODULES = (
    "decodekit.builtins.greedy",
    "decodekit.builtins.sampling",
    "decodekit.builtins.beam",
    "decodekit.builtins.models",
)


class NoOptions(BaseModel):
    """Options model for plugins that take none."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class PluginInfo:
    """A registered factory: what ``name:`` in a pipeline refers to."""

    name: str
    factory: Callable[..., Any]
    options: type[BaseModel]
    kind: str
    description: str
    provider: str  # the pluggy plugin (module) that registered it
    distribution: str = "decodekit"
    version: str = ""
    hooks: list[str] = field(default_factory=list)


@dataclass
class ModelInfo:
    alias: str
    loader: Callable[..., Any]
    description: str
    provider: str


def _env_allowlist() -> list[str] | None:
    raw = os.environ.get("DECODEKIT_LOAD_PLUGINS")
    if raw is None:
        return None
    return [n.strip() for n in raw.split(",") if n.strip()]


def make_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager with the hookspecs, the built-ins, and the allowed entry-point plugins."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for mod in BUILTIN_MODULES:
        pm.register(importlib.import_module(mod), name=mod)
    allow = _env_allowlist()
    if allow is not None:
        for name in allow:
            try:
                loaded = pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
            except Exception as e:
                raise PluginError(name, "load", e) from e
            if not loaded and pm.get_plugin(name) is None:
                raise ConfigError(
                    f"DECODEKIT_LOAD_PLUGINS names {name!r}, but no installed distribution has an "
                    f"entry point {name!r} in group {ENTRY_POINT_GROUP!r} (see `decodekit plugins`)"
                )
    elif os.environ.get("DECODEKIT_DISABLE_PLUGIN_AUTOLOAD", "") not in ("1", "true", "yes"):
        # one entry point at a time, so that a broken plugin is named in the error
        for ep in sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}):
            try:
                pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep)
            except Exception as e:
                raise PluginError(ep, "load", e) from e
    return pm


class Registry:
    """Named plugin factories and model aliases collected from every plugin's register hooks."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.plugins: dict[str, PluginInfo] = {}
        self.models: dict[str, ModelInfo] = {}
        dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
        for impl in pm.hook.register_plugins.get_hookimpls():
            dist = dists.get(id(impl.plugin))
            self._collect_plugins(impl, dist)
        for impl in pm.hook.register_models.get_hookimpls():
            self._collect_models(impl)
        self.rewards: dict[str, PluginInfo] = {}
        for impl in pm.hook.register_rewards.get_hookimpls():
            self._collect_rewards(impl, dists.get(id(impl.plugin)))

    def _collect_plugins(self, impl: pluggy.HookImpl, dist: Any) -> None:
        def register(name: str, factory: Callable[..., Any], *, options: type[BaseModel] | None = None,
                     kind: str = "plugin", description: str = "") -> None:
            if kind not in ("plugin", "strategy"):
                raise ValueError(f"kind must be 'plugin' or 'strategy', not {kind!r}")
            if name in self.plugins:
                other = self.plugins[name].provider
                raise ConfigError(f"plugin name {name!r} is registered twice: by {other!r} and by {impl.plugin_name!r}")
            self.plugins[name] = PluginInfo(
                name=name, factory=factory, options=options or NoOptions, kind=kind,
                description=description or (factory.__doc__ or "").strip().split("\n")[0],
                provider=impl.plugin_name,
                distribution=dist.project_name if dist is not None else "decodekit",
                version=dist.version if dist is not None else _host_version(),
                hooks=[h for h in hookspecs.HOOK_NAMES  # pluggy < 1.6 raises for a missing attribute
                       if hasattr(factory, h) and self.pm.parse_hookimpl_opts(factory, h) is not None],
            )

        try:
            impl.function(register)
        except ConfigError:
            raise
        except Exception as e:
            raise PluginError(impl.plugin_name, "register_plugins", e) from e

    def _collect_models(self, impl: pluggy.HookImpl) -> None:
        def register(alias: str, loader: Callable[..., Any], *, description: str = "") -> None:
            self.models[alias] = ModelInfo(alias, loader, description, impl.plugin_name)

        try:
            impl.function(register)
        except Exception as e:
            raise PluginError(impl.plugin_name, "register_models", e) from e

    def _collect_rewards(self, impl: pluggy.HookImpl, dist: Any) -> None:
        def register(name: str, factory: Callable[..., Any], *, options: type[BaseModel] | None = None,
                     description: str = "") -> None:
            if name in self.rewards:
                raise ConfigError(f"reward name {name!r} is registered twice")
            self.rewards[name] = PluginInfo(
                name=name, factory=factory, options=options or NoOptions, kind="reward",
                description=description, provider=impl.plugin_name,
                distribution=dist.project_name if dist is not None else "decodekit",
                version=dist.version if dist is not None else _host_version(),
            )

        try:
            impl.function(register)
        except ConfigError:
            raise
        except Exception as e:
            raise PluginError(impl.plugin_name, "register_rewards", e) from e

    def get_reward(self, name: str) -> PluginInfo:
        if name not in self.rewards:
            raise ConfigError(f"unknown reward {name!r}; known: {', '.join(sorted(self.rewards)) or '(none)'}")
        return self.rewards[name]

    def get(self, name: str, kind: str = "plugin") -> PluginInfo:
        info = self.plugins.get(name)
        if info is None or info.kind != kind:
            known = sorted(n for n, i in self.plugins.items() if i.kind == kind)
            what = "decoding strategy" if kind == "strategy" else "plugin"
            raise ConfigError(f"unknown {what} {name!r}; known: {', '.join(known) or '(none)'}")
        return info


def _host_version() -> str:
    from decodekit import __version__

    return __version__


_registry: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry (built on first use; ``refresh=True`` re-reads the environment)."""
    global _registry
    if _registry is None or refresh:
        _registry = Registry(make_plugin_manager())
    return _registry
