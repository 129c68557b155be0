"""Typed settings set by name: every job's options are a dataclass, and a name it lacks is refused."""

from __future__ import annotations

from dataclasses import fields

from omnimill.errors import UserError


def with_overrides(options, overrides: dict):
    """Set typed options by name; an unknown name is refused with the list (a typo never passes silently)."""
    known = {f.name for f in fields(options)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown setting {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for k, v in overrides.items():
        setattr(options, k, v)
    return options
