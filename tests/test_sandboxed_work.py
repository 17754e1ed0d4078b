"""An upload's decode and a repository's read that their sandbox had to stop: one request's 400, one
repository left out, logged with the cause; the next upload and scan are served as usual.

The limits are lowered for these tests (the pool of those limits is another pool); the files and
repositories are real ones.
"""

from pathlib import Path

from gitwatch import scan_workspace
from harness.imaging import make_image
from sandbox import Limits
from sandbox import tasks as sandboxed
from tests.test_files import assert_error, object_count, row_count, upload
from tests.test_gitwatch import git, make_repo


def test_an_upload_whose_decode_outlives_its_sandbox_is_400_too_expensive(app, client, auth, user, monkeypatch,
                                                                           caplog):
    photo = make_image("image/png", 1600, 1200)  # tens of milliseconds of decoding and variants
    monkeypatch.setattr(sandboxed, "DECODE_WALL_SECONDS", 0.005)
    with caplog.at_level("WARNING", logger="sandbox.pool"):
        response = upload(client, auth, photo, organization=user["organization_id"])

    assert_error(response, 400, "Invalid image file.")
    assert response.json["detail"] == ("The image is too expensive to decode: it did not finish within the "
                                       "decoder's time limit.")
    assert row_count(app) == 0 and object_count(app) == 0
    assert "task verify_and_make failed (deadline:" in caplog.text

    monkeypatch.undo()
    assert upload(client, auth, photo, organization=user["organization_id"]).status_code == 201


def many_changed_files(repo: Path, count: int) -> None:
    """``count`` committed files, each changed since: a diff that takes a while to make, file by file."""
    for number in range(count):
        (repo / f"f{number}.txt").write_text("a\n" * 10)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "many")
    for number in range(count):
        (repo / f"f{number}.txt").write_text("a\n" * 9 + "b\n")


def test_a_repository_whose_read_outlives_its_sandbox_is_left_out_and_the_others_reported(tmp_path, monkeypatch,
                                                                                         caplog):
    workspace = tmp_path / "workspace"
    many_changed_files(make_repo(workspace / "slow"), 5000)  # about a second to read here
    make_repo(workspace / "honest")
    (workspace / "honest" / "README.md").write_text("hello\nchanged\n")
    monkeypatch.setattr(sandboxed, "SCAN_LIMITS", Limits(sandboxed.SCAN_MEMORY, cpu_seconds=5, wall_seconds=0.2))

    with caplog.at_level("WARNING", logger="sandbox"):
        states = scan_workspace(workspace, time_budget=30)

    assert list(states) == ["honest"]
    assert "+changed" in states["honest"].unified_diff
    assert "repository slow left out" in caplog.text and "deadline" in caplog.text
    assert list(scan_workspace(workspace / "honest")) == ["."]  # the pool took a fresh process meanwhile


def test_a_repository_whose_read_needs_more_than_the_ceiling_is_left_out(tmp_path, monkeypatch):
    workspace = tmp_path / "workspace"
    big = make_repo(workspace / "big")
    (big / "data.txt").write_text("a line of text that differs\n" * 100_000)  # 2.8 MB of new text: under the caps
    make_repo(workspace / "small")
    (workspace / "small" / "new.txt").write_text("hello\n")
    # 16 MiB: the 2.8 MB diff's file, patch and text do not fit (they do under the default 256 MiB).
    monkeypatch.setattr(sandboxed, "SCAN_LIMITS", Limits(16 * 1024 * 1024, cpu_seconds=5, wall_seconds=30))

    states = scan_workspace(workspace, time_budget=30)

    assert list(states) == ["small"] and "+hello" in states["small"].unified_diff
