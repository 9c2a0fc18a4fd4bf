"""``KEY=VALUE`` command-line assignments (``--set``, ``--grid``), parsed one way for every tool."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from pruning_lightning.errors import ConfigError


def parse_assignments(
    items: Sequence[str],
    flag: str,
    multi: bool = False,
    reserved: Mapping[str, str] | None = None,
) -> list[tuple[str, list[str]]]:
    """``["pruning.steps=1,10"]`` -> ``[("pruning.steps", ["1", "10"])]``; ConfigError on typos.

    ``multi`` splits the value on commas (``--grid``); ``--set`` keeps it whole. A key in
    ``reserved`` is refused with the flag that sets it instead.
    """
    reserved = reserved or {}
    parsed: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
            raise ConfigError(
                f"{flag} {item!r} is not KEY=VALUE. Write e.g. {flag} pruning.steps="
                f"{'1,10,60' if multi else '10'} (the key is the CLI option without '--')."
            )
        if key in reserved:
            raise ConfigError(
                f"{flag} {key}=... clashes with the command itself: set it with {reserved[key]}."
            )
        if any(key == k for k, _ in parsed):
            raise ConfigError(f"{flag} names {key!r} twice. Give each key once.")
        values = [v.strip() for v in value.split(",")] if multi else [value]
        if any(v == "" for v in values):
            raise ConfigError(f"{flag} {item!r} has an empty value. Write e.g. {key}=1,10.")
        parsed.append((key, values))
    return parsed
