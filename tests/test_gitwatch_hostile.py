"""A workspace is untrusted input: the hostile-input round (issue 16).

1. Special files never block. libgit2 opens a FIFO where it reads (the git
   dir's config, HEAD, refs, index, packed-refs, info, objects; .gitignore,
   .gitattributes, .gitmodules anywhere in the work tree) and waits in
   open() forever, holding the GIL: a thread's join timeout would never
   fire, so each read runs in a child process with a timeout. Elsewhere in
   the work tree libgit2 skips special files: an untracked FIFO is not
   listed, a tracked file replaced by one shows as deleted.
2. A file larger than the diff limit is known by its size and never read:
   a 500 MiB sparse file costs neither memory nor time.
3. Config includes are parsed as libgit2 parses them, in the whole config:
   an include leading outside leaves the repository out, whatever it names
   and whether or not that exists; the word "include" elsewhere, or an
   include inside, does not.
4. A tree of any depth is watched without recursion, and a watch that
   cannot be made is polling, never an exception.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

import pygit2
import pytest

import gitwatch.notify
import gitwatch.repository
from gitwatch import WorkspaceWatcher, scan_workspace
from gitwatch.repository import RepositoryRefused, read_repository
from tests.test_gitwatch import GENEROUS, git, make_repo
from tests.watchsession import WatchSession

ROOT = Path(__file__).resolve().parents[1]
READ_TIMEOUT = 30.0  # seconds: a read that does not block takes well under one, a child's start included
SECRET_URL = "https://example.com/bob-private-7f3c1e.git"


# --------------------------------------------------------------------------
# Reading in a child process: a blocked read is killed, never a hung test run
# --------------------------------------------------------------------------

_CHILD = """
import json, os, resource, sys, time
import gitwatch.repository as repository

repo_dir, boundary, swap = sys.argv[1], sys.argv[2], sys.argv[3:]
if swap:  # after libgit2 listed the files, before any is read: they become FIFOs
    real = repository._least_text_size
    def swap_then_measure(*args):
        while swap:
            path = os.path.join(repo_dir, swap.pop())
            os.unlink(path)
            os.mkfifo(path)
        return real(*args)
    repository._least_text_size = swap_then_measure
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
try:
    state = repository.read_repository(repo_dir, ".", boundary)
except repository.RepositoryRefused as refused:
    answer = {"refused": str(refused)}
else:
    answer = {"branch": state.branch, "remote_origin": state.remote_origin, "unified_diff": state.unified_diff,
              "error": state.error}
answer["seconds"] = time.monotonic() - started
answer["rss_growth_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps(answer))
"""


def read_elsewhere(repo: Path, boundary: Path, *swap: str) -> dict:
    """read_repository in a child process; fails the test if it does not finish in READ_TIMEOUT."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(repo), str(boundary), *swap],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=READ_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        done = None  # killed
    if done is None:
        pytest.fail(f"reading the repository blocked for {READ_TIMEOUT} s")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


# --------------------------------------------------------------------------
# 1. Special files
# --------------------------------------------------------------------------


def _fifo(path: Path) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)


def _loose_object(repo: Path, revision: str) -> Path:
    oid = git(repo, "rev-parse", revision).strip()
    return repo / ".git" / "objects" / oid[:2] / oid[2:]


def _symlinked_refs(repo: Path) -> None:
    refs = repo.parent / "elsewhere-refs"  # inside the workspace: only the FIFO in it is wrong
    (repo / ".git" / "refs").rename(refs)
    (repo / ".git" / "refs").symlink_to(refs, target_is_directory=True)
    _fifo(refs / "heads" / "main")


def _symlink_to_fifo(repo: Path, name: str) -> None:
    _fifo(repo.parent / "a-fifo")
    (repo / name).unlink(missing_ok=True)
    (repo / name).symlink_to(repo.parent / "a-fifo")


def _nested_repository_gitignore(repo: Path) -> None:
    nested = make_repo(repo / "nested")
    _fifo(nested / ".gitignore")


def _bound_socket(path: Path) -> None:
    """A socket file at ``path`` (it stays when the socket closes); bound where its name is short enough."""
    short = Path(tempfile.mkdtemp(prefix="sock"))
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(short / "s"))
    path.unlink(missing_ok=True)
    (short / "s").rename(path)
    short.rmdir()


# Where libgit2 reads: as a FIFO, each of these blocked the read forever (HEAD: libgit2 took the
# repository for missing; a socket fails to open).
SPECIAL_WHERE_READ = {
    "refs/heads/main": lambda repo: _fifo(repo / ".git" / "refs" / "heads" / "main"),
    "config": lambda repo: _fifo(repo / ".git" / "config"),
    "HEAD": lambda repo: _fifo(repo / ".git" / "HEAD"),
    "index": lambda repo: _fifo(repo / ".git" / "index"),
    "packed-refs": lambda repo: (git(repo, "pack-refs", "--all"), _fifo(repo / ".git" / "packed-refs")),
    "info/exclude": lambda repo: _fifo(repo / ".git" / "info" / "exclude"),
    "info/attributes": lambda repo: _fifo(repo / ".git" / "info" / "attributes"),
    "objects/info/alternates": lambda repo: _fifo(repo / ".git" / "objects" / "info" / "alternates"),
    "commondir": lambda repo: _fifo(repo / ".git" / "commondir"),
    "config.worktree": lambda repo: _fifo(repo / ".git" / "config.worktree"),
    "shallow": lambda repo: _fifo(repo / ".git" / "shallow"),
    "loose commit object": lambda repo: _fifo(_loose_object(repo, "HEAD")),
    "loose blob object": lambda repo: _fifo(_loose_object(repo, "HEAD:README.md")),
    "symlinked config to a FIFO inside": lambda repo: _symlink_to_fifo(repo, ".git/config"),
    "symlinked refs dir holding a FIFO": _symlinked_refs,
    "socket as config": lambda repo: _bound_socket(repo / ".git" / "config"),
    ".gitignore": lambda repo: _fifo(repo / ".gitignore"),
    ".gitattributes": lambda repo: _fifo(repo / ".gitattributes"),
    ".gitmodules": lambda repo: _fifo(repo / ".gitmodules"),
    "sub/.gitignore": lambda repo: _fifo(repo / "sub" / ".gitignore"),
    "sub/.gitattributes": lambda repo: _fifo(repo / "sub" / ".gitattributes"),
    "nested repository's .gitignore": _nested_repository_gitignore,
    "symlinked .gitignore to a FIFO inside": lambda repo: _symlink_to_fifo(repo, ".gitignore"),
}


@pytest.fixture
def changed_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A repository with a staged, a modified and an untracked file, in a workspace."""
    workspace = tmp_path / "workspace"
    repo = make_repo(workspace / "repo")
    (repo / "sub").mkdir()
    (repo / "sub" / "tracked.txt").write_text("tracked\n")
    git(repo, "add", "sub")
    git(repo, "commit", "-q", "-m", "sub")
    (repo / "README.md").write_text("changed\n")
    (repo / "sub" / "tracked.txt").write_text("changed too\n")
    (repo / "untracked.txt").write_text("new\n")
    return workspace, repo


@pytest.mark.parametrize("make_special", SPECIAL_WHERE_READ.values(), ids=SPECIAL_WHERE_READ.keys())
def test_a_special_file_where_libgit2_reads_leaves_the_repository_out_without_blocking(
    changed_repo: tuple[Path, Path], make_special
) -> None:
    workspace, repo = changed_repo
    make_special(repo)

    answer = read_elsewhere(repo, workspace)

    assert "refused" in answer, answer
    assert answer["seconds"] < 5


def test_special_files_elsewhere_in_the_work_tree_are_left_out_of_the_diff(changed_repo: tuple[Path, Path]) -> None:
    """What libgit2 does with them: an untracked FIFO is not listed, a tracked file replaced by one is deleted."""
    workspace, repo = changed_repo
    _fifo(repo / "untracked-fifo")
    _fifo(repo / "deeper" / "untracked-fifo")
    _fifo(repo / "sub" / "tracked.txt")
    _bound_socket(repo / "a-socket")

    answer = read_elsewhere(repo, workspace)

    assert answer["branch"] == "main" and answer["error"] == ""
    diff = answer["unified_diff"]
    assert "+changed\n" in diff and "b/untracked.txt" in diff
    assert "untracked-fifo" not in diff and "a-socket" not in diff
    assert "diff --git a/sub/tracked.txt b/sub/tracked.txt\ndeleted file mode 100644" in diff


def test_files_swapped_for_fifos_after_listing_are_never_opened(changed_repo: tuple[Path, Path]) -> None:
    """libgit2 lists a regular file, then it becomes a FIFO before its text is made: counted, not read."""
    workspace, repo = changed_repo

    answer = read_elsewhere(repo, workspace, "sub/tracked.txt", "untracked.txt")

    assert answer["branch"] == "main"
    diff = answer["unified_diff"]
    assert "+changed\n" in diff  # README.md, still read
    assert "tracked.txt" not in diff and "untracked.txt" not in diff


def test_a_workspace_with_a_fifo_repository_still_gets_its_message(changed_repo: tuple[Path, Path]) -> None:
    workspace, repo = changed_repo
    make_repo(workspace / "fine")
    _fifo(repo / ".git" / "refs" / "heads" / "main")

    states = scan_workspace(workspace)

    assert list(states) == ["fine"]


# --------------------------------------------------------------------------
# 2. Files larger than the diff limit
# --------------------------------------------------------------------------

HALF_GIB = 500 * 2**20


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)


def test_a_modified_file_larger_than_the_limit_is_known_by_its_size(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    repo = make_repo(workspace)
    _sparse(repo / "README.md", HALF_GIB)  # tracked, now 500 MiB of holes

    answer = read_elsewhere(repo, workspace)

    note = re.fullmatch(r"Diff too large to display \((\d+) bytes\)\.", answer["unified_diff"])
    assert note and int(note.group(1)) >= HALF_GIB  # its size counts
    assert answer["rss_growth_kib"] < 100 * 1024, answer
    assert answer["seconds"] < 2.0, answer


def test_a_new_binary_file_larger_than_the_limit_is_one_line_made_without_reading_it(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    repo = make_repo(workspace)
    _sparse(repo / "big.raw", HALF_GIB)
    (repo / "README.md").write_text("hello\nedited\n")

    answer = read_elsewhere(repo, workspace)

    diff = answer["unified_diff"]
    assert "diff --git a/big.raw b/big.raw\nnew file mode 100644\n" in diff
    assert "Binary files /dev/null and b/big.raw differ\n" in diff and "+edited\n" in diff
    assert answer["rss_growth_kib"] < 100 * 1024, answer
    assert answer["seconds"] < 2.0, answer


def test_a_large_blob_removed_from_the_index_is_known_by_its_object_size(tmp_path: Path) -> None:
    """The tree side of a staged change has no size in libgit2's delta: the object's header has it."""
    workspace = tmp_path / "workspace"
    repo = make_repo(workspace)
    _sparse(repo / "big.raw", 200 * 2**20)  # compresses to a few hundred KiB
    git(repo, "add", "big.raw")
    git(repo, "commit", "-q", "-m", "big")
    git(repo, "rm", "-q", "--cached", "big.raw")
    (repo / "big.raw").unlink()

    answer = read_elsewhere(repo, workspace)

    note = re.fullmatch(r"Diff too large to display \((\d+) bytes\)\.", answer["unified_diff"])
    assert note and int(note.group(1)) >= 200 * 2**20
    assert answer["rss_growth_kib"] < 100 * 1024, answer


# --------------------------------------------------------------------------
# 3. Config includes
# --------------------------------------------------------------------------


@pytest.fixture
def bob(tmp_path: Path) -> Path:
    """Another user's repository, outside alice's directory, with a private origin."""
    repo = make_repo(tmp_path / "bob" / "repo")
    git(repo, "remote", "add", "origin", SECRET_URL)
    return repo


def _append(path: Path, text: str) -> None:
    with open(path, "a") as handle:
        handle.write(text)


def _padding(size: int) -> str:
    line = "# " + "x" * 97 + "\n"
    return line * (size // len(line) + 1)


def _messages(workspace: Path) -> list[dict]:
    with WatchSession(workspace) as session:
        return [session.initial_message(), session.poll(refresh=True)]


def _roots(message: dict) -> dict[str, dict]:
    return {entry["repo_root"]: entry for entry in message["repositories"]}


def test_an_include_after_megabytes_of_comments_is_found(tmp_path: Path, bob: Path) -> None:
    workspace = tmp_path / "alice"
    make_repo(workspace / "fine")
    repo = make_repo(workspace / "case")
    _append(repo / ".git" / "config", _padding(1_200_000) + f"[include]\n\tpath = {bob / '.git' / 'config'}\n")

    messages = _messages(workspace)

    assert SECRET_URL not in json.dumps(messages)
    assert set(_roots(messages[0])) == {"fine"}


@pytest.mark.parametrize("padding", [0, 1_200_000], ids=["plain", "after 1.2 MB of comments"])
def test_an_include_outside_looks_the_same_whether_the_file_exists_or_not(tmp_path: Path, padding: int) -> None:
    results = []
    for target in ("/etc/passwd", "/nonexistent/config"):
        workspace = tmp_path / f"workspace-{len(results)}"
        repo = make_repo(workspace / "case")
        _append(repo / ".git" / "config", _padding(padding) + f"[include]\n\tpath = {target}\n")
        with pytest.raises(RepositoryRefused) as refused:
            read_repository(str(repo), "case", str(workspace))
        results.append((str(refused.value), scan_workspace(workspace)))

    assert results[0] == results[1]
    assert results[0][1] == {}


def test_the_word_include_in_a_branch_or_a_url_is_no_reason_to_leave_a_repository_out(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    repo = make_repo(workspace, branch="fix-include-paths")
    git(repo, "remote", "add", "origin", "https://example.com/include/include-what-you-use.git")
    git(repo, "config", "branch.fix-include-paths.remote", "origin")
    git(repo, "config", "branch.fix-include-paths.merge", "refs/heads/fix-include-paths")
    git(repo, "config", "alias.include", "!echo include.path = /etc/passwd")  # a value, not a key

    state = scan_workspace(workspace)["."]

    assert state.branch == "fix-include-paths"
    assert state.remote_origin == "https://example.com/include/include-what-you-use.git"


def test_an_include_inside_the_repository_is_read_and_its_values_used(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    repo = make_repo(workspace)
    (repo / ".git" / "extra.config").write_text('[include]\n\tpath = more/nested.config\n')
    (repo / ".git" / "more").mkdir()
    (repo / ".git" / "more" / "nested.config").write_text(
        '[remote "origin"]\n\turl = https://example.com/from-an-include.git\n')
    git(repo, "config", "include.path", "extra.config")  # relative to the including file's directory
    (repo / "new.txt").write_text("new\n")

    state = scan_workspace(workspace)["."]

    assert state.remote_origin == "https://example.com/from-an-include.git"
    assert "+++ b/new.txt" in state.unified_diff


# Each names bob's config its own way; libgit2 would read it (or try to) every time.
INCLUDES_OUTSIDE = {
    "includeIf gitdir": '[includeIf "gitdir:{gitdir}/"]\n\tpath = {bob}\n',
    "includeIf onbranch": '[includeIf "onbranch:main"]\n\tpath = {bob}\n',
    "includeIf that does not match": '[includeIf "gitdir:/nowhere/"]\n\tpath = {bob}\n',
    "key on the header's line": "[include] path = {bob}\n",
    "case and quotes": '[InClUdE]\n\tPATH = "{bob}" ; a comment\n',
    "continuation line": "[include]\n\tpath = {bob_dir}\\\nconfig\n",
    "quotes mid-value": '[include]\n\tpath = "{bob_dir}"co"nfig"\n',
    "relative, leading out": "[include]\n\tpath = {relative}\n",
    "tilde": "[include]\n\tpath = ~/config\n",
    "nested inside then out": "[include]\n\tpath = inner.config\n",
}


@pytest.mark.parametrize("line", INCLUDES_OUTSIDE.values(), ids=INCLUDES_OUTSIDE.keys())
def test_an_include_leading_outside_leaves_the_repository_out(tmp_path: Path, bob: Path, line: str) -> None:
    workspace = tmp_path / "alice"
    repo = make_repo(workspace / "case")
    bob_config = bob / ".git" / "config"
    (repo / ".git" / "inner.config").write_text(f"[include]\n\tpath = {bob_config}\n")
    _append(repo / ".git" / "config", line.format(
        gitdir=repo / ".git", bob=bob_config, bob_dir=f"{bob / '.git'}/",
        relative=os.path.relpath(bob_config, repo / ".git"),
    ))

    messages = _messages(workspace)

    assert SECRET_URL not in json.dumps(messages)
    assert _roots(messages[0]) == {}


def test_a_config_larger_than_4_mib_is_refused(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    repo = make_repo(workspace)
    _append(repo / ".git" / "config", _padding(4 * 1024 * 1024))

    assert scan_workspace(workspace) == {}


# Tricky configs: the include paths found here must be libgit2's own.
CONFIGS = [
    b"[include]\n\tpath = a\n",
    b"[include] path = a ; c\n",
    b"[include]path=a[x]\n",
    b'[Include]\n\tPath = "a b " # c\n',
    b'[include]\n\tpath = "a;b" ; c\n',
    b"[include]\n\tpath = a\\\n  b\n",
    b"[include]\n\tpath = a\\\n# a comment inside\n\n  b\n",
    b'[include]\n\tpath = "a\\\n b"\n',
    b'[include]\n\tpath = a\\tb\\"c\\\\d\n',
    b"[include]\n\tpath = a\\qb\n",
    b'[includeIf "gitdir:/x/"]\n\tpath = a\n',
    b'[includeIf "a\\"b\\\\c"] path = a\n',
    b"[includeif.x]\n\tpath = a\n",
    b'[include "x"]\n\tpath = not-an-include\n',
    b"[include.x]\n\tpath = not-an-include\n",
    b'[branch "fix-include-paths"]\n\tremote = origin\n[remote "origin"]\n\turl = https://x/include\n',
    b"path = no section\n[include]\n",
    b"[include]\n\tpath\n",
    b"[include]\n\tpath =\n",
    b"[include]\n\tpath = a\0b\n\tpath = c\n",
    b"[include]\0\n\tpath = a\n",
    b"\xef\xbb\xbf[include]\n\tpath = a\n",
    b"\0[include]\n\tpath = a\n",
    b"[include\n\tpath = a\n",
    b"[]\n",
    b'[x "y" ]\n',
    b"[include]\r\n\tpath = a\r\n",
    b"[s]\n\ta = x\\\n[include]\n\tpath = swallowed\n",
    b'[s]\n\ta = "x\\\n[include] ; " still inside\n\tpath = b\n',
    b"[include]\n\tpath = a \\# b\n\tpath = c \\\\# d\n",
]


@pytest.mark.parametrize("content", CONFIGS, ids=range(len(CONFIGS)))
def test_the_include_parser_agrees_with_libgit2(tmp_path: Path, content: bytes) -> None:
    config = tmp_path / "config"
    config.write_bytes(content)
    try:
        ours = [value.decode() for value in gitwatch.repository._config_include_paths(content)]
    except RepositoryRefused:
        ours = "unparsable"
    try:
        theirs = [
            entry.value for entry in pygit2.Config(str(config))
            if entry.value is not None and (entry.name == "include.path" or entry.name.startswith("includeif."))
            and entry.name.endswith(".path")
        ]
    except pygit2.GitError:
        theirs = "unparsable"

    assert ours == theirs


# --------------------------------------------------------------------------
# 4. Trees of any depth, and watches that cannot be made
# --------------------------------------------------------------------------

DEPTH = 2000


@pytest.fixture
def deep_chains():
    """Makes ``<top>/d/d/.../d`` (``depth`` levels) without recursion, and removes it the same way:
    shutil.rmtree, and pytest's own clean-up, recurse once per level on Python 3.11."""
    made: list[list] = []

    def make(top: Path, depth: int = DEPTH) -> list:
        top.mkdir(parents=True, exist_ok=True)
        handle = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
        for _ in range(depth):
            os.mkdir("d", dir_fd=handle)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=handle)
            os.close(handle)
            handle = child
        os.close(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=handle))
        os.close(handle)
        chain = [top, depth]
        made.append(chain)
        return chain  # set chain[0] when it moves

    yield make
    for top, depth in made:
        _remove_chain(top, depth)


def _remove_chain(top: Path, depth: int) -> None:
    if not top.exists():
        return
    handle = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=handle)
        os.close(handle)
        handle = child
    for name in os.listdir(handle):
        os.unlink(name, dir_fd=handle)
    for _ in range(depth):
        parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=handle)
        os.close(handle)
        handle = parent
        os.rmdir("d", dir_fd=handle)
    os.close(handle)


def test_a_directory_2000_deep_is_watched_and_the_socket_gets_its_message(tmp_path: Path, deep_chains) -> None:
    workspace = tmp_path / "workspace"
    repo = make_repo(workspace / "repo")
    (repo / "README.md").write_text("changed\n")
    deep_chains(workspace / "deep")

    with WorkspaceWatcher(workspace) as watcher:
        (workspace / "top.txt").write_text("hello\n")
        assert watcher.wait_for_change(GENEROUS) is True

    with WatchSession(workspace) as session:
        message = session.initial_message()
    assert message["type"] == "changes"
    assert "+changed" in _roots(message)["repo"]["unified_diff"]


def test_a_deep_directory_moved_in_leaves_every_watch_of_the_process_working(tmp_path: Path, deep_chains) -> None:
    """A directory that appears is walked in the thread that reads inotify for every watch."""
    alice, carol = tmp_path / "alice", tmp_path / "carol"
    alice.mkdir()
    carol.mkdir()
    chain = deep_chains(tmp_path / "staging" / "tree", 1500)
    with WorkspaceWatcher(alice) as alices, WorkspaceWatcher(carol) as carols:
        (chain[0]).rename(alice / "tree")
        chain[0] = alice / "tree"
        assert alices.wait_for_change(GENEROUS) is True

        (carol / "file.txt").write_text("hello\n")
        assert carols.wait_for_change(GENEROUS) is True
        (alice / "file.txt").write_text("hello\n")
        assert alices.wait_for_change(GENEROUS) is True


def _failing(error: BaseException) -> Callable[..., None]:
    def fail(*args: object, **kwargs: object) -> None:
        raise error

    return fail


@pytest.mark.parametrize(
    "error", [RecursionError("maximum recursion depth exceeded"), RuntimeError("can't start new thread")],
    ids=["RecursionError", "RuntimeError"],
)
def test_any_failure_to_make_a_watch_falls_back_to_polling(tmp_path: Path, monkeypatch, error: BaseException) -> None:
    registry = gitwatch.notify._WatchRegistry()
    monkeypatch.setattr(gitwatch.notify, "_REGISTRY", registry)
    monkeypatch.setattr(registry, "_add_tree", _failing(error))  # making the inotify watches

    with WorkspaceWatcher(tmp_path, poll_interval=0.2) as watcher:
        assert watcher.mode == "polling"
        assert watcher.wait_for_change(GENEROUS) is True


def test_an_observer_that_cannot_start_means_polling(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(gitwatch.notify, "_REGISTRY", gitwatch.notify._WatchRegistry())  # no notifier thread yet
    monkeypatch.setattr(threading.Thread, "start", _failing(RuntimeError("can't start new thread")))

    with WorkspaceWatcher(tmp_path, poll_interval=0.2) as watcher:
        assert watcher.mode == "polling"
        assert watcher.wait_for_change(GENEROUS) is True


def _end_the_thread() -> None:
    raise SystemExit  # escapes the loop's ``except Exception``: the thread ends


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # that thread's end, on purpose
def test_a_dead_inotify_reader_is_noticed_and_replaced(tmp_path: Path, monkeypatch) -> None:
    with WorkspaceWatcher(tmp_path) as watcher:
        assert watcher.mode == "events"
        registry = gitwatch.notify._REGISTRY
        reader = registry._thread
        with monkeypatch.context() as patch:
            patch.setattr(registry, "_serve_once", _end_the_thread)  # as if an exception had ended its thread
            registry._wake()
            reader.join(GENEROUS)
        assert not reader.is_alive()
        assert watcher.wait_for_change(GENEROUS) is True  # the new watch: events may have been missed

        (tmp_path / "file.txt").write_text("hello\n")
        assert watcher.wait_for_change(GENEROUS) is True
        assert watcher.mode == "events" and gitwatch.notify._REGISTRY.delivering()


@pytest.mark.parametrize("line", ["[core]\n\texcludesfile\n", "[core]\n\tattributesfile\n", '[remote "origin"]\n\turl\n'])
def test_a_config_key_with_no_value_names_nothing_and_the_repository_is_read(tmp_path: Path, line: str) -> None:
    """``excludesfile`` (or a remote's ``url``) alone, with no ``= value``: pygit2 gives None, which names no
    file and no URL; the repository is read as usual, not turned into an error state."""
    repo = make_repo(tmp_path / "repo")
    (repo / "README.md").write_text("changed\n")
    with open(repo / ".git" / "config", "a") as config:
        config.write(line)

    state = scan_workspace(tmp_path)["repo"]

    assert state.error in (None, "")
    assert state.branch == "main" and state.remote_origin == ""
    assert "+changed" in state.unified_diff
