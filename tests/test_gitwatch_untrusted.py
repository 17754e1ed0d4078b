"""A workspace is untrusted input: the corpus of attacks on the git watch.

1. Nothing the workspace names runs. The corpus has every hook git knows
   (in .git/hooks and through core.hooksPath), clean/smudge/process filters
   (in the repository's config, in an [include]d file, in a submodule),
   core.fsmonitor, diff.external, textconv, core.pager, core.sshCommand,
   credential helpers and a few more programs git may start; each writes a
   marker file outside the workspace. The watch (first message, refresh, a
   change) must leave no marker, and a sanity test shows real git commands
   in an identical corpus *do* leave them, so the corpus is live.
2. Nothing outside the owner's directory is read: each case plants a secret
   outside and points at it one way; the secret must never appear.
"""

from __future__ import annotations

import os
import pty
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

import gitwatch.scan
from gitwatch import scan_workspace
from tests.test_gitwatch import GENEROUS, _test_git_env, git, make_repo
from tests.watchsession import WatchSession

HOOKS = [
    "applypatch-msg", "pre-applypatch", "post-applypatch", "pre-commit", "pre-merge-commit",
    "prepare-commit-msg", "commit-msg", "post-commit", "pre-rebase", "post-checkout", "post-merge",
    "pre-push", "pre-receive", "update", "proc-receive", "post-receive", "post-update",
    "reference-transaction", "push-to-checkout", "pre-auto-gc", "post-rewrite", "sendemail-validate",
    "fsmonitor-watchman", "p4-changelist", "p4-prepare-changelist", "p4-post-changelist", "p4-pre-submit",
    "post-index-change",
]

# Programs git starts, named by config: (key, shell command writing a marker).
CONFIG_PROGRAMS = [
    ("core.fsmonitor", "{touch}fsmonitor"),
    ("diff.external", "{touch}diff-external"),
    ("core.pager", "{touch}pager; cat"),
    ("core.sshCommand", "{touch}ssh-command"),
    ("credential.helper", "!{touch}credential-helper"),
    ("core.editor", "{touch}editor"),
    ("sequence.editor", "{touch}sequence-editor"),
    ("uploadpack.packObjectsHook", "{touch}pack-objects-hook"),
]

def _script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _touch(markers: Path) -> str:
    return f"touch {markers}/"


def build_corpus(workspace: Path, markers: Path) -> None:
    """Repositories in ``workspace`` naming programs that write into ``markers``."""
    markers.mkdir(exist_ok=True)
    touch = _touch(markers)

    hooks = make_repo(workspace / "hooks")
    for hook in HOOKS:
        _script(hooks / ".git" / "hooks" / hook, f"{touch}hook-{hook}; cat >/dev/null 2>&1; exit 0")
    (hooks / "untracked.txt").write_text("new\n")  # an index write would run post-index-change
    (hooks / "README.md").write_text("changed\n")

    hooks_path = make_repo(workspace / "hooks-path")
    (hooks_path / "my-hooks").mkdir()
    for hook in HOOKS:
        _script(hooks_path / "my-hooks" / hook, f"{touch}hooks-path-{hook}; exit 0")
    git(hooks_path, "config", "core.hooksPath", str(hooks_path / "my-hooks"))
    (hooks_path / "untracked.txt").write_text("new\n")

    process = make_repo(workspace / "filter-process")
    git(process, "config", "filter.proc.process", f"{touch}filter-process")
    git(process, "config", "filter.proc.required", "true")
    (process / ".gitattributes").write_text("* filter=proc\n")
    (process / "README.md").write_text("changed\n")

    filters = make_repo(workspace / "filters")
    _filter_config(filters, "evil", touch, "filter")
    git(filters, "config", "diff.evil.textconv", f"{touch}textconv; cat")
    for key, value in CONFIG_PROGRAMS:
        git(filters, "config", key, value.format(touch=touch))
    git(filters, "remote", "add", "origin", "ssh://example.invalid/repo.git")
    (filters / ".gitattributes").write_text("* filter=evil diff=evil\n")
    (filters / "README.md").write_text("changed\n")
    (filters / "new.txt").write_text("new\n")

    included = make_repo(workspace / "included")
    extra = included / ".git" / "extra.cfg"
    extra.write_text(f'[filter "inc"]\n\tclean = {touch}include-filter; cat\n\tsmudge = {touch}include-filter; cat\n')
    git(included, "config", "include.path", "extra.cfg")
    (included / ".gitattributes").write_text("* filter=inc\n")
    (included / "README.md").write_text("changed\n")

    parent = make_repo(workspace / "parent")
    sub_source = make_repo(workspace.parent / f"{workspace.name}-sub-source")
    git(parent, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub_source), "sub")
    git(parent, "commit", "-q", "-m", "add sub")
    sub = parent / "sub"
    _filter_config(sub, "subevil", touch, "submodule-filter")
    (sub / ".gitattributes").write_text("* filter=subevil\n")
    (sub / "README.md").write_text("HELLO\n")  # same size: git must hash it, through the filter


def _filter_config(repo: Path, name: str, touch: str, label: str) -> None:
    git(repo, "config", f"filter.{name}.clean", f"{touch}{label}-clean; cat")
    git(repo, "config", f"filter.{name}.smudge", f"{touch}{label}-smudge; cat")
    git(repo, "config", f"filter.{name}.required", "true")


def markers_in(markers: Path) -> list[str]:
    return sorted(os.listdir(markers))


def test_the_watch_runs_nothing_the_workspace_names(tmp_path: Path) -> None:
    workspace, markers = tmp_path / "workspace", tmp_path / "markers"
    workspace.mkdir()
    build_corpus(workspace, markers)
    assert markers_in(markers) == []  # building it ran nothing

    with WatchSession(workspace) as session:
        first = session.initial_message()
        session.poll(refresh=True)
        (workspace / "filters" / "another.txt").write_text("another\n")
        (workspace / "hooks" / "another.txt").write_text("another\n")
        assert session.wait(GENEROUS)
        change = session.poll()

    assert markers_in(markers) == []
    roots = {entry["repo_root"] for entry in first["repositories"]}
    assert {"hooks", "hooks-path", "filters", "filter-process", "parent", "parent/sub"} <= roots
    assert "included" in roots  # its include lies inside its own .git: read as usual, its filter still never runs
    assert change is not None and "b/another.txt" in str(change)
    assert "+changed" in next(e for e in first["repositories"] if e["repo_root"] == "filters")["unified_diff"]


def _git_quiet(cwd: Path, *args: str, **kwargs) -> None:
    kwargs.setdefault("stdout", subprocess.DEVNULL)
    subprocess.run(["git", *args], cwd=cwd, env=_test_git_env(), stderr=subprocess.DEVNULL, timeout=60, **kwargs)


def test_the_corpus_is_live_real_git_runs_its_programs(tmp_path: Path) -> None:
    """Without this, a corpus that triggers nothing would pass the test above."""
    workspace, markers = tmp_path / "workspace", tmp_path / "markers"
    workspace.mkdir()
    build_corpus(workspace, markers)

    _git_quiet(workspace / "hooks", "add", ".")
    _git_quiet(workspace / "hooks", "commit", "-q", "-m", "x")
    _git_quiet(workspace / "hooks-path", "add", ".")
    filters = workspace / "filters"
    _git_quiet(filters, "status")  # fsmonitor, clean filter
    _git_quiet(filters, "diff", "--no-ext-diff")  # textconv
    _git_quiet(filters, "diff")  # diff.external
    _git_quiet(filters, "ls-remote", "origin")  # core.sshCommand
    _git_quiet(filters, "credential", "fill", input=b"protocol=https\nhost=example.invalid\n\n")
    _git_quiet(workspace / "filter-process", "add", ".")
    _git_quiet(workspace / "included", "add", ".")
    _git_quiet(workspace / "parent", "status")  # runs status in the submodule: its filter
    leader, follower = pty.openpty()  # the pager only runs on a terminal
    try:
        _git_quiet(filters, "log", "-1", stdout=follower)
    finally:
        os.close(leader), os.close(follower)

    found = set(markers_in(markers))
    expected = {
        "hook-post-index-change", "hook-pre-commit", "hook-commit-msg", "hook-post-commit",
        "hook-reference-transaction", "hooks-path-post-index-change", "filter-clean", "fsmonitor",
        "textconv", "diff-external", "ssh-command", "credential-helper", "pager", "include-filter",
        "submodule-filter-clean", "filter-process",
    }
    assert expected <= found, sorted(expected - found)


# --------------------------------------------------------------------------
# 2. Nothing outside the owner's directory is read
# --------------------------------------------------------------------------

SECRET = f"TOPSECRET-{uuid.uuid4().hex}"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Another user's repository, outside the workspace: committed and uncommitted secrets."""
    repo = make_repo(tmp_path / "outside" / "repo")
    (repo / "secret.txt").write_text(SECRET + "\n")
    git(repo, "add", "secret.txt")
    git(repo, "commit", "-q", "-m", "secret")
    (repo / "README.md").write_text(SECRET + " uncommitted\n")
    (repo / "untracked-secret.txt").write_text(SECRET + "\n")
    git(repo, "remote", "add", "origin", f"https://example.com/{SECRET}.git")
    return repo


def _gitfile(workspace: Path, outside: Path) -> None:
    (workspace / "case").mkdir()
    (workspace / "case" / ".git").write_text(f"gitdir: {outside / '.git'}\n")


def _relative_gitfile(workspace: Path, outside: Path) -> None:
    (workspace / "case").mkdir()
    (workspace / "case" / ".git").write_text(f"gitdir: {os.path.relpath(outside / '.git', workspace / 'case')}\n")


def _core_worktree(workspace: Path, outside: Path) -> None:
    repo = make_repo(workspace / "case")
    git(repo, "config", "core.worktree", str(outside))


def _alternates(workspace: Path, outside: Path) -> None:
    repo = make_repo(workspace / "case")
    (repo / ".git" / "objects" / "info" / "alternates").write_text(f"{outside / '.git' / 'objects'}\n")
    blob = git(outside, "rev-parse", "HEAD:secret.txt").strip()
    git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},leak.txt")


def _nested_alternates(workspace: Path, outside: Path) -> None:
    middle = make_repo(workspace / "middle")
    (middle / ".git" / "objects" / "info" / "alternates").write_text(f"{outside / '.git' / 'objects'}\n")
    _alternates(workspace, outside)
    (workspace / "case" / ".git" / "objects" / "info" / "alternates").write_text(
        f"{middle / '.git' / 'objects'}\n")


def _commondir(workspace: Path, outside: Path) -> None:
    repo = make_repo(workspace / "case")
    (repo / ".git" / "commondir").write_text(f"{outside / '.git'}\n")


def _config_include(workspace: Path, outside: Path) -> None:
    repo = make_repo(workspace / "case")
    git(repo, "config", "include.path", str(outside / ".git" / "config"))


def _config_symlink(workspace: Path, outside: Path) -> None:
    repo = make_repo(workspace / "case")
    (repo / ".git" / "config").unlink()
    (repo / ".git" / "config").symlink_to(outside / ".git" / "config")


def _objects_symlink(workspace: Path, outside: Path) -> None:
    repo = make_repo(workspace / "case")
    shutil.rmtree(repo / ".git" / "objects")
    (repo / ".git" / "objects").symlink_to(outside / ".git" / "objects")
    (repo / ".git" / "HEAD").write_text(f"{git(outside, 'rev-parse', 'HEAD').strip()}\n")


def _symlinks_false(workspace: Path, outside: Path) -> None:
    repo = make_repo(workspace / "case")
    git(repo, "config", "core.symlinks", "false")
    (repo / "link.txt").symlink_to(outside / "secret.txt")


def _symlinked_gitignore(workspace: Path, outside: Path) -> None:
    repo = make_repo(workspace / "case")
    (repo / ".gitignore").symlink_to(outside / "secret.txt")


def _excludes_file(workspace: Path, outside: Path) -> None:
    repo = make_repo(workspace / "case")
    git(repo, "config", "core.excludesFile", str(outside / "secret.txt"))


def _dot_git_symlink(workspace: Path, outside: Path) -> None:
    (workspace / "case").mkdir()
    (workspace / "case" / ".git").symlink_to(outside / ".git")


WINDOWS = [_gitfile, _relative_gitfile, _core_worktree, _alternates, _nested_alternates, _commondir,
           _config_include, _config_symlink, _objects_symlink, _symlinks_false, _symlinked_gitignore,
           _excludes_file, _dot_git_symlink]


@pytest.mark.parametrize("window", WINDOWS, ids=[window.__name__.strip("_") for window in WINDOWS])
def test_a_repository_pointing_outside_is_left_out(tmp_path: Path, outside: Path, window) -> None:
    workspace = tmp_path / "workspace"
    make_repo(workspace / "fine")
    window(workspace, outside)

    with WatchSession(workspace) as session:
        messages = [session.initial_message(), session.poll(refresh=True)]

    assert SECRET not in str(messages)
    assert "case" not in {entry["repo_root"] for entry in messages[0]["repositories"]}
    assert "fine" in {entry["repo_root"] for entry in messages[0]["repositories"]}


def test_symlinks_in_the_work_tree_show_their_target_path_never_its_content(tmp_path: Path, outside: Path) -> None:
    workspace = tmp_path / "workspace"
    repo = make_repo(workspace)
    (repo / "dir").mkdir()
    (repo / "dir" / "secret.txt").write_text("placeholder\n")
    git(repo, "add", "dir")
    git(repo, "commit", "-q", "-m", "placeholder")
    shutil.rmtree(repo / "dir")
    (repo / "dir").symlink_to(outside, target_is_directory=True)  # a tracked directory becomes a symlink
    (repo / "link.txt").symlink_to(outside / "secret.txt")

    diff = scan_workspace(workspace)["."].unified_diff

    assert SECRET not in diff
    assert f"+{outside / 'secret.txt'}" in diff  # the link itself, as git shows it


def test_a_submodule_whose_git_dir_is_outside_is_not_opened(tmp_path: Path, outside: Path) -> None:
    workspace = tmp_path / "workspace"
    parent = make_repo(workspace)
    git(parent, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(outside), "sub")
    git(parent, "commit", "-q", "-m", "sub")
    shutil.rmtree(parent / "sub")
    (parent / "sub").mkdir()
    (parent / "sub" / ".git").write_text(f"gitdir: {outside / '.git'}\n")
    git(outside, "commit", "-q", "--allow-empty", "-m", "moved on")  # a commit change, if it were read
    moved = git(outside, "rev-parse", "HEAD").strip()

    states = scan_workspace(workspace)

    assert list(states) == ["."]
    assert moved not in str(states) and SECRET not in str(states)


def test_swapping_the_workspace_for_a_symlink_gives_an_error_and_nothing_from_outside(
    tmp_path: Path, outside: Path
) -> None:
    owner_dir = tmp_path / "owner"
    workspace = owner_dir / "proj"
    make_repo(workspace)

    def resolve() -> str:
        from gitwatch import workspaces

        return workspaces.resolve(owner_dir, "proj")

    with WatchSession(workspace, boundary=owner_dir, resolve=resolve) as session:
        assert session.initial_message()["repositories"][0]["repo_root"] == "."
        shutil.rmtree(workspace)
        workspace.symlink_to(outside.parent, target_is_directory=True)
        swapped = session.poll(refresh=True)
        again = [session.poll(refresh=True), session.poll()]

    assert swapped["type"] == "error" and swapped["message"]
    assert again[0]["type"] == "error" and again[1] is None  # a refresh is answered; no repeat otherwise
    assert SECRET not in str([swapped, again])


def test_a_workspace_swapped_without_resolve_is_still_confined(tmp_path: Path, outside: Path) -> None:
    """Even if the route's check were bypassed, the scan reads nothing outside its boundary."""
    owner_dir = tmp_path / "owner"
    (owner_dir / "proj").parent.mkdir(parents=True)
    (owner_dir / "proj").symlink_to(outside.parent, target_is_directory=True)

    scan = gitwatch.scan.scan(owner_dir / "proj", boundary=owner_dir)

    assert scan.states == {}


def test_libgit2_reads_no_system_global_or_xdg_config_and_no_home() -> None:
    """The service user's own git config (credential helpers, excludesFile, includes) must not apply."""
    import pygit2
    from pygit2.enums import ConfigLevel

    import gitwatch.repository  # noqa: F401 - its import fixes the settings

    for level in (ConfigLevel.SYSTEM, ConfigLevel.GLOBAL, ConfigLevel.XDG):
        assert pygit2.settings.search_path[level] == os.devnull
    assert pygit2.settings.homedir == os.devnull
