"""The one root of vsbench's domain errors.

Process edges (the CLI, each server's `main`) catch `VsbenchError` alone and print one line: it
means "the input, the configuration or a service outside us is wrong, and here is what to do".
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class VsbenchError(Exception):
    """A problem the user can act on; its message is the whole story (no traceback needed)."""


class ConfigError(VsbenchError, ValueError):
    """A setting, option or file named in the configuration that cannot be used as given."""


class ServeError(VsbenchError, OSError):
    """A server cannot start serving (the address is taken, a TLS file is unreadable)."""
