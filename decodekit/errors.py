"""Errors a user can act on. Each message names what was wrong and where."""


class DecodekitError(Exception):
    """Base class: the CLI prints these as one line and exits with status 2."""


class ConfigError(DecodekitError):
    """A pipeline file or option is invalid (unknown plugin, unknown option, wrong type)."""


class PluginError(DecodekitError):
    """A plugin raised inside a hook; the message names the plugin and the hook."""

    def __init__(self, plugin: str, hook: str, error: BaseException):
        self.plugin, self.hook, self.error = plugin, hook, error
        super().__init__(f"plugin {plugin!r} failed in hook {hook!r}: {type(error).__name__}: {error}")


class ModelNotFoundError(DecodekitError):
    """A model alias or path that cannot be resolved to local files."""


class NoAllowedTokenError(DecodekitError):
    """The masks leave no token allowed at some position."""
