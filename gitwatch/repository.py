"""Reading one repository: the git watch's trust boundary.

A workspace is untrusted input: its owner controls every byte of it. These
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
   ``objects/info/alternates``, config includes (``include.path`` and
   ``includeIf.*.path``, parsed as libgit2 parses them, nested ones too),
   ``core.worktree``, ``core.excludesFile``/``core.attributesFile``,
   ``core.symlinks=false`` (which makes libgit2 read a symlink's target as
   the file) and symlinked ``.gitignore``/``.gitattributes``/``.gitmodules``
   in the work tree. What points inside is no reason to refuse: a branch or
   remote named "include", or an include of a file in the repository's own
   ``.git``, is read as usual. The checks run again after reading, so a swap
   during the read is caught.
3. Nothing can block the read. A FIFO, socket or device opened by libgit2
   would block it forever (holding the GIL) or feed it endlessly, so special
   files where libgit2 reads (the git dir's config, HEAD, index, refs,
   packed-refs, info, objects and alternates; ``.gitignore``,
   ``.gitattributes``, ``.gitmodules`` anywhere in the work tree) refuse the
   repository; elsewhere in the work tree libgit2 skips them (an untracked
   FIFO is not listed, a tracked file replaced by one shows as deleted), so
   the repository is reported without them. Every file opened here is opened
   with O_NONBLOCK and read only once fstat says it is a regular file.
4. Cost has a ceiling. A file (work tree file or blob) larger than the diff
   limit is known by its size and never read: it counts toward the size
   note (a new binary one is still git's one line, made without reading it);
   a config larger than ``_MAX_CONFIG_BYTES`` (includes counted) is refused;
   every walk is iterative, so a tree of any depth costs no recursion.

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
_MAX_INCLUDE_DEPTH = 10  # libgit2's own limit: a file this deep is an error
_MAX_CONFIG_BYTES = 4 * 1024 * 1024  # a repository's config and everything it includes, together
_INCLUDE_COST = 4096  # bytes of that budget each include costs, found or not: at most ~1,000 of them
# Never follows a symlink (resolve it first) and never waits on a FIFO.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
# Reflogs, and other repositories' git dirs (checked when those are read): libgit2 reads none of them here.
_UNREAD_GIT_SUBDIRS = {"logs", "modules", "worktrees"}
_INCLUDE_OUTSIDE = "the repository config includes a file outside the workspaces directory"


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
    except MemoryError:
        raise  # the reading process's limit, not the repository's state: its sandbox gives up on it
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
        raise RepositoryRefused("the .git entry is a symlink or a special file")
    common_dir = git_dir
    if os.path.lexists(os.path.join(git_dir, "commondir")):
        pointer = os.fsdecode(_read_small(_require_inside(os.path.join(git_dir, "commondir"), boundary, "commondir")))
        common_dir = _require_inside(os.path.join(git_dir, pointer.strip()), boundary, "commondir")
    for directory in {git_dir, common_dir}:
        _check_git_dir_files(directory, boundary)
        _check_config_includes(os.path.join(directory, "config"), boundary)
        _check_config_includes(os.path.join(directory, "config.worktree"), boundary)
    _check_alternates(os.path.join(common_dir, "objects"), boundary)
    return git_dir


def _read_small(path: str, limit: int = 4096) -> bytes:
    """At most ``limit`` bytes of the regular file ``path``; anything else is refused unread.

    A symlink is not followed (pass a path resolved and checked already). A
    special file is refused before it is opened; one swapped in since is
    opened without waiting (O_NONBLOCK) and refused by fstat.
    """
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise RepositoryRefused(f"{os.path.basename(path)} is not a regular file")
    handle = os.open(path, _OPEN_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise RepositoryRefused(f"{os.path.basename(path)} is not a regular file")
        chunks, size = [], 0
        while size < limit:
            chunk = os.read(handle, limit - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(handle)


def _check_git_dir_files(top: str, boundary: str, *, skip_unread: bool = True) -> None:
    """What libgit2 may open below ``top`` (config, HEAD, index, refs, packed-refs, info, objects)
    is a regular file, a directory, or a symlink to one of those inside the boundary.

    A FIFO, socket or device there refuses the repository: libgit2 would wait
    forever in open(), or read a device. Loose objects are visited too (one
    is opened by its hash, so a FIFO among them blocks as well; a listing
    costs no stat per entry). Iterative; a symlinked directory is walked
    once, so a symlink loop ends.
    """
    pending, seen = [(top, "")], set()
    while pending:
        directory, relative = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                name = relative + entry.name
                if skip_unread and name in _UNREAD_GIT_SUBDIRS:
                    continue
                if entry.is_symlink():
                    target = _require_inside(entry.path, boundary, f"the symlink .git/{name}")
                    try:
                        status = os.stat(target)
                    except FileNotFoundError:
                        continue  # dangling: nothing to open
                    if stat.S_ISDIR(status.st_mode):
                        if (status.st_dev, status.st_ino) not in seen:
                            seen.add((status.st_dev, status.st_ino))
                            pending.append((target, name + "/"))
                    elif not stat.S_ISREG(status.st_mode):
                        raise RepositoryRefused(f"the symlink .git/{name} leads to a special file")
                elif entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, name + "/"))
                elif not entry.is_file(follow_symlinks=False):
                    raise RepositoryRefused(f".git/{name} is a special file")


def _check_config_includes(path: str, boundary: str) -> None:
    """Every file the config ``path`` includes, directly or not, lies inside the boundary.

    libgit2 reads includes while it opens the repository, so they are
    followed here first, as it follows them: ``include.path`` and every
    ``includeIf.<condition>.path`` (whatever the condition), relative to the
    including file's directory, nested up to libgit2's depth; a path starting
    with ``~`` counts as outside. The whole of every file is parsed (at most
    ``_MAX_CONFIG_BYTES`` together). Nothing outside is ever opened, and every
    refusal for an outside include is the same, so the outcome depends only on
    where the path resolves, never on whether a file outside exists or what
    it holds.
    """
    pending, budget = [(path, 0)], _MAX_CONFIG_BYTES
    while pending:
        config, depth = pending.pop()
        if depth:
            budget -= _INCLUDE_COST
        content = _read_config(_require_inside(config, boundary, "the config"), budget)
        if content is None:
            continue  # missing: libgit2 skips it too
        budget -= len(content)
        for value in _config_include_paths(content):
            included = os.path.join(os.path.dirname(config), os.fsdecode(value))
            if value.startswith(b"~") or not _inside(included, boundary):
                raise RepositoryRefused(_INCLUDE_OUTSIDE)
            if depth + 1 >= _MAX_INCLUDE_DEPTH:
                raise RepositoryRefused("config includes nest deeper than libgit2 reads")
            pending.append((included, depth + 1))


def _read_config(real_path: str, budget: int) -> bytes | None:
    if budget < 0:
        raise RepositoryRefused("the repository config is too large")
    try:
        content = _read_small(real_path, budget + 1)
    except FileNotFoundError:
        return None
    if len(content) > budget:
        raise RepositoryRefused("the repository config is too large")
    return content


def _check_alternates(objects_dir: str, boundary: str) -> None:
    pending, seen = [(objects_dir, 0)], set()
    while pending:
        directory, depth = pending.pop()
        alternates = os.path.join(directory, "info", "alternates")
        if directory in seen or not os.path.lexists(alternates):
            continue
        seen.add(directory)
        for line in _read_small(_require_inside(alternates, boundary, "alternates"), 64 * 1024).splitlines():
            line = line.strip()
            if line and not line.startswith(b"#"):
                if depth >= _MAX_ALTERNATE_DEPTH:
                    raise RepositoryRefused("alternates nest too deep")
                other = _require_inside(os.path.join(directory, os.fsdecode(line)), boundary, "an alternate")
                if os.path.isdir(other):
                    _check_git_dir_files(other, boundary, skip_unread=False)  # libgit2 reads its packs and objects
                pending.append((other, depth + 1))


# --------------------------------------------------------------------------
# Config syntax, as libgit2 parses it (src/libgit2/config_parse.c), for includes only
# --------------------------------------------------------------------------

_CONFIG_SPACE = b" \t\n\r\v\f"  # git__isspace
_CONFIG_UNPARSABLE = "the repository config cannot be parsed"
_CONFIG_NAME = re.compile(rb"[A-Za-z0-9-]+")
_CONFIG_SECTION_NAME = re.compile(rb"[A-Za-z0-9.-]*")
_CONFIG_SPACES = re.compile(rb"[ \t\n\r\v\f]*")
_CONFIG_SUBSECTION = re.compile(rb'(?:[^"\\]|\\.)*', re.DOTALL)
_CONFIG_COMMENT_TOKEN = re.compile(rb'["\\;#]')
_CONFIG_VALUE_TOKEN = re.compile(rb'\\(.?)|"', re.DOTALL)
_CONFIG_ESCAPES = {b"n": b"\n", b"t": b"\t", b"b": b"\b", b'"': b'"', b"\\": b"\\"}
# Fast paths, so that a 4 MiB config costs little (the slow path below gives the same answers):
# a run of blank lines, comments and variables whose value has no quote or backslash (nothing to
# unescape, no continuation),
_CONFIG_SIMPLE_LINES = re.compile(
    rb"(?:[ \t\r\v\f]*(?:[;#][^\n]*|[A-Za-z0-9-]+[ \t\r\v\f]*(?:=[^\"\\\n\0;#]*)?(?:[;#][^\n]*)?)?\n)*")
_CONFIG_SIMPLE_PATH = re.compile(
    rb"^[ \t\r\v\f]*path[ \t\r\v\f]*=[ \t\r\v\f]*([^\"\\\n\0;#]*)", re.MULTILINE | re.IGNORECASE)
# and a run of lines continuing a value without quotes, escapes or comments (or blank ones).
_CONFIG_CONTINUED_LINES = re.compile(rb"(?:[^\"\\\n\0;#]*\\[ \t\r\v\f]*\n|[ \t\r\v\f]*\n)*")
_CONFIG_CONTINUED_LINE = re.compile(rb"([^\"\\\n\0;#]*)\\[ \t\r\v\f]*\n|[ \t\r\v\f]*\n")


def _run_end(pattern: re.Pattern[bytes], text: bytes, position: int) -> int:
    """Where a run of ``pattern`` starting at ``position`` ends: these patterns match the empty string."""
    run = pattern.match(text, position)
    assert run is not None  # a pattern that matches b"" matches anywhere
    return run.end()


def _config_include_paths(content: bytes) -> list[bytes]:
    r"""The values of ``include.path`` and ``includeIf.<anything>.path`` in one config file.

    Follows libgit2's parser, quirks included: ``[section]``,
    ``[section.sub]`` and ``[section "sub"]`` headers (names case-insensitive,
    a quoted subsection keeps its case and takes ``\x`` escapes), more on the
    header's line (``[include] path = x``), ``#``/``;`` comments outside
    quotes, quoted values with ``\n \t \b \" \\`` escapes, a trailing backslash
    continuing the value on the next line, and each line ending at a NUL. A
    file libgit2 would fail to parse is refused: it may have read includes
    before the error. Iterative, and linear in the file's size.
    """
    if content[:1] in (b"", b"\0"):
        return []  # libgit2: an empty file
    if content.startswith(b"\xef\xbb\xbf"):
        content = content[3:]
    found, section, position = [], None, 0
    while position < len(content):
        simple = _run_end(_CONFIG_SIMPLE_LINES, content, position)
        if simple > position:
            if _names_includes(section):
                values = _CONFIG_SIMPLE_PATH.findall(content, position, simple)
                found += [value.rstrip(_CONFIG_SPACE) for value in values]
            position = simple
            continue
        rest, position = _config_line(content, position)
        while True:
            text = rest.lstrip(_CONFIG_SPACE)
            if not text or text[:1] in (b";", b"#"):
                break
            if text[:1] == b"[":
                section, rest = _config_section_header(text)
                continue  # the rest of the line is read as a line of its own
            name, value, position = _config_variable(text, content, position)
            if value is not None and name.lower() == b"path" and _names_includes(section):
                found.append(value)
            break
    return found


def _names_includes(section: bytes | None) -> bool:
    # libgit2 follows "include.path", and "includeif.<condition>.path" for the conditions it knows.
    return section is not None and (section in (b"include", b"includeif") or section.startswith(b"includeif."))


def _config_line(content: bytes, start: int) -> tuple[bytes, int]:
    """The line from ``start``, newline kept, and where the next one begins."""
    end = content.find(b"\n", start)
    end = len(content) if end < 0 else end + 1
    return content[start:end], end


def _c_string(text: bytes) -> bytes:
    return text.split(b"\0", 1)[0]  # libgit2 copies a line with strndup before parsing it


def _config_section_header(text: bytes) -> tuple[bytes, bytes]:
    """``(section name, rest of the line)`` for a line starting with ``[``: parse_section_header."""
    rest, text = text, _c_string(text)
    if b"]" not in text:
        raise RepositoryRefused(_CONFIG_UNPARSABLE)
    end = _run_end(_CONFIG_SECTION_NAME, text, 1)
    char = text[end:end + 1]
    if char and char in _CONFIG_SPACE:
        return _config_subsection(text, rest, end + 1, text[1:end].lower())
    if char != b"]" or end == 1:
        raise RepositoryRefused(_CONFIG_UNPARSABLE)
    return text[1:end].lower(), rest[end + 1:]


def _config_subsection(text: bytes, rest: bytes, position: int, base: bytes) -> tuple[bytes, bytes]:
    """``[base "sub"]``: parse_subsection_header (a backslash takes any character)."""
    position = _run_end(_CONFIG_SPACES, text, position)
    if text[position:position + 1] != b'"' or text.rfind(b'"') == position:
        raise RepositoryRefused(_CONFIG_UNPARSABLE)
    # libgit2 stops at its last quote, or at an unescaped one before: the same place, or an error either way.
    end = _run_end(_CONFIG_SUBSECTION, text, position + 1)
    if text[end:end + 2] != b'"]':
        raise RepositoryRefused(_CONFIG_UNPARSABLE)
    return base + b"." + re.sub(rb"\\(.)", rb"\1", text[position + 1:end], flags=re.DOTALL), rest[end + 2:]


def _config_variable(text: bytes, content: bytes, position: int) -> tuple[bytes, bytes | None, int]:
    """``(name, value or None, where the next line begins)``: parse_variable and parse_multiline_variable."""
    line, quotes = _config_strip_comment(_c_string(text), 0)
    name = _CONFIG_NAME.match(line)
    if name is None:
        raise RepositoryRefused(_CONFIG_UNPARSABLE)
    after = line[name.end():].lstrip(_CONFIG_SPACE)
    if not after:
        return name.group(), None, position  # "key" alone: true, never a path
    if after[:1] != b"=":
        raise RepositoryRefused(_CONFIG_UNPARSABLE)
    value, continued = _config_unescape(after[1:].lstrip(_CONFIG_SPACE))
    parts, in_quotes = [value], quotes % 2
    while continued and position < len(content):
        run = _run_end(_CONFIG_CONTINUED_LINES, content, position)
        if run > position:
            parts += _CONFIG_CONTINUED_LINE.findall(content, position, run)
            position = run
            continue
        raw, position = _config_line(content, position)
        raw = _c_string(raw)
        if not raw:
            break  # libgit2 takes a line starting with NUL for the end of the file
        more, in_quotes_after = _config_strip_comment(raw, in_quotes)
        if more:  # a comment or blank line inside a continued value is skipped, still continued
            more, continued = _config_unescape(more)
            parts.append(more)
        in_quotes = in_quotes_after
    return name.group(), b"".join(parts), position


def _config_strip_comment(line: bytes, quotes: int) -> tuple[bytes, int]:
    """strip_comments: cut at the first ``#``/``;`` after an even number of quotes and of backslashes,
    then trailing whitespace; also the count of quotes seen (a quote right after a backslash is not one)."""
    if b"#" not in line and b";" not in line:
        return line.rstrip(_CONFIG_SPACE), quotes + line.count(b'"') - line.count(b'\\"')
    run, run_end = 0, -2  # the run of backslashes ending at run_end
    for match in _CONFIG_COMMENT_TOKEN.finditer(line):
        index, char = match.start(), match.group()
        backslashes = run if run_end == index - 1 else 0
        if char == b'"' and (index == 0 or line[index - 1:index] != b"\\"):
            quotes += 1
        elif char in (b"#", b";") and quotes % 2 == 0 and backslashes % 2 == 0:
            return line[:index].rstrip(_CONFIG_SPACE), quotes
        elif char == b"\\":
            run, run_end = backslashes + 1, index
    return line.rstrip(_CONFIG_SPACE), quotes


def _config_unescape(text: bytes) -> tuple[bytes, bool]:
    """unescape_line: quotes dropped, the five escapes translated, any other escape an error;
    also whether a final backslash continues the value on the next line."""
    parts, position = [], 0
    for match in _CONFIG_VALUE_TOKEN.finditer(text):
        parts.append(text[position:match.start()])
        position = match.end()
        if match.group() == b'"':
            continue
        escaped = match.group(1)
        if not escaped:
            return b"".join(parts), True
        if escaped not in _CONFIG_ESCAPES:
            raise RepositoryRefused(_CONFIG_UNPARSABLE)
        parts.append(_CONFIG_ESCAPES[escaped])
    parts.append(text[position:])
    return b"".join(parts), False


def _check_opened(repo: pygit2.Repository, repo_dir: str, boundary: str, deadline: float) -> None:
    """What libgit2 takes from the config once open: the work tree and extra ignore/attribute files."""
    if repo.is_bare or os.path.realpath(repo.workdir) != os.path.realpath(repo_dir):
        raise RepositoryRefused("core.worktree points elsewhere")
    config = repo.config
    for key in ("core.excludesfile", "core.attributesfile"):
        value = config[key] if key in config else None
        if value is not None:  # "excludesfile" alone, with no "= path", names no file
            path = _require_inside(os.path.join(repo_dir, os.path.expanduser(value)), boundary, key)
            _require_no_special_file(path, key)
    if "core.symlinks" in config and not config.get_bool("core.symlinks"):
        raise RepositoryRefused("core.symlinks=false would read symlink targets")
    _check_worktree_files(repo_dir, boundary, deadline)


def _require_no_special_file(path: str | bytes, what: str) -> None:
    """libgit2 opens ``path`` (symlinks followed): a regular file, a directory or nothing at all will do."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise RepositoryRefused(f"{what} is a special file")


def _check_worktree_files(repo_dir: str, boundary: str, deadline: float) -> None:
    """The .gitignore/.gitattributes/.gitmodules files libgit2 reads: symlinks lead inside, none is special.

    Every directory is visited, nested repositories' too (libgit2 reads a
    nested repository's .gitignore, and walks into a directory with tracked
    files whatever else it holds), never a ``.git`` one. Iterative.
    """
    pending = [os.fsencode(repo_dir)]
    while pending:
        if time.monotonic() > deadline:
            raise _OutOfTime()
        directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError:
            continue
        for entry in entries:
            if entry.name in _WORKTREE_FILES_READ:
                name = os.fsdecode(entry.name)
                if entry.is_symlink():
                    _require_no_special_file(_require_inside(os.fsdecode(entry.path), boundary, name), name)
                elif not (entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False)):
                    raise RepositoryRefused(f"{name} is a special file")
            if entry.name != b".git" and entry.is_dir(follow_symlinks=False):
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
    return redact_credentials(urls[0]) if urls and urls[0] is not None else ""  # "url" alone has no value


def redact_credentials(url: str) -> str:
    """Drop ``user:token@`` from ``scheme://`` URLs; the browser must not get tokens."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", url)


def _limited_diff(repo: pygit2.Repository, boundary: str, max_bytes: int, deadline: float) -> str:
    """Staged (HEAD -> index), then unstaged and untracked (index -> work tree), under ``max_bytes``.

    Making text costs a file read per file, so it is avoided when the answer
    is known to be the size note: when the least text the files can make is
    over the limit already (30,000 untracked files), and past the limit. A
    file larger than the limit is never read (a 500 MiB sparse file would
    cost its size in memory, every scan): it counts by its size, a new binary
    one is git's one line made here. Sizes past the limit are estimated from
    file sizes. Raises _OutOfTime past ``deadline`` (checked between files).
    """
    head = repo.get(EMPTY_TREE) if repo.head_is_unborn else repo.head.peel(pygit2.Tree)
    staged = repo.index.diff_to_tree(head)
    # Submodules are left to _submodule_changes: libgit2 would open them, wherever their .git points.
    unstaged = repo.index.diff_to_workdir(_UNTRACKED | DiffOption.IGNORE_SUBMODULES)
    deltas = [(diff, index, delta) for diff in (staged, unstaged) for index, delta in enumerate(diff.deltas)]
    least = sum(_least_text_size(delta, max_bytes) for _, _, delta in deltas)
    if least > max_bytes:
        return too_large_note(least)
    parts, size = [], 0
    for diff, index, delta in deltas:
        if time.monotonic() > deadline:
            raise _OutOfTime()
        old_size, new_size = _file_sizes(repo, delta, new_in_workdir=diff is unstaged)
        if size > max_bytes:  # the note already: no text made from here on
            size += old_size + new_size
            continue
        new = delta.status in _NEW_FILES
        too_big = max(old_size, new_size) > max_bytes
        if too_big or (new and size + new_size > max_bytes) or (diff is unstaged and _special_in_workdir(repo, delta)):
            if not (new and _looks_binary(repo.workdir, delta.new_file.raw_path)):
                size += old_size + new_size  # no text made: never read whole
                continue
            text = _binary_new_file_text(delta) if too_big else _patch_text(diff[index], delta)
        else:
            text = _patch_text(diff[index], delta)
        size += len(text.encode("utf-8"))
        parts.append(text)
    for text in _submodule_changes(repo, boundary):
        size += len(text)
        parts.append(text)
    if size > max_bytes:
        return too_large_note(size)
    return "".join(parts)


def _least_text_size(delta: pygit2.DiffDelta, max_bytes: int) -> int:
    """A lower bound of git's text for one file: its header lines, plus all of a new or
    deleted file of at most 1 MiB (larger ones may be binary, a one-line note); a changed
    file larger than ``max_bytes`` counts by its size (it is never read)."""
    header = 4 * len(delta.new_file.raw_path) + 60
    if delta.status in _NEW_FILES or delta.status == DeltaStatus.DELETED:
        content = max(delta.new_file.size, delta.old_file.size)
        return header + (content if content <= 1024 * 1024 else 0)
    if max(delta.old_file.size, delta.new_file.size) > max_bytes:
        return header + delta.old_file.size + delta.new_file.size
    return header


def _file_sizes(repo: pygit2.Repository, delta: pygit2.DiffDelta, *, new_in_workdir: bool) -> tuple[int, int]:
    """The sizes of the two sides as libgit2 would load them: a work tree file's from lstat,
    a blob's from its object header (a tree side says 0, and the index says what its owner
    wrote there)."""
    old_size = _blob_size(repo, delta.old_file)
    new_size = delta.new_file.size if new_in_workdir else _blob_size(repo, delta.new_file)
    return old_size, new_size


def _blob_size(repo: pygit2.Repository, file: pygit2.DiffFile) -> int:
    if not file.id:  # no such side
        return file.size
    try:
        return max(file.size, repo.odb.read_header(file.id)[1])
    except (KeyError, ValueError, pygit2.GitError):
        return file.size  # missing: making its text fails as an error


def _special_in_workdir(repo: pygit2.Repository, delta: pygit2.DiffDelta) -> bool:
    """The work tree file is now a FIFO, socket or device (swapped since libgit2 listed it): never opened."""
    if delta.status == DeltaStatus.DELETED:
        return False
    try:
        mode = os.lstat(os.path.join(os.fsencode(repo.workdir), delta.new_file.raw_path)).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode))


def _looks_binary(workdir: str, raw_path: bytes) -> bool:
    """git's test (a NUL in the first 8000 bytes) on a work tree file; a symlink is not followed,
    and anything but a regular file (a FIFO swapped in) is not opened, or not read."""
    path = os.path.join(os.fsencode(workdir), raw_path)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        handle = os.open(path, _OPEN_FLAGS)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(handle).st_mode) and b"\0" in os.read(handle, 8000)
    finally:
        os.close(handle)


def _binary_new_file_text(delta: pygit2.DiffDelta) -> str:
    """git's text for a new binary file, from what is known without reading it (the index
    line only when its blob id is known: an untracked file's would need the whole file)."""
    path = delta.new_file.raw_path
    lines = [b"diff --git %s %s" % (_quoted(b"a/", path), _quoted(b"b/", path)),
             b"new file mode %o" % delta.new_file.mode]
    if delta.new_file.id:
        lines.append(b"index 0000000..%s" % str(delta.new_file.id)[:7].encode())
    lines.append(b"Binary files /dev/null and %s differ\n" % _quoted(b"b/", path))
    return _unquote_utf8_names(b"\n".join(lines)).decode("utf-8", "replace")


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
