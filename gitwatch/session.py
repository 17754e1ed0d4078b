"""The watch protocol's messages, and one socket's view of its workspace.

The hub (hub.py) scans a workspace once for every socket on it; each socket's
``SocketView`` turns a scan into that socket's message: everything first,
then only what changed since the message it was last sent. When the
workspace now leads outside its owner's directory, the socket gets an
``error`` message (once per such episode, and as the answer to a refresh)
and nothing is read.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from gitwatch.repository import RepoState
from gitwatch.scan import Scan

WORKSPACE_OUTSIDE = "The workspace no longer resolves inside its owner's directory; nothing is read."


def diff_states(previous: dict[str, RepoState], current: dict[str, RepoState]) -> list[dict[str, Any]]:
    """Entries to send: new or changed repositories, and removed ones once.

    The caller must pass this scan as ``previous`` next time, which is what
    makes a removal reported only once.
    """
    entries = []
    for root in sorted(current.keys() | previous.keys()):
        if root not in current:
            entries.append(RepoState(root).to_message_dict(removed=True))
        elif previous.get(root) != current[root]:
            entries.append(current[root].to_message_dict())
    return entries


def changes_message(
    entries: list[dict[str, Any]], scanned_at: datetime | None = None, *, truncated: bool = False
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "changes",
        "scanned_at": format_rfc3339(scanned_at or datetime.now(timezone.utc)),
        "repositories": entries,
    }
    if truncated:  # more repositories than the ceiling: the rest are not reported
        message["truncated"] = True
    return message


def format_rfc3339(moment: datetime) -> str:
    """UTC with milliseconds, e.g. ``2026-11-22T13:00:00.123Z``; naive means UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def error_message(text: str) -> dict[str, str]:
    return {"type": "error", "message": text}


def parse_client_message(text: str | bytes) -> tuple[str, str | None]:
    """``("refresh", None)`` for ``{"type": "refresh"}``, else ``("error", why)``."""
    try:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8")
        message = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return "error", "Invalid JSON."
    if not isinstance(message, dict):
        return "error", "Expected a JSON object."
    if "type" not in message:
        return "error", 'Missing message "type".'
    if message["type"] == "refresh":
        return "refresh", None
    return "error", f"Unknown message type {json.dumps(message['type'])}."


class SocketView:
    """What one socket was last sent: the states it knows, and whether it was told of a refusal.

    Messages are deltas against it; it moves on only when a message is made,
    so a socket that skipped scans (a slow reader) gets everything it missed.
    """

    def __init__(self) -> None:
        self.previous: dict[str, RepoState] = {}
        self.refused = False

    def changes(self, scan: Scan, scanned_at: datetime, *, always: bool) -> dict[str, Any] | None:
        """The delta since the last message; None when there is none and ``always`` is false."""
        self.refused = False
        current = _keep_previous_on_error(self.previous, scan.states)
        entries = diff_states(self.previous, current)
        self.previous = current
        if entries or always:
            return changes_message(entries, scanned_at, truncated=scan.truncated)
        return None

    def refusal(self, *, always: bool) -> dict[str, str] | None:
        """The workspace leads outside: an error once per such episode, and as every refresh's answer."""
        first = not self.refused
        self.refused = True
        return error_message(WORKSPACE_OUTSIDE) if first or always else None


def _keep_previous_on_error(
    previous: dict[str, RepoState], current: dict[str, RepoState]
) -> dict[str, RepoState]:
    # A failed read says nothing about the repository: keep what the client has.
    return {
        root: previous[root] if state.error and root in previous else state
        for root, state in current.items()
    }
