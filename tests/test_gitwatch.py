"""Tests for gitwatch: real repositories in temporary directories, no network.

Watcher tests only assert outcomes under generous timeouts; the negative ones
("no wake-up") wait a fixed second, far longer than inotify delivery takes.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import gitwatch
import gitwatch.notify
import gitwatch.repository
import gitwatch.scan
import gitwatch.session
from gitwatch import (
    MAX_DIFF_BYTES,
    RepoState,
    WorkspaceWatcher,
    changes_message,
    diff_states,
    find_repositories,
    parse_client_message,
    scan_workspace,
)
from tests.watchsession import WatchSession

GENEROUS = 5.0  # seconds: a change must be noticed well within this


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _test_git_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    return env


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=_test_git_env(), check=True, capture_output=True, text=True
    )
    return done.stdout


def make_repo(path: Path, *, commit: bool = True, branch: str = "main") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch)
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.com")
    if commit:
        (path / "README.md").write_text("hello\n")
        git(path, "add", "README.md")
        git(path, "commit", "-q", "-m", "initial")
    return path


def tree_snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Every file below path with its size and mtime, to prove nothing was written."""
    snapshot = {}
    for file in path.rglob("*"):
        if file.is_file():
            status = file.stat()
            snapshot[str(file.relative_to(path))] = (status.st_size, status.st_mtime_ns)
    return snapshot


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


# --------------------------------------------------------------------------
# finding repositories
# --------------------------------------------------------------------------


def test_workspace_itself_is_reported_as_dot(workspace: Path) -> None:
    make_repo(workspace)

    states = scan_workspace(workspace)

    assert list(states) == ["."]
    assert states["."].repo_root == "."


def test_nested_repositories_have_relative_roots(workspace: Path) -> None:
    make_repo(workspace / "a")
    make_repo(workspace / "b" / "c")
    make_repo(workspace / "a" / "lib")  # a repository inside a repository
    (workspace / "plain").mkdir()

    states = scan_workspace(workspace)

    assert list(states) == ["a", "a/lib", "b/c"]
    assert all(state.repo_root == root for root, state in states.items())
    assert not any(str(workspace) in json.dumps(state.to_message_dict()) for state in states.values())


def test_nested_repository_files_stay_out_of_the_parent_diff(workspace: Path) -> None:
    make_repo(workspace)
    nested = make_repo(workspace / "nested", commit=False)
    (nested / "inner.txt").write_text("inner\n")

    states = scan_workspace(workspace)

    assert "inner.txt" not in states["."].unified_diff
    assert "b/inner.txt" in states["nested"].unified_diff


def test_depth_limit(workspace: Path) -> None:
    make_repo(workspace / "1" / "2" / "3")
    make_repo(workspace / "x" / "y" / "z" / "4")

    assert list(scan_workspace(workspace)) == ["1/2/3"]
    assert find_repositories(workspace, max_depth=4) == ["1/2/3", "x/y/z/4"]
    assert find_repositories(workspace, max_depth=1) == []


def test_git_directories_are_not_searched(workspace: Path) -> None:
    repo = make_repo(workspace / "repo")
    (repo / ".git" / "inside" / ".git").mkdir(parents=True)

    assert find_repositories(workspace) == ["repo"]


def test_symlink_pointing_outside_is_not_followed(tmp_path: Path, workspace: Path) -> None:
    outside = make_repo(tmp_path / "outside" / "secret")
    (workspace / "to-repo").symlink_to(outside, target_is_directory=True)
    (workspace / "to-parent").symlink_to(outside.parent, target_is_directory=True)
    make_repo(workspace / "inside")

    assert list(scan_workspace(workspace)) == ["inside"]


def test_undecodable_directory_name_is_scanned_and_sent_as_utf8(workspace: Path) -> None:
    repo = make_repo(workspace / os.fsdecode(b"caf\xe9"))
    (repo / "new.txt").write_text("new\n")

    states = scan_workspace(workspace)

    assert list(states) == ["caf\ufffd"]
    assert "b/new.txt" in states["caf\ufffd"].unified_diff
    json.dumps(states["caf\ufffd"].to_message_dict()).encode("utf-8")


def test_missing_workspace_has_no_repositories(tmp_path: Path) -> None:
    assert scan_workspace(tmp_path / "does-not-exist") == {}


# --------------------------------------------------------------------------
# branch and origin
# --------------------------------------------------------------------------


def test_branch_name(workspace: Path) -> None:
    repo = make_repo(workspace)
    git(repo, "checkout", "-q", "-b", "feature/x")

    assert scan_workspace(workspace)["."].branch == "feature/x"


def test_detached_head_reports_short_sha(workspace: Path) -> None:
    repo = make_repo(workspace)
    git(repo, "checkout", "-q", "--detach")
    short = git(repo, "rev-parse", "--short", "HEAD").strip()

    assert scan_workspace(workspace)["."].branch == short


def test_unborn_branch_reports_its_name(workspace: Path) -> None:
    make_repo(workspace, commit=False, branch="trunk")

    assert scan_workspace(workspace)["."].branch == "trunk"


def test_branch_switch_is_a_change(workspace: Path) -> None:
    repo = make_repo(workspace)
    before = scan_workspace(workspace)
    git(repo, "checkout", "-q", "-b", "other")

    entries = diff_states(before, scan_workspace(workspace))

    assert [(entry["repo_root"], entry["branch"], entry["removed"]) for entry in entries] == [
        (".", "other", False)
    ]


def test_remote_origin_set_or_empty(workspace: Path) -> None:
    with_origin = make_repo(workspace / "with")
    make_repo(workspace / "without")
    git(with_origin, "remote", "add", "origin", "git@example.com:team/project.git")

    states = scan_workspace(workspace)

    assert states["with"].remote_origin == "git@example.com:team/project.git"
    assert states["without"].remote_origin == ""


def test_remote_origin_credentials_are_not_sent(workspace: Path) -> None:
    repo = make_repo(workspace)
    git(repo, "remote", "add", "origin", "https://user:s3cret@example.com/team/project.git")

    assert scan_workspace(workspace)["."].remote_origin == "https://example.com/team/project.git"


# --------------------------------------------------------------------------
# the diff
# --------------------------------------------------------------------------


def test_diff_covers_staged_unstaged_and_untracked_files(workspace: Path) -> None:
    repo = make_repo(workspace)
    (repo / "staged.txt").write_text("staged line\n")
    git(repo, "add", "staged.txt")
    (repo / "README.md").write_text("hello\nunstaged line\n")
    (repo / "dir").mkdir()
    (repo / "dir" / "untracked.txt").write_text("untracked line\n")

    diff = scan_workspace(workspace)["."].unified_diff

    assert "+++ b/staged.txt" in diff and "+staged line" in diff
    assert "+++ b/README.md" in diff and "+unstaged line" in diff
    assert "+++ b/dir/untracked.txt" in diff and "+untracked line" in diff
    assert diff.count("new file mode") == 2


def test_ignored_files_are_excluded(workspace: Path) -> None:
    repo = make_repo(workspace)
    (repo / ".gitignore").write_text("*.log\nbuild/\n")
    (repo / "debug.log").write_text("noise\n")
    (repo / "build").mkdir()
    (repo / "build" / "out.txt").write_text("noise\n")

    diff = scan_workspace(workspace)["."].unified_diff

    assert "b/.gitignore" in diff
    assert "debug.log" not in diff and "build/out.txt" not in diff


def test_binary_files_show_gits_usual_line(workspace: Path) -> None:
    repo = make_repo(workspace)
    (repo / "image.bin").write_bytes(bytes(range(256)) * 4)

    diff = scan_workspace(workspace)["."].unified_diff

    assert "Binary files /dev/null and b/image.bin differ" in diff


def test_repository_without_commits_diffs_against_the_empty_tree(workspace: Path) -> None:
    repo = make_repo(workspace, commit=False)
    (repo / "staged.txt").write_text("one\n")
    git(repo, "add", "staged.txt")
    (repo / "untracked.txt").write_text("two\n")

    diff = scan_workspace(workspace)["."].unified_diff

    assert "+++ b/staged.txt" in diff and "+++ b/untracked.txt" in diff


def test_many_untracked_files_with_odd_names(workspace: Path) -> None:
    repo = make_repo(workspace)
    odd = [":(glob)*", "*star", "with space", "ünïcödé", "new\nline", "-dash"]
    for name in odd:
        (repo / name).write_text("odd\n")
    (repo / "many").mkdir()
    for number in range(1000):
        (repo / "many" / f"file{number}.txt").write_text(f"{number}\n")

    state = scan_workspace(workspace)["."]

    assert state.error == ""
    assert state.unified_diff.count("new file mode") == 1000 + len(odd)
    assert "b/ünïcödé" in state.unified_diff  # core.quotepath=off


def test_scan_writes_nothing_into_the_repository(workspace: Path) -> None:
    repo = make_repo(workspace)
    (repo / "README.md").write_text("changed\n")
    (repo / "untracked.txt").write_text("new\n")
    status_before = git(repo, "status", "--porcelain")  # may refresh the index itself
    before = tree_snapshot(repo)

    scan_workspace(workspace)

    assert tree_snapshot(repo) == before
    assert git(repo, "status", "--porcelain") == status_before


def test_diff_over_3_mib_is_replaced_by_a_note(workspace: Path) -> None:
    repo = make_repo(workspace)
    line = "x" * 99 + "\n"
    (repo / "huge.txt").write_text(line * (MAX_DIFF_BYTES // len(line) + 1000))

    diff = scan_workspace(workspace)["."].unified_diff

    match = re.fullmatch(r"Diff too large to display \((\d+) bytes\)\.", diff)
    assert match and int(match.group(1)) > MAX_DIFF_BYTES


def test_diff_within_the_limit_is_kept(workspace: Path) -> None:
    make_repo(workspace)
    (workspace / "small.txt").write_text("small\n")

    state = scan_workspace(workspace, max_diff_bytes=10_000)

    assert state["."].unified_diff.startswith("diff --git")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the repository to another user")
def test_repository_owned_by_another_user(workspace: Path) -> None:
    repo = make_repo(workspace)
    (repo / "new.txt").write_text("new\n")
    for path in [repo, *repo.rglob("*")]:
        os.lchown(path, 54321, 54321)

    state = scan_workspace(workspace)["."]

    assert state.error == ""
    assert state.branch == "main" and "b/new.txt" in state.unified_diff


def test_commands_from_repository_config_are_not_run(tmp_path: Path, workspace: Path) -> None:
    repo = make_repo(workspace)
    marker = tmp_path / "ran"
    (repo / ".gitattributes").write_text("* filter=evil diff=evil\n")
    git(repo, "config", "filter.evil.clean", f"touch {marker}; cat")
    git(repo, "config", "filter.evil.process", f"touch {marker}")
    git(repo, "config", "diff.evil.textconv", f"touch {marker}; cat")
    git(repo, "config", "diff.external", f"touch {marker}")
    git(repo, "config", "core.fsmonitor", f"touch {marker}")
    (repo / "README.md").write_text("changed\n")

    state = scan_workspace(workspace)["."]

    assert not marker.exists()
    assert "+changed" in state.unified_diff


def test_corrupt_repository_does_not_break_the_others(workspace: Path) -> None:
    make_repo(workspace / "good")
    (workspace / "good" / "new.txt").write_text("new\n")
    broken = make_repo(workspace / "broken")
    (broken / ".git" / "HEAD").write_text("garbage\n")

    states = scan_workspace(workspace)

    assert states["broken"].unified_diff == "" and states["broken"].error
    assert states["good"].error == "" and "b/new.txt" in states["good"].unified_diff


def test_invalid_git_dir_never_reads_an_enclosing_repository(tmp_path: Path) -> None:
    outer = make_repo(tmp_path / "outer")
    git(outer, "checkout", "-q", "-b", "outer-branch")
    workspace = outer / "workspace"
    (workspace / "fake" / ".git").mkdir(parents=True)

    state = scan_workspace(workspace)["fake"]

    assert state.branch == "" and state.unified_diff == "" and state.error


def test_scan_time_budget_reads_the_rest_first_next_time(workspace: Path) -> None:
    for name in ("a", "b", "c"):
        make_repo(workspace / name)
        (workspace / name / "new.txt").write_text(f"{name}\n")

    first = gitwatch.scan.scan(workspace, time_budget=0)
    second = gitwatch.scan.scan(workspace, time_budget=0, previous=first)

    # The first repository of a scan is always read whole: every scan makes progress.
    assert list(first.states) == ["a"] and first.skipped == ("b", "c")
    assert "b/new.txt" in first.states["a"].unified_diff
    assert set(second.states) == {"a", "b"} and second.skipped == ("c", "a")  # "a" kept from before
    assert "c" in gitwatch.scan.scan(workspace, time_budget=0, previous=second).states


# --------------------------------------------------------------------------
# changes between scans, messages
# --------------------------------------------------------------------------


def test_first_scan_sends_everything_and_unchanged_scan_sends_nothing(workspace: Path) -> None:
    make_repo(workspace / "a")
    make_repo(workspace / "b")
    first = scan_workspace(workspace)

    assert [entry["repo_root"] for entry in diff_states({}, first)] == ["a", "b"]
    assert diff_states(first, scan_workspace(workspace)) == []


def test_diff_change_is_sent_for_that_repository_only(workspace: Path) -> None:
    make_repo(workspace / "a")
    make_repo(workspace / "b")
    before = scan_workspace(workspace)
    (workspace / "b" / "README.md").write_text("edited\n")

    entries = diff_states(before, scan_workspace(workspace))

    assert [entry["repo_root"] for entry in entries] == ["b"]
    assert "+edited" in entries[0]["unified_diff"]


def test_removed_repository_is_reported_once(workspace: Path) -> None:
    make_repo(workspace / "keep")
    make_repo(workspace / "gone")
    first = scan_workspace(workspace)
    shutil.rmtree(workspace / "gone")

    second = scan_workspace(workspace)
    third = scan_workspace(workspace)

    assert diff_states(first, second) == [
        {"repo_root": "gone", "branch": "", "remote_origin": "", "unified_diff": "", "removed": True}
    ]
    assert diff_states(second, third) == []


def test_message_shapes() -> None:
    state = RepoState("a", "main", "git@example.com:x.git", "diff")
    moment = datetime(2026, 11, 22, 13, 0, 0, 123456, tzinfo=timezone.utc)

    message = changes_message([state.to_message_dict()], scanned_at=moment)

    assert message == {
        "type": "changes",
        "scanned_at": "2026-11-22T13:00:00.123Z",
        "repositories": [
            {"repo_root": "a", "branch": "main", "remote_origin": "git@example.com:x.git",
             "unified_diff": "diff", "removed": False}
        ],
    }
    other_zone = datetime(2026, 11, 22, 14, 0, 0, tzinfo=timezone(timedelta(hours=1)))
    assert changes_message([], other_zone)["scanned_at"] == "2026-11-22T13:00:00.000Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", changes_message([])["scanned_at"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type": "refresh"}', ("refresh", None)),
        (b'{"type": "refresh"}', ("refresh", None)),
        ("{not json", ("error", "Invalid JSON.")),
        (b"\xff\xfe", ("error", "Invalid JSON.")),
        ("", ("error", "Invalid JSON.")),
        ("[1, 2]", ("error", "Expected a JSON object.")),
        ("{}", ("error", 'Missing message "type".')),
        ('{"type": "x"}', ("error", 'Unknown message type "x".')),
        ('{"type": 5}', ("error", "Unknown message type 5.")),
    ],
)
def test_parse_client_message(text: str | bytes, expected: tuple[str, str | None]) -> None:
    assert parse_client_message(text) == expected


# --------------------------------------------------------------------------
# session
# --------------------------------------------------------------------------


def test_first_message_is_sent_even_without_repositories(workspace: Path) -> None:
    with WatchSession(workspace) as session:
        message = session.initial_message()

    assert message["type"] == "changes" and message["repositories"] == []


def test_session_sends_only_changes_and_answers_refresh(workspace: Path) -> None:
    make_repo(workspace)
    with WatchSession(workspace) as session:
        assert [entry["repo_root"] for entry in session.initial_message()["repositories"]] == ["."]
        assert session.poll() is None
        assert session.poll(refresh=True)["repositories"] == []

        (workspace / "new.txt").write_text("new\n")
        assert session.wait(GENEROUS)
        message = session.poll()

    assert message is not None
    assert [entry["repo_root"] for entry in message["repositories"]] == ["."]
    assert "b/new.txt" in message["repositories"][0]["unified_diff"]


def test_a_view_that_missed_scans_gets_everything_it_missed(workspace: Path) -> None:
    """A slow reader skips scans; its next message is the delta against what it was last sent."""
    make_repo(workspace)
    view = gitwatch.session.SocketView()
    view.changes(gitwatch.scan.scan(workspace), datetime.now(timezone.utc), always=True)
    (workspace / "one.txt").write_text("one\n")
    gitwatch.scan.scan(workspace)  # a scan this view was not sent
    (workspace / "two.txt").write_text("two\n")

    message = view.changes(gitwatch.scan.scan(workspace), datetime.now(timezone.utc), always=False)

    assert "b/one.txt" in str(message) and "b/two.txt" in str(message)


def test_failed_repository_keeps_its_last_good_state() -> None:
    good = RepoState("a", "main", "", "diff")
    failed = RepoState("a", "main", "", "", error="git timed out")
    new_failed = RepoState("b", "", "", "", error="git timed out")

    kept = gitwatch.session._keep_previous_on_error({"a": good}, {"a": failed, "b": new_failed})

    assert kept == {"a": good, "b": new_failed}


# --------------------------------------------------------------------------
# watcher
# --------------------------------------------------------------------------


def test_watcher_notices_a_write(workspace: Path) -> None:
    with WorkspaceWatcher(workspace) as watcher:
        assert watcher.mode == "events"
        (workspace / "file.txt").write_text("hello\n")

        assert watcher.wait_for_change(GENEROUS) is True


def test_watcher_notices_git_operations(workspace: Path) -> None:
    repo = make_repo(workspace / "repo")
    with WorkspaceWatcher(workspace) as watcher:
        git(repo, "checkout", "-q", "-b", "next")  # only .git/HEAD changes

        assert watcher.wait_for_change(GENEROUS) is True


def test_watcher_is_not_woken_by_scans_or_lock_files(workspace: Path) -> None:
    repo = make_repo(workspace)
    (repo / "untracked.txt").write_text("new\n")  # scan runs git add -N
    with WorkspaceWatcher(workspace) as watcher:
        scan_workspace(workspace)
        lock = repo / ".git" / "index.lock"
        lock.write_text("")
        lock.unlink()

        assert watcher.wait_for_change(1.0) is False


def test_burst_of_writes_is_coalesced(workspace: Path) -> None:
    # 200 writes take milliseconds; wake-ups come after 0.1 s of quiet or
    # 0.5 s after a burst began, so even a slow machine sees very few.
    with WorkspaceWatcher(workspace) as watcher:
        for number in range(200):
            (workspace / f"file{number % 20}.txt").write_text(f"{number}\n")
        wake_ups = 0
        while watcher.wait_for_change(1.0):
            wake_ups += 1

    assert 1 <= wake_ups <= 5


def test_watcher_follows_a_workspace_that_appears_and_disappears(tmp_path: Path) -> None:
    workspace = tmp_path / "later" / "workspace"
    with WorkspaceWatcher(workspace) as watcher:
        assert watcher.changed() is False

        workspace.mkdir(parents=True)
        assert watcher.wait_for_change(GENEROUS) is True

        (workspace / "inside.txt").write_text("hello\n")
        assert watcher.wait_for_change(GENEROUS) is True

        shutil.rmtree(tmp_path / "later")
        assert watcher.wait_for_change(GENEROUS) is True

        workspace.mkdir(parents=True)
        assert watcher.wait_for_change(GENEROUS) is True
        (workspace / "again.txt").write_text("hello\n")
        assert watcher.wait_for_change(GENEROUS) is True


def test_watcher_falls_back_to_polling(workspace: Path, monkeypatch) -> None:
    def no_watches_left(*args):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(gitwatch.notify._REGISTRY, "acquire", no_watches_left)
    with WorkspaceWatcher(workspace, poll_interval=0.2) as watcher:
        assert watcher.mode == "polling"
        assert watcher.wait_for_change(GENEROUS) is True
        assert watcher.wait_for_change(GENEROUS) is True


@pytest.mark.parametrize("grows", [False, True], ids=["at the start", "growing while watched"])
def test_a_workspace_with_too_many_directories_polls_instead(workspace: Path, monkeypatch, grows) -> None:
    # Its walk holds the registry's lock (every workspace's events wait) and spends the inotify limit.
    monkeypatch.setattr(gitwatch.notify, "MAX_WATCHED_DIRECTORIES", 5)
    if not grows:
        for index in range(10):
            (workspace / f"d{index}").mkdir()
    with WorkspaceWatcher(workspace, poll_interval=0.2) as watcher:
        if grows:
            assert watcher.mode == "events"
            (workspace / "deep" / "a" / "b" / "c" / "d" / "e").mkdir(parents=True)
            deadline = time.monotonic() + GENEROUS
            while watcher.mode != "polling" and time.monotonic() < deadline:
                watcher.wait_for_change(0.2)
        assert watcher.mode == "polling"
        assert watcher.wait_for_change(GENEROUS) is True


def test_watchers_of_one_directory_share_a_watch(workspace: Path) -> None:
    WorkspaceWatcher(workspace).close()  # the shared observer is running now
    baseline = threading.active_count()

    watchers = [WorkspaceWatcher(workspace) for _ in range(10)]
    assert threading.active_count() <= baseline + 1
    for watcher in watchers[1:]:
        watcher.close()
    (workspace / "file.txt").write_text("hello\n")
    assert watchers[0].wait_for_change(GENEROUS) is True

    watchers[0].close()
    watchers[0].close()  # idempotent
    assert threading.active_count() == baseline
    assert watchers[0].changed() is False


def test_many_workspaces_each_notified(tmp_path: Path) -> None:
    directories = [tmp_path / f"ws{number}" for number in range(20)]
    for directory in directories:
        directory.mkdir()
    watchers = [WorkspaceWatcher(directory) for directory in directories]
    try:
        for directory in directories:
            (directory / "file.txt").write_text("hello\n")
        assert all(watcher.wait_for_change(GENEROUS) for watcher in watchers)
    finally:
        for watcher in watchers:
            watcher.close()



def _wait_until(condition, timeout: float = GENEROUS) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _settled(calls: list, quiet: float = 0.5) -> int:
    """How many calls once none came for ``quiet`` seconds."""
    while True:
        before = len(calls)
        time.sleep(quiet)
        if len(calls) == before:
            return before


def test_watching_many_workspaces_costs_at_most_one_thread(tmp_path: Path) -> None:
    baseline = threading.active_count()
    directories = [tmp_path / f"ws{number}" for number in range(200)]
    for directory in directories:
        (directory / "sub").mkdir(parents=True)
    watchers = [WorkspaceWatcher(directory) for directory in directories]
    try:
        assert all(watcher.mode == "events" for watcher in watchers)
        assert threading.active_count() <= baseline + 1  # watchdog: one emitter thread per directory
        (directories[-1] / "sub" / "file.txt").write_text("hello\n")
        assert watchers[-1].wait_for_change(GENEROUS) is True
    finally:
        for watcher in watchers:
            watcher.close()


def test_on_change_is_called_once_per_burst_from_the_notifier_thread(workspace: Path) -> None:
    calls = []
    with WorkspaceWatcher(workspace, on_change=lambda at: calls.append((at, threading.current_thread()))) as watcher:
        (workspace / "file.txt").write_text("hello\n")  # create, modify, close: one burst

        assert _wait_until(lambda: calls)
        assert _settled(calls, quiet=1.0) == 1
    (at, thread), = calls
    assert at == watcher.last_change_at
    assert thread is not threading.current_thread()


def test_an_idle_watcher_gets_no_call_and_wakes_no_thread(workspace: Path, monkeypatch) -> None:
    calls = []
    with WorkspaceWatcher(workspace, poll_interval=0.2, on_change=calls.append) as watcher:
        assert watcher.mode == "events"
        time.sleep(0.2)  # the notifier's turn for the new inotify fd, if it just made it
        registry = gitwatch.notify._REGISTRY
        real_turn, turns = registry._serve_once, []
        monkeypatch.setattr(registry, "_serve_once", lambda: turns.append(1) or real_turn())

        time.sleep(1.5)  # a watcher that polled or re-checked every poll_interval would be called

    assert calls == []
    assert turns == []  # the notifier thread slept with no timeout


def test_a_workspace_renamed_away_and_replaced_is_followed_by_events(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    calls = []
    with WorkspaceWatcher(workspace, poll_interval=3600, on_change=calls.append) as watcher:
        workspace.rename(tmp_path / "old")
        workspace.mkdir()
        (workspace / "new.txt").write_text("new\n")

        assert _wait_until(lambda: calls)
        assert watcher.mode == "events"
        seen = _settled(calls)
        (workspace / "second.txt").write_text("the new directory is watched\n")
        assert _wait_until(lambda: len(calls) > seen)

        seen = _settled(calls)
        (tmp_path / "old" / "stale.txt").write_text("the old one is not\n")
        time.sleep(1.0)
        assert len(calls) == seen
        assert watcher.mode == "events"


# --------------------------------------------------------------------------
# names, binaries, submodules
# --------------------------------------------------------------------------


def test_names_that_are_not_utf8_appear_git_quoted(workspace: Path) -> None:
    repo = make_repo(workspace)
    (repo / os.fsdecode(b"caf\xe9.txt")).write_text("latin-1 name\n")

    diff = scan_workspace(workspace)["."].unified_diff

    assert '+++ "b/caf\\351.txt"' in diff and "+latin-1 name" in diff


def test_binary_file_is_one_line_without_nul_bytes_even_past_the_sniffed_start(workspace: Path) -> None:
    repo = make_repo(workspace)
    (repo / "late.bin").write_bytes(b"text\n" * 4000 + b"\0binary tail\n")  # NUL after 20,000 bytes

    diff = scan_workspace(workspace)["."].unified_diff

    assert "\0" not in diff
    assert "Binary files /dev/null and b/late.bin differ" in diff
    assert "+text" not in diff


def test_submodule_is_a_commit_change_only(tmp_path: Path, workspace: Path) -> None:
    source = make_repo(tmp_path / "source")
    parent = make_repo(workspace)
    git(parent, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(source), "sub")
    git(parent, "commit", "-q", "-m", "sub")
    sub = parent / "sub"
    (sub / "README.md").write_text("moved on\n")
    git(sub, "-c", "user.name=Test", "-c", "user.email=test@example.com", "commit", "-q", "-am", "moved on")
    (sub / "dirty.txt").write_text("uncommitted in the submodule\n")
    old = git(parent, "rev-parse", "HEAD:sub").strip()
    new = git(sub, "rev-parse", "HEAD").strip()

    states = scan_workspace(workspace)

    parent_diff = states["."].unified_diff
    assert f"-Subproject commit {old}\n+Subproject commit {new}\n" in parent_diff
    assert "uncommitted in the submodule" not in parent_diff and "moved on" not in parent_diff
    assert "b/dirty.txt" in states["sub"].unified_diff  # its own changes, under its own root


# --------------------------------------------------------------------------
# ceilings
# --------------------------------------------------------------------------


def test_more_than_64_repositories_are_truncated(workspace: Path) -> None:
    for number in range(gitwatch.MAX_REPOSITORIES + 3):
        (workspace / f"r{number:03d}" / ".git").mkdir(parents=True)  # found, not read
    with WatchSession(workspace) as session:
        message = session.initial_message()

    assert message["truncated"] is True
    assert len(message["repositories"]) == gitwatch.MAX_REPOSITORIES
    assert message["repositories"][-1]["repo_root"] == "r063"


def test_diff_text_per_message_is_capped_and_later_repositories_get_the_note(workspace: Path) -> None:
    line = "z" * 99 + "\n"
    for name in ("a", "b", "c", "d"):
        make_repo(workspace / name)
        (workspace / name / "big.txt").write_text(line * 25_000)  # 2.5 MB each, 10 MB together

    states = scan_workspace(workspace)

    total = sum(len(state.unified_diff.encode()) for state in states.values())
    assert total <= gitwatch.MAX_MESSAGE_DIFF_BYTES
    assert [state.unified_diff.startswith("diff --git") for state in states.values()] == [True, True, True, False]
    assert re.fullmatch(r"Diff too large to display \(\d+ bytes\)\.", states["d"].unified_diff)


def test_a_binary_file_larger_than_the_limit_is_still_one_line(workspace: Path) -> None:
    repo = make_repo(workspace)
    (repo / "photo.raw").write_bytes(b"\0" * (MAX_DIFF_BYTES + 1000))
    (repo / "README.md").write_text("hello\nedited\n")

    diff = scan_workspace(workspace)["."].unified_diff

    assert "Binary files /dev/null and b/photo.raw differ" in diff and "+edited" in diff


def test_thousands_of_untracked_files_give_the_note_without_reading_each(workspace: Path, monkeypatch) -> None:
    repo = make_repo(workspace)
    for directory in range(4):
        (repo / f"d{directory}").mkdir()
        for number in range(8000):
            (repo / f"d{directory}" / f"f{number}.txt").write_text("x\n")
    patches = []
    real = gitwatch.repository._patch_text
    monkeypatch.setattr(gitwatch.repository, "_patch_text", lambda *a: patches.append(1) or real(*a))

    # In this process, where the counting _patch_text is.
    diff = scan_workspace(workspace, read=gitwatch.repository.read_repository)["."].unified_diff

    assert re.fullmatch(r"Diff too large to display \(\d+ bytes\)\.", diff)
    assert patches == []  # known from the file list alone: no file was read for text


def test_a_repository_vanishing_during_the_scan_is_left_out(workspace: Path, monkeypatch) -> None:
    make_repo(workspace / "a")
    make_repo(workspace / "b")
    real = gitwatch.scan.sandboxed.read_repository

    def delete_b_first(repo_dir, *args, **kwargs):
        shutil.rmtree(workspace / "b", ignore_errors=True)
        return real(repo_dir, *args, **kwargs)

    assert list(scan_workspace(workspace, read=delete_b_first)) == ["a"]
