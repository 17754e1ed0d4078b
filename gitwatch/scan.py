"""Scanning a workspace: finding its repositories and reading each through
``repository.py``, under the contract's ceilings.

- At most ``MAX_REPOSITORIES`` repositories; past that the scan is ``truncated``.
- At most ``MAX_MESSAGE_DIFF_BYTES`` of diff text per scan, so per message:
  repositories past it carry the size note instead of their diff.
- A time budget per scan: the first repository is always read whole (so a
  huge one still makes progress), the others only while the budget lasts;
  those not reached keep their last state and are read first next time.

Each repository is read in a sandbox process (sandbox/tasks.py), under a
memory ceiling and a deadline: a repository built to block or burn is left
out, and the hub's scan thread waits without holding the GIL.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from gitwatch.repository import MAX_DIFF_BYTES, OUT_OF_TIME, RepositoryRefused, RepoState
from sandbox import tasks as sandboxed  # each repository is read in a sandbox process

MAX_REPOSITORIES = 64
MAX_MESSAGE_DIFF_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_DEPTH = 3
DEFAULT_TIME_BUDGET = 5.0  # seconds per scan


@dataclass(frozen=True)
class Scan:
    states: dict[str, RepoState]
    truncated: bool = False
    skipped: tuple[str, ...] = ()  # not read in time: their last state, read first next time
    started_at: float = field(default_factory=time.monotonic, compare=False)


def find_repositories(
    workspace: str | os.PathLike[str], max_depth: int = DEFAULT_MAX_DEPTH, limit: int = MAX_REPOSITORIES
) -> list[str]:
    """Relative roots (``"."``, ``"a/b"``) of repositories in the workspace."""
    root = os.path.realpath(workspace)
    return [_relative_root(root, directory) for directory in _repository_dirs(root, max_depth, limit)[0]]


def _repository_dirs(root: str, max_depth: int, limit: int) -> tuple[list[str], bool]:
    """Absolute directories of the repositories below ``root`` (sorted), and whether more exist.

    Breadth first in name order, so which ones a truncated scan keeps is stable.
    Symlinks are never followed: those pointing outside would leak other
    directories, those pointing inside would report a repository twice.
    """
    if not os.path.isdir(root):
        return [], False
    found: list[str] = []
    pending = deque([(root, 0)])
    while pending:
        directory, depth = pending.popleft()
        entries = _list_directory(directory)
        if any(entry.name == ".git" and _is_real_entry(entry) for entry in entries):
            if len(found) == limit:
                return sorted(found), True
            found.append(directory)
        if depth < max_depth:
            pending.extend(
                (entry.path, depth + 1)
                for entry in entries
                if entry.name != ".git" and entry.is_dir(follow_symlinks=False)
            )
    return sorted(found), False


def _list_directory(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError:  # vanished or unreadable: nothing to report there
        return []


def _is_real_entry(entry: os.DirEntry[str]) -> bool:
    # A ".git" symlink could point at a repository outside the workspace.
    return entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False)


def _relative_root(root: str, directory: str) -> str:
    relative = os.path.relpath(directory, root).replace(os.sep, "/")
    # Undecodable names arrive as surrogates, which JSON as UTF-8 cannot carry.
    return relative.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def scan(
    workspace: str | os.PathLike[str],
    *,
    boundary: str | os.PathLike[str] | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_diff_bytes: int = MAX_DIFF_BYTES,
    max_total_diff_bytes: int = MAX_MESSAGE_DIFF_BYTES,
    time_budget: float = DEFAULT_TIME_BUDGET,
    previous: Scan | None = None,
    read: Callable[..., RepoState] | None = None,
) -> Scan:
    """Read every repository of the workspace; nothing outside ``boundary`` (default: the workspace).

    ``read`` reads one repository: a sandbox process's (the default), or
    ``repository.read_repository`` in this process (tests that look inside it).
    """
    read = read or sandboxed.read_repository
    started = time.monotonic()
    deadline = started + time_budget
    root = os.path.realpath(workspace)
    boundary = os.path.realpath(boundary if boundary is not None else root)
    directories, truncated = _repository_dirs(root, max_depth, MAX_REPOSITORIES)
    roots = {_relative_root(root, directory): directory for directory in directories}
    states, skipped, budget = {}, [], max_total_diff_bytes
    for number, repo_root in enumerate(_read_order(roots, previous)):
        try:
            state = read(
                roots[repo_root], repo_root, boundary,
                max_diff_bytes=min(max_diff_bytes, budget),
                deadline=float("inf") if number == 0 else deadline,
            )
        except RepositoryRefused:
            continue  # points outside: left out, never a window
        if state.error == OUT_OF_TIME:
            skipped.append(repo_root)
            if previous is not None and repo_root in previous.states:
                states[repo_root] = previous.states[repo_root]
            continue
        budget = max(0, budget - len(state.unified_diff.encode("utf-8")))
        states[repo_root] = state
    return Scan(dict(sorted(states.items())), truncated, tuple(skipped), started)


def _read_order(roots: dict[str, str], previous: Scan | None) -> list[str]:
    # Those the last scan did not reach go first, so every repository gets its turn.
    first = [root for root in (previous.skipped if previous else ()) if root in roots]
    return first + [root for root in sorted(roots) if root not in first]


def scan_workspace(workspace: str | os.PathLike[str], **options: Any) -> dict[str, RepoState]:
    """``{repo_root: RepoState}``: ``scan()`` without the ceilings' bookkeeping."""
    return scan(workspace, **options).states
