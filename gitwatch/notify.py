"""Git change streaming for a chat workspace: the engine behind
``GET /api/v2/chats/{chat}/git/watch`` (see CONTRACT.md).

Flask-free on purpose: the WebSocket route stays thin and only moves JSON
between this module and the socket.

Pieces
======

``scan_workspace(path)``
    Finds the workspace itself (when it is a repository) and every repository
    below it, up to ``max_depth`` directory levels, and reads each one's
    branch, ``origin`` URL and unified diff against ``HEAD`` (staged, unstaged
    and untracked non-ignored files). Returns ``{repo_root: RepoState}``.

``diff_states(previous, current)`` / ``changes_message(entries)``
    Turn two scans into the entries of a ``changes`` message: new or changed
    repositories, and ``removed: true`` once for vanished ones.

``WorkspaceWatcher(path)``
    Filesystem change notification (watchdog, inotify on Linux) with
    coalescing, so a burst of writes costs one scan.

``WatchSession(path)``
    Ties the above together for one socket.

``parse_client_message(text)`` / ``error_message(text)``
    Client → server frames.

Recommended route loop
======================

The route reads client frames in the same thread, so it alternates a short
``ws.receive(timeout=...)`` with a non-blocking ``session.poll()``::

    with WatchSession(workspace_dir) as session:
        ws.send(json.dumps(session.initial_message()))
        while True:
            text = ws.receive(timeout=0.25)      # None on timeout
            refresh = False
            if text is not None:
                kind, problem = parse_client_message(text)
                if kind == "error":
                    ws.send(json.dumps(error_message(problem)))
                else:
                    refresh = True
            message = session.poll(refresh=refresh)
            if message is not None:
                ws.send(json.dumps(message))
            # every few seconds, not every turn: stop when the chat is archived

``poll()`` scans only when the watcher reports a settled burst of changes,
when the client asked for a refresh (then a ``changes`` message is always
sent, possibly with an empty list, as the answer), or every
``rescan_interval`` seconds as a safety net. A change therefore reaches the
client after the receive timeout (up to 0.25 s) + the debounce (0.1 s after
the last write, at most 0.5 s into a continuous burst) + the scan itself,
well under a second. An idle socket costs four wake-ups a second, each a few
``stat`` calls and a lock: negligible CPU. ``ws.receive`` raising on a closed
connection ends the loop; ``with`` then releases the watch.

Watching
========

All watchers share one watchdog observer (one dispatch thread, one inotify
instance); watchdog adds one idle emitter thread per distinct watched
directory, shared by every socket watching it. Reads are not subscribed to
(git's own reads while scanning must not trigger a scan), and writes under
``.git/objects`` or to ``.git/*.lock`` are ignored (a commit or ``git add``
also changes the index or a ref). If no watch can be made (inotify limits),
the watcher polls: it reports a change every ``poll_interval`` seconds and
retries a real watch every 10 s. A missing workspace is watched through its
nearest existing parent; deletion and re-creation are followed.

Failures
========

Git runs with a per-repository time budget (``git_timeout``, default 10 s),
no pager, no prompts, ``GIT_OPTIONAL_LOCKS=0``, no system/global config (the
server user's config must not change results) and ``safe.directory=*``
(repositories belong to other users). When git fails or times out for one
repository, that repository is still reported, with whatever was read and an
empty diff; ``RepoState.error`` says why (it is not sent). ``WatchSession``
keeps the last good state of such a repository instead, so a slow scan does
not make the client's diff flicker. Other repositories are unaffected.

Scanning never writes into a repository: untracked files are added as
intent-to-add entries to a *copy* of the index, with a temporary object
directory (``git add -N`` writes the empty blob), both in the system temp
dir. Hence it works on read-only repositories and does not wake watchers.
Repository configuration is not fully trusted: fsmonitor, external diff,
textconv and clean/smudge/process filters are disabled (a diff of a filtered
file shows the raw file).
"""

from __future__ import annotations

import errno
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

__all__ = [
    "DEFAULT_GIT_TIMEOUT",
    "DEFAULT_MAX_DEPTH",
    "MAX_DIFF_BYTES",
    "RepoState",
    "WatchSession",
    "WorkspaceWatcher",
    "changes_message",
    "diff_states",
    "error_message",
    "find_repositories",
    "parse_client_message",
    "scan_workspace",
]

MAX_DIFF_BYTES = 3 * 1024 * 1024
DEFAULT_MAX_DEPTH = 3
DEFAULT_GIT_TIMEOUT = 10.0

# Empty tree ids: the diff base of a repository without commits.
_EMPTY_TREES = {
    "sha1": "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
    "sha256": "6ef19b41225c5369f1c104d45d8d85efa9b057b53b14b4b9b939dd74decc5321",
}

# Passed as GIT_CONFIG_* (command scope): protected, so safe.directory counts,
# and unambiguous, unlike "-c key=value" with odd filter names.
_BASE_GIT_CONFIG = (
    ("safe.directory", "*"),
    ("core.quotepath", "off"),
    ("core.fsmonitor", "false"),
    ("core.splitIndex", "false"),  # a split temp index would write into .git
    ("core.untrackedCache", "false"),
    ("core.pager", "cat"),
    ("color.ui", "false"),
    ("gc.auto", "0"),
)

_STDERR_KEEP = 2000


# --------------------------------------------------------------------------
# Repository state and messages
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RepoState:
    """What the client sees of one repository."""

    repo_root: str
    branch: str = ""
    remote_origin: str = ""
    unified_diff: str = ""
    # Why git failed for this repository; for logs, never sent, not compared.
    error: str = field(default="", compare=False, repr=False)

    def to_message_dict(self, removed: bool = False) -> dict[str, Any]:
        return {
            "repo_root": self.repo_root,
            "branch": self.branch,
            "remote_origin": self.remote_origin,
            "unified_diff": self.unified_diff,
            "removed": removed,
        }


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


def changes_message(entries: list[dict[str, Any]], scanned_at: datetime | None = None) -> dict[str, Any]:
    return {
        "type": "changes",
        "scanned_at": format_rfc3339(scanned_at or datetime.now(timezone.utc)),
        "repositories": entries,
    }


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


# --------------------------------------------------------------------------
# Finding repositories
# --------------------------------------------------------------------------


def find_repositories(workspace: str | os.PathLike[str], max_depth: int = DEFAULT_MAX_DEPTH) -> list[str]:
    """Relative roots (``"."``, ``"a/b"``) of repositories in the workspace.

    Symlinks are never followed: those pointing outside would leak other
    directories, those pointing inside would report a repository twice.
    """
    root = os.path.realpath(workspace)
    return [_relative_root(root, directory) for directory in _repository_dirs(root, max_depth)]


def _repository_dirs(root: str, max_depth: int) -> list[str]:
    """Absolute directories of the repositories below ``root``, sorted."""
    if not os.path.isdir(root):
        return []
    found = []
    pending = [(root, 0)]
    while pending:
        directory, depth = pending.pop()
        entries = _list_directory(directory)
        if any(entry.name == ".git" and _is_real_entry(entry) for entry in entries):
            found.append(directory)
        if depth < max_depth:
            pending.extend(
                (entry.path, depth + 1)
                for entry in entries
                if entry.name != ".git" and entry.is_dir(follow_symlinks=False)
            )
    return sorted(found)


def _list_directory(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError:  # vanished or unreadable: nothing to report there
        return []


def _is_real_entry(entry: os.DirEntry[str]) -> bool:
    # A ".git" symlink could point at a repository outside the workspace.
    return entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False)


def _relative_root(root: str, directory: str) -> str:
    relative = os.path.relpath(directory, root).replace(os.sep, "/")
    # Undecodable names arrive as surrogates, which JSON as UTF-8 cannot carry.
    return relative.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# --------------------------------------------------------------------------
# Reading one repository
# --------------------------------------------------------------------------


class GitError(Exception):
    """Git failed, timed out or could not be started."""


@dataclass
class _GitResult:
    returncode: int
    stdout: bytes
    stdout_size: int  # total bytes written, also those beyond the kept limit
    stderr: bytes = b""

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


class _Git:
    """Runs git in one repository under one deadline."""

    def __init__(self, repo_dir: str, deadline: float):
        self.repo_dir = repo_dir
        self.deadline = deadline
        self.extra_config: list[tuple[str, str]] = []

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        keep: int = 1024 * 1024,
        check: bool = True,
    ) -> _GitResult:
        full_env = _git_environment(self.repo_dir, list(_BASE_GIT_CONFIG) + self.extra_config)
        full_env.update(env or {})
        result = _run_bounded(["git", "--no-pager", *args], self.repo_dir, full_env, self.deadline, keep)
        if check and result.returncode != 0:
            raise GitError(_failure_text(args, result))
        return result


def _failure_text(args: tuple[str, ...], result: _GitResult) -> str:
    command = next(arg for arg in args if not arg.startswith("-"))
    reason = result.stderr.decode("utf-8", "replace").strip().splitlines()
    return f"git {command} exited with {result.returncode}" + (f": {reason[-1]}" if reason else "")


def _git_environment(repo_dir: str, config: list[tuple[str, str]]) -> dict[str, str]:
    # Inherited GIT_* (e.g. GIT_DIR when run from a hook) would redirect git.
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env.update(
        GIT_OPTIONAL_LOCKS="0",
        GIT_TERMINAL_PROMPT="0",
        GIT_PAGER="cat",
        PAGER="cat",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_ATTR_NOSYSTEM="1",
        XDG_CONFIG_HOME=os.devnull,  # no ~/.config/git/{ignore,attributes}
        # An invalid ".git" must not make git use an enclosing repository.
        GIT_CEILING_DIRECTORIES=os.path.dirname(repo_dir),
        LC_ALL="C",
        LANGUAGE="",
    )
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for index, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


def _run_bounded(argv: list[str], cwd: str, env: dict[str, str], deadline: float, keep: int) -> _GitResult:
    """Run a command, keep at most ``keep`` bytes of stdout, kill it at the deadline.

    Output past ``keep`` is counted, not stored, so a huge diff costs no memory.
    """
    if deadline - time.monotonic() <= 0:
        raise GitError("git timed out")
    try:
        process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
    except OSError as exc:
        raise GitError(f"cannot run git: {exc}") from exc
    try:
        stdout, size, stderr = _read_until(process, deadline, keep)
        returncode = process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except (GitError, subprocess.TimeoutExpired):
        _kill_group(process)
        raise GitError("git timed out") from None
    finally:
        process.stdout.close()
        process.stderr.close()
    return _GitResult(returncode, stdout, size, stderr)


def _read_until(process: subprocess.Popen[bytes], deadline: float, keep: int) -> tuple[bytes, int, bytes]:
    kept, size, stderr = bytearray(), 0, bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        selector.register(process.stderr, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GitError("git timed out")
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.fileobj is process.stdout:
                    size += len(chunk)
                    kept += chunk[: max(0, keep - len(kept))]
                else:
                    stderr = (stderr + chunk)[-_STDERR_KEEP:]
    return bytes(kept), size, bytes(stderr)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # git's own children too
    except OSError:
        process.kill()
    process.wait()


def scan_workspace(
    path: str | os.PathLike[str],
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    git_timeout: float = DEFAULT_GIT_TIMEOUT,
    max_diff_bytes: int = MAX_DIFF_BYTES,
) -> dict[str, RepoState]:
    """``{repo_root: RepoState}`` for every repository in the workspace.

    ``git_timeout`` is the time budget of each repository, not of the scan.
    """
    root = os.path.realpath(path)
    states = {}
    for repo_dir in _repository_dirs(root, max_depth):
        repo_root = _relative_root(root, repo_dir)
        states[repo_root] = read_repository(
            repo_dir, repo_root, git_timeout=git_timeout, max_diff_bytes=max_diff_bytes
        )
    return states


def read_repository(
    repo_dir: str,
    repo_root: str,
    *,
    git_timeout: float = DEFAULT_GIT_TIMEOUT,
    max_diff_bytes: int = MAX_DIFF_BYTES,
) -> RepoState:
    """State of one repository; git failures end up in ``error``, never raised."""
    git = _Git(repo_dir, time.monotonic() + git_timeout)
    read: dict[str, str] = {}
    try:
        _read_repository_into(git, read, max_diff_bytes)
    except (GitError, OSError) as exc:
        read["error"] = str(exc) or type(exc).__name__
        read["unified_diff"] = ""
    return RepoState(repo_root, **read)


def _read_repository_into(git: _Git, read: dict[str, str], max_diff_bytes: int) -> None:
    # Filled step by step so that a later failure keeps what was read.
    config = _read_config(git)
    read["remote_origin"] = _redact_credentials(config.get("remote.origin.url", ""))
    git.extra_config = _disabled_filters(config)
    head = git.run("rev-parse", "-q", "--verify", "--short", "HEAD", check=False)
    short_head = head.text.strip() if head.returncode == 0 else ""
    read["branch"] = _read_branch(git) or short_head
    diff = _read_diff(git, has_head=bool(short_head), keep=max_diff_bytes)
    read["unified_diff"] = _limit_diff(diff, max_diff_bytes)


def _read_config(git: _Git) -> dict[str, str]:
    """``remote.origin.url`` and filter commands: first value of each key."""
    pattern = r"^(remote\.origin\.url|filter\..+\.(clean|smudge|process))$"
    result = git.run("config", "-z", "--get-regexp", pattern, check=False)
    if result.returncode not in (0, 1):  # 1: nothing matched
        raise GitError(_failure_text(("config",), result))
    config: dict[str, str] = {}
    for record in result.text.split("\0"):
        key, _, value = record.partition("\n")
        if key:
            config.setdefault(key, value)
    return config


def _disabled_filters(config: dict[str, str]) -> list[tuple[str, str]]:
    # Filters run commands from the repository's config as the server user.
    names = {key[len("filter."):].rsplit(".", 1)[0] for key in config if key.startswith("filter.")}
    overrides = []
    for name in sorted(names):
        for part in ("clean", "smudge", "process"):
            overrides.append((f"filter.{name}.{part}", ""))
        overrides.append((f"filter.{name}.required", "false"))
    return overrides


def _redact_credentials(url: str) -> str:
    """Drop ``user:token@`` from ``scheme://`` URLs; the browser must not get tokens."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", url)


def _read_branch(git: _Git) -> str:
    """Branch name, also on an unborn branch; ``""`` when detached."""
    result = git.run("symbolic-ref", "-q", "--short", "HEAD", check=False)
    return result.text.strip() if result.returncode == 0 else ""


def _read_diff(git: _Git, *, has_head: bool, keep: int) -> _GitResult:
    """Diff of the work tree (staged, unstaged, untracked) against HEAD."""
    untracked = _untracked_files(git)
    paths = _read_paths(git) if untracked or not has_head else {}
    base = "HEAD" if has_head else _EMPTY_TREES.get(paths["object-format"], _EMPTY_TREES["sha1"])
    if not untracked:
        return _run_diff(git, base, keep, env=None)
    with tempfile.TemporaryDirectory(prefix="gitwatch-") as scratch:
        env = _scratch_index(paths, scratch)
        _add_intent_to_add(git, untracked, env, scratch)
        return _run_diff(git, base, keep, env=env)


def _read_paths(git: _Git) -> dict[str, str]:
    result = git.run("rev-parse", "--git-path", "index", "--git-path", "objects", "--show-object-format")
    index, objects, object_format = result.text.splitlines()[:3]
    return {
        "index": os.path.join(git.repo_dir, index),
        "objects": os.path.join(git.repo_dir, objects),
        "object-format": object_format.strip(),
    }


def _untracked_files(git: _Git) -> list[str]:
    listing = git.run("ls-files", "-z", "--others", "--exclude-standard", keep=64 * 1024 * 1024)
    # "dir/" entries are nested repositories: they are reported on their own.
    return [path for path in listing.text.split("\0") if path and not path.endswith("/")]


def _scratch_index(paths: dict[str, str], scratch: str) -> dict[str, str]:
    """Environment for a copy of the index plus a private object directory.

    ``git add -N`` writes the index and the empty blob; both go to ``scratch``
    so the repository is never written (read-only repos work, watchers stay quiet).
    """
    index_copy = os.path.join(scratch, "index")
    try:
        shutil.copyfile(paths["index"], index_copy)
    except FileNotFoundError:
        pass  # no index yet: git starts an empty one
    objects = os.path.join(scratch, "objects")
    os.mkdir(objects)
    return {
        "GIT_INDEX_FILE": index_copy,
        "GIT_OBJECT_DIRECTORY": objects,
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": os.path.abspath(paths["objects"]),
    }


def _add_intent_to_add(git: _Git, untracked: list[str], env: dict[str, str], scratch: str) -> None:
    # Files can vanish between listing and adding; retry once without them.
    for attempt in range(2):
        existing = [path for path in untracked if os.path.lexists(os.path.join(git.repo_dir, path))]
        if not existing:
            return
        pathspec_file = os.path.join(scratch, "pathspecs")
        with open(pathspec_file, "wb") as handle:
            handle.write(b"\0".join(path.encode("utf-8", "surrogateescape") for path in existing))
        result = git.run(
            "--literal-pathspecs", "add", "--intent-to-add",
            f"--pathspec-from-file={pathspec_file}", "--pathspec-file-nul",
            env=env, check=attempt == 1,
        )
        if result.returncode == 0:
            return


def _run_diff(git: _Git, base: str, keep: int, env: dict[str, str] | None) -> _GitResult:
    return git.run(
        "diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-relative",
        "--submodule=short", "--src-prefix=a/", "--dst-prefix=b/", base, "--",
        env=env, keep=keep,
    )


def _limit_diff(result: _GitResult, max_diff_bytes: int) -> str:
    if result.stdout_size > max_diff_bytes:
        return _too_large_note(result.stdout_size)
    text = result.text
    size = len(text.encode("utf-8"))  # replacement characters can grow it
    return _too_large_note(size) if size > max_diff_bytes else text


def _too_large_note(size: int) -> str:
    return f"Diff too large to display ({size} bytes)."


# --------------------------------------------------------------------------
# Change notification
# --------------------------------------------------------------------------

# Reads (open, close without write, access) are left out on purpose: git's own
# reads during a scan must not wake the watcher again.
_EVENT_TYPES = [
    FileCreatedEvent, DirCreatedEvent, FileDeletedEvent, DirDeletedEvent,
    FileModifiedEvent, FileAttribEvent, FileClosedEvent, FileMovedEvent, DirMovedEvent,
]


def _is_noise(path: str) -> bool:
    """Git internals that never carry a change on their own.

    Objects are written with every commit or ``add``, which also touch the
    index or a ref; ``*.lock`` files are created and renamed away.
    """
    parts = path.split(os.sep)
    if ".git" not in parts:
        return False
    inside = parts[parts.index(".git") + 1:]
    if inside[:1] == ["objects"] or (inside[:1] == ["modules"] and "objects" in inside):
        return True
    return path.endswith(".lock")


def _is_relevant(event: FileSystemEvent) -> bool:
    source = os.fsdecode(event.src_path)
    destination = os.fsdecode(event.dest_path) if event.dest_path else ""
    return not _is_noise(source) or bool(destination and not _is_noise(destination))


@dataclass(frozen=True)
class _WatchTarget:
    """What to watch for a workspace: itself, or its nearest existing parent."""

    path: str
    recursive: bool
    identity: tuple[int, int]  # (st_dev, st_ino): notices deleted and recreated dirs

    @property
    def key(self) -> tuple[str, bool]:
        return self.path, self.recursive


def _watch_target(workspace: str) -> _WatchTarget | None:
    path = os.path.realpath(workspace)
    recursive = True
    while True:
        try:
            status = os.stat(path)
            if os.path.isdir(path):
                return _WatchTarget(path, recursive, (status.st_dev, status.st_ino))
        except OSError:
            pass
        parent = os.path.dirname(path)
        if parent == path:
            return None
        # The workspace may be created later: its parent tells us when.
        path, recursive = parent, False


class _SharedWatch(FileSystemEventHandler):
    """One watchdog watch shared by every watcher of the same directory."""

    def __init__(self, target: _WatchTarget):
        super().__init__()
        self.target = target
        self.observed = None
        self.dead = False  # the directory was deleted: the emitter stopped
        self.watchers: tuple[WorkspaceWatcher, ...] = ()  # replaced, never mutated

    def dispatch(self, event: FileSystemEvent) -> None:
        # Runs in the observer thread: must be quick and take no shared lock.
        if isinstance(event, DirDeletedEvent) and os.fsdecode(event.src_path) == self.target.path:
            self.dead = True
        elif not _is_relevant(event):
            return
        for watcher in self.watchers:
            watcher._note_event()


class _WatchRegistry:
    """The process-wide observer and its shared watches.

    One observer thread dispatches for every socket; watchdog adds one
    emitter thread per watched directory (blocked, idle), shared by all
    sockets watching that directory.
    """

    OBSERVER_RETRY_SECONDS = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._observer = None
        self._observer_pid = None
        self._observer_failed_at: float | None = None
        self._watches: dict[tuple[str, bool], _SharedWatch] = {}

    def acquire(self, target: _WatchTarget, watcher: WorkspaceWatcher) -> _SharedWatch:
        """Subscribe ``watcher``; raises OSError when no watch can be made."""
        with self._lock:
            shared = self._watches.get(target.key)
            if shared is not None and (shared.dead or shared.target.identity != target.identity):
                self._unschedule(shared)  # stale: re-watch for everyone subscribed
                shared.target, shared.dead = target, False
                self._schedule(shared)
            elif shared is None:
                shared = _SharedWatch(target)
                self._schedule(shared)
            shared.watchers = shared.watchers + (watcher,)
            return shared

    def release(self, shared: _SharedWatch, watcher: WorkspaceWatcher) -> None:
        with self._lock:
            shared.watchers = tuple(w for w in shared.watchers if w is not watcher)
            if not shared.watchers:
                self._unschedule(shared)

    def _schedule(self, shared: _SharedWatch) -> None:
        try:
            observed = self._running_observer().schedule(
                shared, shared.target.path, recursive=shared.target.recursive, event_filter=_EVENT_TYPES
            )
        except OSError:
            shared.dead = True  # its other subscribers re-acquire and fall back
            self._watches.pop(shared.target.key, None)
            raise
        shared.observed = observed
        self._watches[shared.target.key] = shared

    def _unschedule(self, shared: _SharedWatch) -> None:
        if self._watches.get(shared.target.key) is shared:
            del self._watches[shared.target.key]
        observed, shared.observed = shared.observed, None
        if observed is not None and self._observer is not None:
            try:
                self._observer.unschedule(observed)
            except KeyError:
                pass

    def _running_observer(self):
        if self._observer is not None and self._observer_pid == os.getpid():
            return self._observer
        if self._observer is not None:
            self._forget_forked_parent()
        now = time.monotonic()
        failed_at = self._observer_failed_at
        if failed_at is not None and now - failed_at < self.OBSERVER_RETRY_SECONDS:
            raise OSError(errno.EMFILE, "file watching unavailable")
        try:
            observer = Observer()
            observer.start()
        except OSError:
            self._observer_failed_at = now
            raise
        self._observer, self._observer_pid, self._observer_failed_at = observer, os.getpid(), None
        return observer

    def _forget_forked_parent(self) -> None:
        # Threads do not survive fork (e.g. gunicorn --preload): start afresh.
        self._observer = None
        for shared in self._watches.values():
            shared.dead, shared.observed = True, None
        self._watches.clear()


_REGISTRY = _WatchRegistry()


class WorkspaceWatcher:
    """Tells when files in a workspace (``.git`` included) changed.

    ``changed()`` is a non-blocking check, ``wait_for_change(timeout)`` blocks.
    Both report a burst of events once: after the first event they wait until
    events pause for ``debounce`` seconds, at most ``max_delay`` seconds.

    Modes (``mode``): ``"events"`` (watchdog/inotify), or ``"polling"`` when
    no watch could be made (inotify limits): then a change is reported every
    ``poll_interval`` seconds and a real watch is retried. A missing
    workspace is handled by watching its nearest existing parent; deletion
    and re-creation are followed. Thread-safe; close it (or use ``with``).
    """

    REARM_RETRY_SECONDS = 10.0

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        debounce: float = 0.1,
        max_delay: float = 0.5,
        poll_interval: float = 2.0,
    ):
        self._path = os.path.abspath(path)
        self._debounce = debounce
        self._max_delay = max_delay
        self._poll_interval = poll_interval
        self._condition = threading.Condition()
        self._first_event: float | None = None
        self._last_event: float | None = None
        self._next_poll = time.monotonic() + poll_interval
        self._arm_lock = threading.Lock()  # never held by the observer thread
        self._shared: _SharedWatch | None = None
        self._next_arm_attempt = 0.0
        self._closed = False
        self._ensure_watching(initial=True)

    @property
    def mode(self) -> str:
        return "events" if self._shared is not None else "polling"

    def changed(self) -> bool:
        """True once per settled burst of changes (or poll tick) since the last True."""
        self._ensure_watching()
        with self._condition:
            return self._take_change(time.monotonic())

    def wait_for_change(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.changed():
                return True
            now = time.monotonic()
            if now >= deadline or self._closed:
                return False
            with self._condition:
                wake_at = min(deadline, self._next_wake(now))
                self._condition.wait(max(0.0, wake_at - now))

    def close(self) -> None:
        with self._arm_lock:
            self._closed = True
            shared, self._shared = self._shared, None
            if shared is not None:
                _REGISTRY.release(shared, self)
        with self._condition:
            self._condition.notify_all()

    def __enter__(self) -> WorkspaceWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _note_event(self) -> None:
        with self._condition:
            now = time.monotonic()
            self._last_event = now
            if self._first_event is None:
                self._first_event = now
                # Only the first event of a burst wakes waiters; they then
                # sleep until the debounce ends instead of spinning per event.
                self._condition.notify_all()

    def _take_change(self, now: float) -> bool:
        if self._closed:
            return False
        if self._first_event is not None and (
            now - self._last_event >= self._debounce or now - self._first_event >= self._max_delay
        ):
            self._first_event = self._last_event = None
            return True
        if self._shared is None and now >= self._next_poll:
            self._next_poll = now + self._poll_interval
            return True
        return False

    def _next_wake(self, now: float) -> float:
        if self._first_event is not None:
            return min(self._last_event + self._debounce, self._first_event + self._max_delay)
        if self._shared is None:
            return self._next_poll
        # Idle: look again now and then, moves of the workspace send no event.
        return now + self._poll_interval

    def _ensure_watching(self, initial: bool = False) -> None:
        """(Re)subscribe when the workspace appeared, vanished or was replaced."""
        with self._arm_lock:
            if self._closed:
                return
            target = _watch_target(self._path)
            shared = self._shared
            if shared is not None and not shared.dead and target == shared.target:
                return
            if shared is None and time.monotonic() < self._next_arm_attempt:
                return
            if shared is not None:
                self._shared = None
                _REGISTRY.release(shared, self)
            self._subscribe(target)
            if not initial and shared is not None:
                self._note_event()  # the workspace itself changed

    def _subscribe(self, target: _WatchTarget | None) -> None:
        try:
            if target is None:
                raise OSError(errno.ENOENT, "nothing to watch")
            self._shared = _REGISTRY.acquire(target, self)
        except OSError:
            self._next_arm_attempt = time.monotonic() + self.REARM_RETRY_SECONDS


# --------------------------------------------------------------------------
# One socket's session
# --------------------------------------------------------------------------


class WatchSession:
    """Previous state, watcher and scan policy of one WebSocket (one thread)."""

    def __init__(
        self,
        workspace: str | os.PathLike[str],
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        git_timeout: float = DEFAULT_GIT_TIMEOUT,
        rescan_interval: float = 10.0,
        watcher: WorkspaceWatcher | None = None,
    ):
        self._workspace = os.fspath(workspace)
        self._max_depth = max_depth
        self._git_timeout = git_timeout
        self._rescan_interval = rescan_interval
        # Watch before the first scan so that nothing falls between the two.
        self._owns_watcher = watcher is None
        self.watcher = watcher if watcher is not None else WorkspaceWatcher(workspace)
        self._previous: dict[str, RepoState] = {}
        self._last_scan = float("-inf")
        self._dirty = False

    def initial_message(self) -> dict[str, Any]:
        """Everything, even when there is no repository (an empty list)."""
        self._previous = {}
        return self.next_message(always=True)

    def next_message(self, *, always: bool = False) -> dict[str, Any] | None:
        """Scan now; the changes message, or None when nothing changed."""
        self._dirty = False
        self._last_scan = time.monotonic()
        scanned_at = datetime.now(timezone.utc)
        current = scan_workspace(self._workspace, max_depth=self._max_depth, git_timeout=self._git_timeout)
        current = _keep_previous_on_error(self._previous, current)
        entries = diff_states(self._previous, current)
        self._previous = current
        if entries or always:
            return changes_message(entries, scanned_at)
        return None

    def poll(self, *, refresh: bool = False) -> dict[str, Any] | None:
        """Non-blocking: scan if something changed, ``refresh`` or a rescan is due.

        A refresh always gets a message (possibly with no repositories) as answer.
        """
        changed = self.watcher.changed()
        due = time.monotonic() - self._last_scan >= self._rescan_interval
        if refresh or changed or self._dirty or due:
            return self.next_message(always=refresh)
        return None

    def wait(self, timeout: float) -> bool:
        """Block until the workspace changed; the next ``poll()`` then scans."""
        if self.watcher.wait_for_change(timeout):
            self._dirty = True
        return self._dirty

    def close(self) -> None:
        if self._owns_watcher:
            self.watcher.close()

    def __enter__(self) -> WatchSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _keep_previous_on_error(
    previous: dict[str, RepoState], current: dict[str, RepoState]
) -> dict[str, RepoState]:
    # A timeout says nothing about the repository: keep what the client has.
    return {
        root: previous[root] if state.error and root in previous else state
        for root, state in current.items()
    }
