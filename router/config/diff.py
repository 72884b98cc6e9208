"""What would change between two configs: the documents key by key (dotted paths, values
as JSON), and where sample requests of both configs would route
(``router.core.samples``), so an SRE sees the effect, not just text."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from router.config.compile import format_loc
from router.config.settings import ResolvedConfig
from router.core.samples import Outcome, RequestChange, Routed, request_changes


class Change(enum.Enum):
    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """One change of the document. ``before``/``after`` are JSON values (what
    ``model_dump(mode="json")`` gives); the side a key is absent from is None, which
    ``change`` tells apart from an explicit null."""

    path: str
    change: Change
    before: Any
    after: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "change": self.change.value,
            "before": self.before, "after": self.after,
        }  # fmt: skip

    def __str__(self) -> str:
        if self.change is Change.ADDED:
            return f"+ {self.path}: {_show(self.after)}"
        if self.change is Change.REMOVED:
            return f"- {self.path}: {_show(self.before)}"
        return f"~ {self.path}: {_show(self.before)} -> {_show(self.after)}"


def _show(value: Any) -> str:
    """A value for people: JSON (``null``, ``"NO"``, ``[]``), on one line."""
    return json.dumps(value, ensure_ascii=False)


def document_changes(old: Any, new: Any, path: tuple[str | int, ...] = ()) -> list[ConfigChange]:
    """The differences between two JSON documents, most nested first: mappings key by
    key, lists of the same length item by item, a list that only grew or shrank at its
    end by the items added or removed there; anything else whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            here = (*path, key)
            if key not in new:
                out.append(ConfigChange(format_loc(here), Change.REMOVED, old[key], None))
            elif key not in old:
                out.append(ConfigChange(format_loc(here), Change.ADDED, None, new[key]))
            else:
                out += document_changes(old[key], new[key], here)
        return out
    if isinstance(old, list) and isinstance(new, list) and _itemwise(old, new):
        out = []
        for i in range(max(len(old), len(new))):
            at = format_loc((*path, i))
            if i >= len(new):
                out.append(ConfigChange(at, Change.REMOVED, old[i], None))
            elif i >= len(old):
                out.append(ConfigChange(at, Change.ADDED, None, new[i]))
            else:
                out += document_changes(old[i], new[i], (*path, i))
        return out
    if _same(old, new):
        return []
    return [ConfigChange(format_loc(path), Change.CHANGED, old, new)]


def _same(old: Any, new: Any) -> bool:
    """Equal as JSON: Python's ``False == 0`` and ``1 == 1.0`` are changes here."""
    return json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True)


def _itemwise(old: list[Any], new: list[Any]) -> bool:
    """Whether two lists read best item by item: lists of mappings (rules, clusters) of
    the same length, or where one is the other plus items at the end (a rule appended).
    A list of names (countries, workflow types) reads best whole."""
    if not any(isinstance(x, dict) for x in (*old, *new)):
        return False
    n = min(len(old), len(new))
    return len(old) == len(new) or old[:n] == new[:n]


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, Routed):
        return {
            "zone": outcome.zone, "region": outcome.region, "cluster": outcome.cluster,
            "namespace": outcome.namespace, "task_queue": outcome.task_queue,
            "rule": outcome.rule,
        }  # fmt: skip
    return {"refused": outcome.kind.value, "message": outcome.message}


def request_change_json(change: RequestChange) -> dict[str, Any]:
    req = change.request
    return {
        "requests": change.requests,
        "request": {
            "user_country": req.user_country, "user_subdivision": req.user_subdivision,
            "data_classes": [dc.value for dc in change.data_classes],
            "tenant_id": req.tenant_id, "workflow_type": req.workflow_type,
            "priority": req.priority.value,
        },
        "before": outcome_json(change.before),
        "after": outcome_json(change.after),
        "summary": change.change(),
    }  # fmt: skip


def diff(
    old: ResolvedConfig, new: ResolvedConfig
) -> tuple[list[ConfigChange], tuple[RequestChange, ...]]:
    return (
        document_changes(
            old.document.model_dump(mode="json"), new.document.model_dump(mode="json")
        ),
        request_changes(old.table, new.table),
    )
