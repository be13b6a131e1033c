"""SIGHUP: which config keys a running daemon can take on, and which wait for a restart."""

from __future__ import annotations

from typing import Any

from edged.config import Settings

# Keys (dotted prefixes) that are fixed once the daemon runs: where things are, what is
# loaded and how, and what listens. Everything else is read afresh per job or per run.
RESTART_ONLY = (
    "state_dir", "spool_dir", "database",
    "model.path", "model.engine", "model.provider", "model.threads", "model.graph_optimization",
    "model.temperature", "model.top_k", "model.top_p", "model.seed", "model.options",
    "watch.polling", "watch.poll_interval_seconds", "watch.ignore", "spool.allow_hard_links",
    "log.format", "metrics.listen",
)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def changed_keys(old: Settings, new: Settings) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old, new) for every value that differs."""
    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def needs_restart(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in RESTART_ONLY)


def live_settings(old: Settings, new: Settings) -> Settings:
    """`new`, with the restart-only keys put back to what the running daemon uses."""
    merged = new.model_copy(deep=True)
    for key in RESTART_ONLY:
        section, _, name = key.partition(".")
        if name:
            setattr(getattr(merged, section), name, getattr(getattr(old, section), name))
        else:
            setattr(merged, section, getattr(old, section))
    merged.source = old.source
    return merged
