"""Calling a pipeline's hooks in its order, with errors attributed to the plugin that raised."""

from __future__ import annotations

from typing import Any

import pluggy

from decodekit import hookspecs
from decodekit.errors import ConfigError, DecodekitError, PluginError


class HookRunner:
    """The hooks of one pipeline's plugin instances, called in pipeline order.

    ``plugins`` is the ordered list of ``(name, plugin_object)``: the configured plugins in the
    pipeline file's order, then the decoding strategy. Each object is registered with a fresh
    pluggy ``PluginManager`` (which checks its hook implementations against the specs); calls go
    through pluggy's public ``HookImpl`` objects so that each result can be chained and each
    failure named.
    """

    def __init__(self, plugins: list[tuple[str, object]]):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.order = {name: i for i, (name, _) in enumerate(plugins)}
        for name, obj in plugins:
            try:
                self.pm.register(obj, name=name)
            except pluggy.PluginValidationError as e:
                msg = str(e).replace("\n", "; ")
                raise ConfigError(f"plugin {name!r} does not match the hook specs: {msg}") from None
        self._impls: dict[str, list[pluggy.HookImpl]] = {}
        for hook in hookspecs.HOOK_NAMES:
            impls = getattr(self.pm.hook, hook).get_hookimpls()
            self._impls[hook] = sorted(impls, key=lambda im: self.order[im.plugin_name])

    def implementers(self, hook: str) -> list[str]:
        return [im.plugin_name for im in self._impls[hook]]

    def has(self, hook: str) -> bool:
        return bool(self._impls[hook])

    @staticmethod
    def _call(impl: pluggy.HookImpl, hook: str, kwargs: dict[str, Any]) -> Any:
        try:
            return impl.function(*[kwargs[a] for a in impl.argnames])
        except DecodekitError:
            raise
        except Exception as e:  # attribute any plugin failure to its plugin and hook
            raise PluginError(impl.plugin_name, hook, e) from e

    def first(self, hook: str, **kwargs: Any) -> Any:
        """First non-None result, in pipeline order (firstresult hooks)."""
        for impl in self._impls[hook]:
            res = self._call(impl, hook, kwargs)
            if res is not None:
                return res
        return None

    def each(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Every plugin's ``(name, result)``, in pipeline order."""
        return [(impl.plugin_name, self._call(impl, hook, kwargs)) for impl in self._impls[hook]]

    def chain(self, hook: str, value_arg: str, **kwargs: Any) -> Any:
        """Feed ``kwargs[value_arg]`` through every plugin in order; None means unchanged."""
        for impl in self._impls[hook]:
            res = self._call(impl, hook, kwargs)
            if res is not None:
                kwargs[value_arg] = res
        return kwargs[value_arg]
