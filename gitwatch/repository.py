"""Reading one repository: the git watch's trust boundary.

A workspace is untrusted input: its owner controls every byte of it. Two
rules hold for everything read here, and this file is the only place that
reads a repository:

1. Nothing the repository names ever runs. Reads go through libgit2
   (pygit2), which has no code to start a process: no hooks, no configured
   clean/smudge/process filters (only the built-in crlf and ident ones exist,
   and they run no program), no fsmonitor, external diff, textconv, pager,
   ssh command or credential helper. No fork happens at all.
2. Nothing outside ``boundary`` (the owner's workspaces directory) is read.
   libgit2 follows a few pointers out of a repository; ``_checked_git_dir``
   follows each one itself *before* libgit2 opens anything, and a repository
   with any pointer leading outside is refused (left out, never a window):
   a ``.git`` file, ``commondir``, symlinks among the git dir's files,
   ``objects/info/alternates``, config includes, ``core.worktree``,
   ``core.excludesFile``/``core.attributesFile``, ``core.symlinks=false``
   (which makes libgit2 read a symlink's target as the file) and symlinked
   ``.gitignore``/``.gitattributes``/``.gitmodules`` in the work tree.
   The checks run again after reading, so a swap during the read is caught.

libgit2's process-wide settings are fixed at import: no system, global or
XDG config (the server's own config must not change results), ``~`` leads
nowhere, and owner validation is off (workspaces belong to their users, not
to the service user; ``safe.directory`` protects against running a foreign
repository's programs, and nothing runs here).
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass, field
from typing import Any

import pygit2
from pygit2.enums import ConfigLevel, DeltaStatus, DiffOption, RepositoryOpenFlag

MAX_DIFF_BYTES = 3 * 1024 * 1024
OUT_OF_TIME = "scan time budget exceeded"
SUBMODULE_MODE = 0o160000
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # libgit2 knows it without reading

# "/dev/null/<anything>" can never exist: no config file, no home directory.
for _level in (ConfigLevel.SYSTEM, ConfigLevel.GLOBAL, ConfigLevel.XDG, ConfigLevel.PROGRAMDATA):
    pygit2.settings.search_path[_level] = os.devnull
pygit2.settings.homedir = os.devnull
pygit2.settings.owner_validation = False

_UNTRACKED = DiffOption.INCLUDE_UNTRACKED | DiffOption.RECURSE_UNTRACKED_DIRS | DiffOption.SHOW_UNTRACKED_CONTENT
_NEW_FILES = (DeltaStatus.ADDED, DeltaStatus.UNTRACKED)
_WORKTREE_FILES_READ = {b".gitignore", b".gitattributes", b".gitmodules"}
_MAX_ALTERNATE_DEPTH = 5  # libgit2's own limit


class RepositoryRefused(Exception):
    """The repository points outside the owner's directory: leave it out."""


class _OutOfTime(Exception):
    """The scan's deadline passed while this repository was read."""


@dataclass(frozen=True)
class RepoState:
    """What the client sees of one repository."""

    repo_root: str
    branch: str = ""
    remote_origin: str = ""
    unified_diff: str = ""
    # Why reading failed; for logs, never sent, not compared.
    error: str = field(default="", compare=False, repr=False)

    def to_message_dict(self, removed: bool = False) -> dict[str, Any]:
        return {
            "repo_root": self.repo_root,
            "branch": self.branch,
            "remote_origin": self.remote_origin,
            "unified_diff": self.unified_diff,
            "removed": removed,
        }


def read_repository(
    repo_dir: str, repo_root: str, boundary: str, *, max_diff_bytes: int = MAX_DIFF_BYTES, deadline: float = float("inf")
) -> RepoState:
    """State of the repository in ``repo_dir``; raises RepositoryRefused, never reads outside.

    Other failures (a corrupt repository) end up in ``error`` with an empty diff.
    """
    boundary = os.path.realpath(boundary)
    git_dir = _checked_git_dir(repo_dir, boundary)
    try:
        repo = pygit2.Repository(git_dir, RepositoryOpenFlag.NO_SEARCH | RepositoryOpenFlag.NO_DOTGIT)
        _check_opened(repo, repo_dir, boundary, deadline)
        state = RepoState(
            repo_root,
            branch=_branch(repo),
            remote_origin=_origin(repo),
            unified_diff=_limited_diff(repo, boundary, max_diff_bytes, deadline),
        )
    except RepositoryRefused:
        raise
    except _OutOfTime:
        state = RepoState(repo_root, error=OUT_OF_TIME)
    except Exception as error:  # a corrupt or odd repository must never end the socket
        state = RepoState(repo_root, error=f"{type(error).__name__}: {error}")
    if _checked_git_dir(repo_dir, boundary) != git_dir:  # swapped while we read
        raise RepositoryRefused("the repository changed while it was read")
    return state


# --------------------------------------------------------------------------
# Confinement: every pointer libgit2 would follow, followed here first
# --------------------------------------------------------------------------


def _inside(path: str, boundary: str) -> bool:
    real = os.path.realpath(path)
    return real == boundary or real.startswith(boundary + os.sep)


def _require_inside(path: str, boundary: str, what: str) -> str:
    if not _inside(path, boundary):
        raise RepositoryRefused(f"{what} leads outside the workspaces directory")
    return os.path.realpath(path)


def _checked_git_dir(repo_dir: str, boundary: str) -> str:
    """The real git dir of ``repo_dir`` once every pointer out of it is checked."""
    try:
        return _follow_git_dir_pointers(repo_dir, boundary)
    except OSError as error:  # vanished or unreadable while we looked: nothing to report
        raise RepositoryRefused(f"cannot check the repository: {error}") from None


def _follow_git_dir_pointers(repo_dir: str, boundary: str) -> str:
    _require_inside(repo_dir, boundary, "the repository")
    dot_git = os.path.join(repo_dir, ".git")
    mode = os.lstat(dot_git).st_mode
    if stat.S_ISDIR(mode):
        git_dir = os.path.realpath(dot_git)
    elif stat.S_ISREG(mode):  # "gitdir: <path>" (worktrees, submodules)
        target = _read_small(dot_git).strip()
        if not target.startswith(b"gitdir: "):
            raise RepositoryRefused("the .git file is not a gitdir pointer")
        git_dir = _require_inside(os.path.join(repo_dir, os.fsdecode(target[8:])), boundary, "the .git file")
    else:
        raise RepositoryRefused("the .git entry is a symlink")
    common_dir = git_dir
    if os.path.lexists(os.path.join(git_dir, "commondir")):
        pointer = os.fsdecode(_read_small(os.path.join(git_dir, "commondir")).strip())
        common_dir = _require_inside(os.path.join(git_dir, pointer), boundary, "commondir")
    for directory in {git_dir, common_dir}:
        _check_symlinks(directory, boundary)
        _check_config_file(os.path.join(directory, "config"))
        _check_config_file(os.path.join(directory, "config.worktree"))
    _check_alternates(os.path.join(common_dir, "objects"), boundary)
    return git_dir


def _read_small(path: str, limit: int = 4096) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(limit)


def _check_symlinks(git_dir: str, boundary: str) -> None:
    """Symlinks among the files libgit2 reads (config, HEAD, index, refs, objects, info) stay inside.

    Loose objects are not visited (thousands of files): one is only read by
    its hash, and its content is checked against it.
    """
    pending = [git_dir]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_symlink():
                    _require_inside(entry.path, boundary, f"the symlink .git/{entry.name}")
                elif entry.is_dir() and not _skipped_git_subdir(git_dir, entry):
                    pending.append(entry.path)


def _skipped_git_subdir(git_dir: str, entry: os.DirEntry[str]) -> bool:
    relative = os.path.relpath(entry.path, git_dir)
    # Loose objects; reflogs (not read); other repositories' git dirs (checked when those are read).
    return re.fullmatch(r"objects/[0-9a-f]{2}|logs|modules|worktrees", relative) is not None


def _check_config_file(path: str) -> None:
    # Includes may point anywhere, and libgit2 reads them while opening.
    # A section name is a bare word, so the bytes "include" must be there.
    if os.path.lexists(path) and re.search(rb"include", _read_small(path, 1024 * 1024), re.IGNORECASE):
        raise RepositoryRefused("the repository config includes other files")


def _check_alternates(objects_dir: str, boundary: str) -> None:
    pending, seen = [(objects_dir, 0)], set()
    while pending:
        directory, depth = pending.pop()
        alternates = os.path.join(directory, "info", "alternates")
        if directory in seen or not os.path.lexists(alternates):
            continue
        seen.add(directory)
        for line in _read_small(alternates, 64 * 1024).splitlines():
            line = line.strip()
            if line and not line.startswith(b"#"):
                if depth >= _MAX_ALTERNATE_DEPTH:
                    raise RepositoryRefused("alternates nest too deep")
                other = _require_inside(os.path.join(directory, os.fsdecode(line)), boundary, "an alternate")
                pending.append((other, depth + 1))


def _check_opened(repo: pygit2.Repository, repo_dir: str, boundary: str, deadline: float) -> None:
    """What libgit2 takes from the config once open: the work tree and extra ignore/attribute files."""
    if repo.is_bare or os.path.realpath(repo.workdir) != os.path.realpath(repo_dir):
        raise RepositoryRefused("core.worktree points elsewhere")
    config = repo.config
    for key in ("core.excludesfile", "core.attributesfile"):
        if key in config:
            _require_inside(os.path.join(repo_dir, os.path.expanduser(config[key])), boundary, key)
    if "core.symlinks" in config and not config.get_bool("core.symlinks"):
        raise RepositoryRefused("core.symlinks=false would read symlink targets")
    _check_worktree_symlinks(repo_dir, boundary, deadline)


def _check_worktree_symlinks(repo_dir: str, boundary: str, deadline: float) -> None:
    """libgit2 follows a symlinked .gitignore/.gitattributes/.gitmodules when it reads them."""
    pending = [os.fsencode(repo_dir)]
    while pending:
        if time.monotonic() > deadline:
            raise _OutOfTime()
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        names = {entry.name for entry in entries}
        if directory != os.fsencode(repo_dir) and b".git" in names:
            continue  # a nested repository: read on its own
        for entry in entries:
            if entry.name in _WORKTREE_FILES_READ and entry.is_symlink():
                _require_inside(os.fsdecode(entry.path), boundary, os.fsdecode(entry.name))
            elif entry.name != b".git" and entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)


# --------------------------------------------------------------------------
# Branch, origin, diff
# --------------------------------------------------------------------------


def _branch(repo: pygit2.Repository) -> str:
    """Branch name, also on an unborn branch; the short commit id when detached."""
    if repo.head_is_detached:
        return repo[repo.head.target].short_id
    target = repo.lookup_reference("HEAD").target
    return target.removeprefix("refs/heads/") if isinstance(target, str) else ""


def _origin(repo: pygit2.Repository) -> str:
    urls = list(repo.config.get_multivar("remote.origin.url"))
    return redact_credentials(urls[0]) if urls else ""


def redact_credentials(url: str) -> str:
    """Drop ``user:token@`` from ``scheme://`` URLs; the browser must not get tokens."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", url)


def _limited_diff(repo: pygit2.Repository, boundary: str, max_bytes: int, deadline: float) -> str:
    """Staged (HEAD -> index), then unstaged and untracked (index -> work tree), under ``max_bytes``.

    Making text costs a file read per file, so it is avoided when the answer
    is known to be the size note: when the least text the files can make is
    over the limit already (30,000 untracked files), and past the limit. Sizes
    past the limit are estimated from file sizes. Raises _OutOfTime past
    ``deadline`` (checked between files).
    """
    head = repo.get(EMPTY_TREE) if repo.head_is_unborn else repo.head.peel(pygit2.Tree)
    staged = repo.index.diff_to_tree(head)
    # Submodules are left to _submodule_changes: libgit2 would open them, wherever their .git points.
    unstaged = repo.index.diff_to_workdir(_UNTRACKED | DiffOption.IGNORE_SUBMODULES)
    deltas = [(diff, index, delta) for diff in (staged, unstaged) for index, delta in enumerate(diff.deltas)]
    least = sum(_least_text_size(delta) for _, _, delta in deltas)
    if least > max_bytes:
        return too_large_note(least)
    parts, size = [], 0
    for diff, index, delta in deltas:
        if time.monotonic() > deadline:
            raise _OutOfTime()
        too_big = delta.status in _NEW_FILES and size + delta.new_file.size > max_bytes
        if size > max_bytes or (too_big and not _looks_binary(repo.workdir, delta.new_file.raw_path)):
            size += delta.old_file.size + delta.new_file.size  # no text made: never read whole
            continue
        text = _patch_text(diff[index], delta)
        size += len(text.encode("utf-8"))
        parts.append(text)
    for text in _submodule_changes(repo, boundary):
        size += len(text)
        parts.append(text)
    if size > max_bytes:
        return too_large_note(size)
    return "".join(parts)


def _least_text_size(delta: pygit2.DiffDelta) -> int:
    """A lower bound of git's text for one file: its header lines, plus all of a new or
    deleted file of at most 1 MiB (larger ones may be binary, a one-line note)."""
    header = 4 * len(delta.new_file.raw_path) + 60
    if delta.status in _NEW_FILES or delta.status == DeltaStatus.DELETED:
        content = max(delta.new_file.size, delta.old_file.size)
        return header + (content if content <= 1024 * 1024 else 0)
    return header


def _looks_binary(workdir: str, raw_path: bytes) -> bool:
    """git's test (a NUL in the first 8000 bytes) on a work tree file; a symlink is not followed."""
    try:
        handle = os.open(os.path.join(os.fsencode(workdir), raw_path), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return b"\0" in os.read(handle, 8000)
    finally:
        os.close(handle)


def too_large_note(size: int) -> str:
    return f"Diff too large to display ({size} bytes)."


def _patch_text(patch: pygit2.Patch, delta: pygit2.DiffDelta) -> str:
    data = patch.data
    if b"\0" in data:  # binary past libgit2's 8000-byte sniff: still one line
        header = data.split(b"\n--- ", 1)[0].rstrip(b"\n")
        old = b"/dev/null" if delta.status in _NEW_FILES else _quoted(b"a/", delta.old_file.raw_path)
        new = b"/dev/null" if delta.status == DeltaStatus.DELETED else _quoted(b"b/", delta.new_file.raw_path)
        data = header + b"\nBinary files %s and %s differ\n" % (old, new)
    return _unquote_utf8_names(data).decode("utf-8", "replace")


def _quoted(prefix: bytes, path: bytes) -> bytes:
    name = prefix + path
    if re.search(rb'[\x00-\x1f"\\\x7f-\xff]', name) is None:
        return name
    escaped = re.sub(rb'[\x00-\x1f"\\\x7f-\xff]', lambda m: b"\\%03o" % m.group()[0], name)
    return b'"' + escaped + b'"'


_QUOTED_NAME = re.compile(rb'"((?:[^"\\\n]|\\.)*)"')
_HEADER_LINE = re.compile(rb"^(diff --git |--- |\+\+\+ |rename (from|to) |copy (from|to) |Binary files )")


def _unquote_utf8_names(data: bytes) -> bytes:
    """libgit2 quotes every non-ASCII name; git (core.quotepath=off) only those that are not
    printable UTF-8. Names that are not valid UTF-8 stay git-quoted, so they are never lost."""
    lines = data.split(b"\n")
    for number, line in enumerate(lines):
        if line.startswith(b"@@"):
            break
        if _HEADER_LINE.match(line):
            lines[number] = _QUOTED_NAME.sub(_unquote_if_utf8, line)
    return b"\n".join(lines)


def _unquote_if_utf8(match: re.Match[bytes]) -> bytes:
    raw = re.sub(rb"\\([0-7]{3}|.)", _unescape, match.group(1))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return match.group()
    if re.search(r'[\x00-\x1f"\\\x7f]', text):
        return match.group()  # control characters, quotes, backslashes: git quotes them too
    return raw


def _unescape(match: re.Match[bytes]) -> bytes:
    escaped = match.group(1)
    if len(escaped) == 3:
        return bytes([int(escaped, 8)])
    return {b"n": b"\n", b"t": b"\t", b"a": b"\a", b"b": b"\b", b"f": b"\f", b"r": b"\r", b"v": b"\v"}.get(
        escaped, escaped)


def _submodule_changes(repo: pygit2.Repository, boundary: str) -> list[str]:
    """A submodule whose checked-out commit differs from the index, as git's --submodule=short shows it.

    Only submodules that pass the same checks are opened; their own changes
    are reported under their own repo_root.
    """
    changes = []
    for entry in repo.index:
        if entry.mode != SUBMODULE_MODE:
            continue
        sub_dir = os.path.join(repo.workdir, entry.path)
        try:
            sub = pygit2.Repository(_checked_git_dir(sub_dir, boundary), RepositoryOpenFlag.NO_SEARCH)
            current = None if sub.head_is_unborn else sub.head.target
        except (RepositoryRefused, pygit2.GitError, OSError, ValueError, KeyError):
            continue  # not checked out, or not ours to read: git shows nothing either
        if current is not None and current != entry.id:
            name = entry.path
            changes.append(
                f"diff --git a/{name} b/{name}\nindex {str(entry.id)[:7]}..{str(current)[:7]} 160000\n"
                f"--- a/{name}\n+++ b/{name}\n@@ -1 +1 @@\n-Subproject commit {entry.id}\n"
                f"+Subproject commit {current}\n"
            )
    return changes
