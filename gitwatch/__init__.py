"""The git watch engine behind ``GET /api/v2/chats/{chat}/git/watch`` (see the
README's "Git watch sockets"). Flask-free: the route checks the request and
hands the connection to the hub. One concern a file:

- ``repository.py``: reading one repository, the trust boundary (nothing it
  reads may run code or reach outside the owner's directory).
- ``scan.py``: finding a workspace's repositories; the ceilings.
- ``notify.py``: noticing changes (one inotify thread per process, polling fallback),
  shared by every socket of the worker.
- ``session.py``: one socket's view: first message, deltas, messages.
- ``hub.py``: every socket of the worker on one event loop; scans off it.
- ``archives.py``: archive events, one listener per process.
- ``limits.py``: open watch sockets per user.
"""

from gitwatch.notify import WorkspaceWatcher
from gitwatch.repository import MAX_DIFF_BYTES, RepositoryRefused, RepoState, read_repository
from gitwatch.scan import (
    DEFAULT_MAX_DEPTH,
    MAX_MESSAGE_DIFF_BYTES,
    MAX_REPOSITORIES,
    find_repositories,
    scan_workspace,
)
from gitwatch.session import (
    changes_message,
    diff_states,
    error_message,
    parse_client_message,
)

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "MAX_DIFF_BYTES",
    "MAX_MESSAGE_DIFF_BYTES",
    "MAX_REPOSITORIES",
    "RepoState",
    "RepositoryRefused",
    "WorkspaceWatcher",
    "changes_message",
    "diff_states",
    "error_message",
    "find_repositories",
    "parse_client_message",
    "read_repository",
    "scan_workspace",
]
