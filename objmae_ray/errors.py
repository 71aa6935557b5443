"""User-facing errors: one line naming the file or field and the reason."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config, search-space file or dataset path that cannot be used ("<where>: <reason>")."""
