"""Base of every config model, and setting a value by key path in a raw config tree."""

from typing import Any

from pydantic import BaseModel, ConfigDict

from lathe.core.errors import ConfigError


class Strict(BaseModel):
    """Base model: unknown keys are errors, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid")


def set_key_path(tree: dict[str, Any], parts: list[str], value: Any, what: str) -> None:
    """Set ``tree[parts[0]][parts[1]]... = value`` (list items by index), making sections as needed;
    ``what`` names the setting in the one-line error (``override 'a.b=1'``)."""
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{what}: {where} is not an index of a {len(node)}-item list")
            idx = int(part)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"{what}: {'.'.join(parts[:i])} is a value, not a section")
