"""The git watch WebSocket, end to end over a real socket, with real repositories."""

import json
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from werkzeug.serving import make_server

import gitwatch.hub as hub_module
from gitwatch import archives
from harness.wsclient import Closed, Rejected, WatchClient
from tests.conftest import make_app
from tests.test_files import assert_error
from tests.test_gitwatch import git, make_repo

# The protocol does not depend on the backends; the archive check's query runs
# on PostgreSQL in test_live.py, under gunicorn.
pytestmark = [
    pytest.mark.parametrize("storage_config", ["local"], indirect=True),
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

UPGRADE_HEADERS = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
WAIT = 10  # seconds a test waits for a message before failing: a hang guard, not a timing claim


@pytest.fixture
def server(app):
    """The app on a real threaded HTTP server on loopback, for WebSocket clients."""
    app.config["WATCH_PING_INTERVAL"] = 1
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"ws://127.0.0.1:{http.server_port}"
    http.shutdown()


@pytest.fixture
def workspace(user):
    path = Path(user["workspaces_dir"]) / "proj"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def chat(client, auth, workspace):
    return client.post("/api/v2/chats", json={"title": "w", "workspace": "proj"}, headers=auth).json


def connect(server, chat, user):
    return WatchClient(f"{server}/api/v2/chats/{chat['id']}/git/watch", user["token"])


def receive(ws, timeout=WAIT):
    message = ws.receive(timeout=timeout)
    assert message is not None, "no message in time"
    return message


def receive_changes(ws, predicate=lambda message: True):
    """The next changes message that satisfies predicate (a write can take two scans to settle)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        message = receive(ws, max(0.1, deadline - time.monotonic()))
        assert message["type"] == "changes"
        if predicate(message):
            return message
    pytest.fail("no matching changes message in time")


def by_root(message):
    return {repo["repo_root"]: repo for repo in message["repositories"]}


# Before the upgrade: ordinary JSON errors.


def test_without_token_is_401(client, chat):
    assert_error(client.get(f"/api/v2/chats/{chat['id']}/git/watch", headers=UPGRADE_HEADERS), 401)


def test_unknown_or_foreign_chat_is_404(client, chat, other_user, auth):
    assert_error(client.get(f"/api/v2/chats/{uuid.uuid4()}/git/watch", headers={**UPGRADE_HEADERS, **auth}), 404)
    foreign = {**UPGRADE_HEADERS, "Coder-Session-Token": other_user["token"]}
    assert_error(client.get(f"/api/v2/chats/{chat['id']}/git/watch", headers=foreign), 404)


@pytest.mark.parametrize("handshake", [{}, {**UPGRADE_HEADERS, "Sec-WebSocket-Version": "8"}],
                         ids=["not an upgrade", "bad handshake"])
def test_a_foreign_chat_is_404_however_it_is_asked_for(client, chat, other_user, handshake):
    # The contract: 404 for an unknown or foreign chat; the handshake is judged only for one's own chat.
    foreign = {**handshake, "Coder-Session-Token": other_user["token"]}
    assert_error(client.get(f"/api/v2/chats/{chat['id']}/git/watch", headers=foreign), 404)


def test_a_handover_that_fails_leaves_no_subscription_or_open_socket_counted(app, server, chat, user, monkeypatch):
    from ops import observability

    def no_more_descriptors(*args, **kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(hub_module.HUB, "adopt", no_more_descriptors)
    open_before = observability.WATCH_SOCKETS._value.get()
    with pytest.raises(Rejected) as rejected:
        connect(server, chat, user)
    assert rejected.value.status == 500
    assert app.extensions["archive_events"].watched() == []
    assert observability.WATCH_SOCKETS._value.get() == open_before


def test_bad_chat_id_is_400(client, auth):
    assert_error(client.get("/api/v2/chats/nope/git/watch", headers={**UPGRADE_HEADERS, **auth}), 400)


def test_chat_without_workspace_is_400(client, auth):
    chat = client.post("/api/v2/chats", json={"title": "none"}, headers=auth).json
    response = client.get(f"/api/v2/chats/{chat['id']}/git/watch", headers={**UPGRADE_HEADERS, **auth})
    assert_error(response, 400, "Chat has no workspace to watch.")


def test_plain_get_without_upgrade_is_json_400(client, auth, chat):
    assert_error(client.get(f"/api/v2/chats/{chat['id']}/git/watch", headers=auth), 400)


def test_real_client_gets_json_401_before_upgrade(server, chat):
    with pytest.raises(Rejected) as rejected:
        WatchClient(f"{server}/api/v2/chats/{chat['id']}/git/watch")
    assert rejected.value.status == 401
    assert json.loads(rejected.value.body)["message"]


def test_broken_handshake_is_json_400(server, chat, user):
    request = (f"GET /api/v2/chats/{chat['id']}/git/watch HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
               f"Upgrade: websocket\r\nCoder-Session-Token: {user['token']}\r\n\r\n")  # no key, no version
    with socket.create_connection(("127.0.0.1", int(server.rsplit(":", 1)[1])), timeout=WAIT) as sock:
        sock.sendall(request.encode())
        head, _, body = _read_response(sock)
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["message"] == "Invalid WebSocket handshake."


@pytest.mark.parametrize("broken", [
    {"Connection": "keep-alive"}, {"Connection": ""}, {"Sec-WebSocket-Version": "8"}, {"Sec-WebSocket-Version": ""},
    {"Sec-WebSocket-Key": "not base64!"}, {"Sec-WebSocket-Key": "AAAAAAAAAAAAAAAAAAAA"},  # 15 bytes
    {"Sec-WebSocket-Key": "dGhlIHNhbXBs!ZSBub25jZQ=="},  # 16 bytes only to a decoder that skips the "!"
    {"Sec-WebSocket-Key": ""},
], ids=["connection keep-alive", "no connection", "version 8", "no version", "key not base64", "key of 15 bytes",
        "key with a stray character", "no key"])
def test_each_broken_handshake_header_is_400_for_ones_own_chat(client, auth, chat, broken):
    """Each RFC 6455 requirement on its own: the rest of the handshake is well formed."""
    response = client.get(f"/api/v2/chats/{chat['id']}/git/watch", headers={**UPGRADE_HEADERS, **auth, **broken})
    assert_error(response, 400, "Invalid WebSocket handshake.")


def test_a_well_formed_handshake_passes_the_header_checks(client, auth, chat):
    """The control for the test above: the same request intact gets past them (the test client cannot hand
    its connection over, which is the next 400)."""
    response = client.get(f"/api/v2/chats/{chat['id']}/git/watch", headers={**UPGRADE_HEADERS, **auth})
    assert_error(response, 400, "Expected a WebSocket upgrade.")
    assert response.json["detail"] == "This server cannot hand over connections."


def _read_response(sock):
    """Head and body of one HTTP response; the two may arrive in separate segments."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, separator, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head, separator, body


# After the upgrade: the message protocol.


def test_first_message_comes_at_once_with_every_repository(server, chat, user, workspace):
    make_repo(workspace)
    git(workspace, "remote", "add", "origin", "https://example.com/proj.git")
    make_repo(workspace / "libs" / "inner", branch="dev")
    ws = connect(server, chat, user)
    try:
        message = receive(ws)
        assert message["type"] == "changes"
        assert message["scanned_at"].endswith("Z")
        repos = by_root(message)
        assert set(repos) == {".", "libs/inner"}
        assert repos["."]["branch"] == "main"
        assert repos["."]["remote_origin"] == "https://example.com/proj.git"
        assert repos["libs/inner"]["remote_origin"] == ""
        assert repos["libs/inner"]["branch"] == "dev"
        assert all(repo["removed"] is False for repo in message["repositories"])
    finally:
        ws.close()


def test_empty_workspace_still_gets_a_first_message(server, chat, user):
    ws = connect(server, chat, user)
    try:
        message = receive(ws)
        assert message["type"] == "changes"
        assert message["repositories"] == []
    finally:
        ws.close()


@pytest.fixture
def watching(server, chat, user, workspace):
    """A socket on a workspace that is one committed repository, its first message read."""
    make_repo(workspace)
    ws = connect(server, chat, user)
    receive(ws)
    yield ws
    ws.close()


def test_written_file_arrives_without_refresh(watching, workspace):
    (workspace / "README.md").write_text("hello\nchanged\n")
    message = receive_changes(watching, lambda m: "+changed" in by_root(m).get(".", {}).get("unified_diff", ""))
    assert [repo["repo_root"] for repo in message["repositories"]] == ["."]


def test_diff_covers_staged_unstaged_and_untracked_but_not_ignored(watching, workspace):
    (workspace / ".gitignore").write_text("*.log\n")
    (workspace / "staged.txt").write_text("staged line\n")
    git(workspace, "add", "staged.txt")
    (workspace / "README.md").write_text("hello\nunstaged line\n")
    (workspace / "new.txt").write_text("untracked line\n")
    (workspace / "debug.log").write_text("ignored line\n")

    def complete(message):
        diff = by_root(message).get(".", {}).get("unified_diff", "")
        return all(part in diff for part in ("+staged line", "+unstaged line", "+untracked line"))

    diff = by_root(receive_changes(watching, complete))["."]["unified_diff"]
    assert "ignored line" not in diff


def test_unchanged_repositories_are_not_repeated(watching, workspace):
    make_repo(workspace / "other")
    receive_changes(watching, lambda m: "other" in by_root(m))
    (workspace / "README.md").write_text("only the root changes\n")
    message = receive_changes(watching, lambda m: "." in by_root(m))
    assert "other" not in by_root(message)


def test_branch_switch_is_sent(watching, workspace):
    git(workspace, "checkout", "-q", "-b", "feature")
    message = receive_changes(watching, lambda m: by_root(m).get(".", {}).get("branch") == "feature")
    assert by_root(message)["."]["removed"] is False


def test_deleted_repository_is_sent_once_as_removed(watching, workspace):
    make_repo(workspace / "gone")
    receive_changes(watching, lambda m: "gone" in by_root(m))
    shutil.rmtree(workspace / "gone")
    message = receive_changes(watching, lambda m: "gone" in by_root(m))
    assert by_root(message)["gone"]["removed"] is True
    watching.send_json({"type": "refresh"})
    assert "gone" not in by_root(receive(watching))


def test_diff_over_3_mib_is_replaced_by_a_size_note(watching, workspace):
    (workspace / "big.txt").write_text(("y" * 99 + "\n") * 40_000)  # 4 MB of added lines
    message = receive_changes(watching, lambda m: "." in by_root(m))
    diff = by_root(message)["."]["unified_diff"]
    assert len(diff) < 1000
    assert "too large" in diff.lower()
    assert any(character.isdigit() for character in diff)


def test_refresh_answers_with_a_changes_message(watching):
    watching.send_json({"type": "refresh"})
    assert receive(watching)["type"] == "changes"


@pytest.mark.parametrize("frame", ["not json", json.dumps({"type": "dance"}), json.dumps([1, 2]), "{}"])
def test_bad_client_frame_gets_an_error_and_the_socket_stays_open(watching, frame):
    watching.send_text(frame)
    message = receive(watching)
    assert message["type"] == "error"
    assert message["message"]
    watching.send_json({"type": "refresh"})
    assert receive(watching)["type"] == "changes"


# Lifecycle.


def test_a_socket_on_an_already_archived_chat_is_closed_at_once(server, chat, user, workspace, client, auth):
    make_repo(workspace)
    assert client.post(f"/api/v2/chats/{chat['id']}/archive", headers=auth).status_code == 204
    ws = connect(server, chat, user)
    with pytest.raises(Closed) as closed:
        while ws.receive(timeout=WAIT) is not None:
            pass
    assert (closed.value.code, closed.value.reason) == (1000, "Chat was archived.")


def test_a_chat_archived_while_the_events_listener_runs_is_closed_at_once_too(watching, server, app, user, client,
                                                                              auth):
    """The listener already runs (another socket) and has taken in the archive before this socket subscribes:
    no event will come for it, so the handover itself must notice the archive."""
    other = client.post("/api/v2/chats", json={"title": "other", "workspace": "proj"}, headers=auth).json
    assert client.post(f"/api/v2/chats/{other['id']}/archive", headers=auth).status_code == 204
    events = app.extensions["archive_events"]
    time.sleep(4 * archives.POLL_SECONDS)  # SQLite's poller has looked (PostgreSQL's NOTIFY came and went)
    assert events.watched() and uuid.UUID(other["id"]) not in events.watched()
    ws = WatchClient(f"{server}/api/v2/chats/{other['id']}/git/watch", user["token"])
    with pytest.raises(Closed) as closed:
        while ws.receive(timeout=WAIT) is not None:
            pass
    assert (closed.value.code, closed.value.reason) == (1000, "Chat was archived.")


def test_an_archive_heard_during_the_handover_closes_the_socket(server, app, chat, user, workspace, monkeypatch):
    """The events thread may run the callback after the subscription but before the hub hands back the socket:
    the handover closes it then."""
    make_repo(workspace)
    events = app.extensions["archive_events"]
    real_adopt = hub_module.HUB.adopt

    def adopt_after_the_archive_is_heard(connection, request):
        events._archived([uuid.UUID(chat["id"])])  # what the events thread does, at the worst moment
        return real_adopt(connection, request)

    monkeypatch.setattr(hub_module.HUB, "adopt", adopt_after_the_archive_is_heard)
    ws = connect(server, chat, user)
    with pytest.raises(Closed) as closed:
        while ws.receive(timeout=WAIT) is not None:
            pass
    assert (closed.value.code, closed.value.reason) == (1000, "Chat was archived.")


def test_archiving_the_chat_closes_the_socket(watching, chat, auth, app):
    # The archive is served by another app instance on the same database, as
    # behind a load balancer: the database is the only shared state.
    other_instance = make_app(app.config["DATABASE_URL"], {"LOCAL_STORAGE_ROOT": app.config["LOCAL_STORAGE_ROOT"]},
                              Path(app.config["WORKSPACES_ROOT"]).parent)
    assert other_instance.test_client().post(f"/api/v2/chats/{chat['id']}/archive", headers=auth).status_code == 204
    with pytest.raises(Closed) as closed:
        while watching.receive(timeout=WAIT) is not None:
            pass
    assert (closed.value.code, closed.value.reason) == (1000, "Chat was archived.")


def test_server_pings_idle_clients(watching):
    # The fixture's server pings every second; nothing else is sent while idle.
    deadline = time.monotonic() + WAIT
    while watching.pings == 0 and time.monotonic() < deadline:
        watching.receive(timeout=0.5)
    assert watching.pings >= 1


def test_server_notices_a_client_that_went_away(server, chat, user, workspace, app):
    make_repo(workspace)
    hub = app.extensions["watch_hub"]
    ws = connect(server, chat, user)
    receive(ws)
    assert hub.open_sockets() == 1
    ws.drop()  # vanish without a close frame
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and hub.open_sockets():
        time.sleep(0.1)
    assert hub.open_sockets() == 0


def test_a_client_that_stops_answering_pings_is_dropped(server, chat, user, workspace, app):
    # The connection stays up but the client reads nothing, so it never answers a ping (every second here).
    hub = app.extensions["watch_hub"]
    ws = connect(server, chat, user)
    receive(ws)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and hub.open_sockets():
        time.sleep(0.1)
    assert hub.open_sockets() == 0
    ws.drop()


def test_a_client_message_over_64_kib_closes_the_socket_with_1009(watching):
    watching.send_text(json.dumps({"type": "refresh", "padding": "x" * (64 * 1024)}))
    closed = watching.wait_until_closed()
    assert closed.code == 1009


def test_an_unmasked_client_frame_closes_the_socket_with_1002(watching):
    # RFC 6455 5.1: a server must close the connection on a frame the client did not mask.
    watching._ws.sock.sendall(b"\x81\x10" + b'{"type":"refresh"}'[:16])
    closed = watching.wait_until_closed()
    assert closed.code == 1002


# Ownership and ceilings.


def test_one_watch_more_than_the_per_user_limit_is_429_before_the_upgrade(server, chat, user, workspace, app):
    app.config["WATCH_MAX_PER_USER"] = 2
    open_sockets = [connect(server, chat, user) for _ in range(2)]
    try:
        for ws in open_sockets:
            receive(ws)
        with pytest.raises(Rejected) as rejected:
            connect(server, chat, user)
        assert rejected.value.status == 429
        assert json.loads(rejected.value.body)["message"] == "Too many open watches."
    finally:
        for ws in open_sockets:
            ws.close()
    deadline = time.monotonic() + WAIT  # the server frees a slot once it has seen the close
    while True:
        try:
            ws = connect(server, chat, user)
            break
        except Rejected:
            assert time.monotonic() < deadline, "slots were not given back"
            time.sleep(0.1)
    assert receive(ws)["type"] == "changes"
    ws.close()


def test_another_users_watches_do_not_count_against_mine(server, client, chat, user, other_user, app):
    app.config["WATCH_MAX_PER_USER"] = 1
    Path(other_user["workspaces_dir"], "proj").mkdir()
    bobs_chat = client.post("/api/v2/chats", json={"title": "b", "workspace": "proj"},
                            headers={"Coder-Session-Token": other_user["token"]}).json
    mine, bobs = connect(server, chat, user), connect(server, bobs_chat, other_user)
    try:
        assert receive(mine)["type"] == "changes" and receive(bobs)["type"] == "changes"
    finally:
        mine.close(), bobs.close()


def test_workspace_swapped_for_a_symlink_while_open_sends_an_error_and_nothing_outside(
    server, chat, user, workspace, tmp_path
):
    secret = f"SECRET-{uuid.uuid4().hex}"
    outside = make_repo(tmp_path / "elsewhere" / "repo")
    (outside / "secret.txt").write_text(secret + "\n")
    make_repo(workspace)
    ws = connect(server, chat, user)
    try:
        assert "." in by_root(receive(ws))
        shutil.rmtree(workspace)
        workspace.symlink_to(outside.parent, target_is_directory=True)
        ws.send_json({"type": "refresh"})
        message = receive(ws)
        assert message["type"] == "error" and message["message"]
        assert secret not in json.dumps(message)
        ws.send_json({"type": "refresh"})
        assert receive(ws)["type"] == "error"
    finally:
        ws.close()


# Many sockets, one loop.


def test_one_users_stalled_scans_do_not_delay_another_users_messages(server, client, chat, user, other_user,
                                                                      monkeypatch):
    """Alice's repositories take forever to read (more of them than there are scan threads); Bob's change
    still reaches him while hers are stuck: her scans take turns, they never hold every thread."""
    from gitwatch import scan as scan_module

    released = threading.Event()
    stalled = []
    read = scan_module.sandboxed.read_repository

    def slow_for_alice(repo_dir, *args, **kwargs):
        if Path(user["workspaces_dir"]) in Path(repo_dir).parents:
            stalled.append(repo_dir)
            released.wait(60)
        return read(repo_dir, *args, **kwargs)

    monkeypatch.setattr(scan_module.sandboxed, "read_repository", slow_for_alice)
    alice = {"Coder-Session-Token": user["token"]}
    alices = []
    for number in range(hub_module.SCAN_THREADS + 1):
        make_repo(Path(user["workspaces_dir"], f"slow{number}"))
        slow_chat = client.post("/api/v2/chats", json={"title": "s", "workspace": f"slow{number}"},
                                headers=alice).json
        alices.append(connect(server, slow_chat, user))
    bobs_workspace = make_repo(Path(other_user["workspaces_dir"], "proj"))
    bobs_chat = client.post("/api/v2/chats", json={"title": "b", "workspace": "proj"},
                            headers={"Coder-Session-Token": other_user["token"]}).json
    try:
        bob = connect(server, bobs_chat, other_user)
        assert "." in by_root(receive(bob))
        (bobs_workspace / "README.md").write_text("hello\nfrom bob\n")
        receive_changes(bob, lambda m: "+from bob" in by_root(m).get(".", {}).get("unified_diff", ""))
        assert not released.is_set() and len(stalled) == 1  # one of hers at a time, still stuck
        bob.close()
    finally:
        released.set()
        for ws in alices:
            ws.close()


def test_sockets_on_one_workspace_share_its_scans(server, chat, user, workspace, monkeypatch):
    from gitwatch import scan as scan_module

    reads = []
    read = scan_module.sandboxed.read_repository
    monkeypatch.setattr(scan_module.sandboxed, "read_repository",
                        lambda *args, **kwargs: reads.append(args[0]) or read(*args, **kwargs))
    make_repo(workspace)
    sockets = [connect(server, chat, user) for _ in range(5)]
    try:
        for ws in sockets:
            receive(ws)
        reads.clear()
        (workspace / "README.md").write_text("hello\nshared\n")
        for ws in sockets:
            receive_changes(ws, lambda m: "+shared" in by_root(m).get(".", {}).get("unified_diff", ""))
        assert len(reads) <= 2  # one scan for all five (two when the write landed in two bursts)
    finally:
        for ws in sockets:
            ws.close()


def test_a_refresh_is_answered_even_while_another_socket_keeps_the_workspace_busy(server, chat, user, workspace):
    make_repo(workspace)
    first, second = connect(server, chat, user), connect(server, chat, user)
    try:
        receive(first), receive(second)
        second.send_json({"type": "refresh"})
        assert receive(second)["type"] == "changes"
        assert first.receive(timeout=1) is None  # the refresh was the other socket's: nothing new here
    finally:
        first.close(), second.close()


def test_archiving_by_patch_closes_the_socket(watching, chat, auth, client):
    """Upstream's PATCH {"archived": true} announces the archive as the POST route does."""
    assert client.patch(f"/api/v2/chats/{chat['id']}", json={"archived": True}, headers=auth).status_code == 204
    with pytest.raises(Closed) as closed:
        while watching.receive(timeout=WAIT) is not None:
            pass
    assert (closed.value.code, closed.value.reason) == (1000, "Chat was archived.")


@pytest.mark.parametrize("path", ["/api/experimental/chats/{}/stream/git", "/api/experimental/chats/{}/git/watch",
                                  "/api/v2/chats/{}/stream/git"])
def test_upstreams_watch_paths_upgrade_and_answer_the_same(server, chat, user, workspace, client, auth, path):
    make_repo(workspace)
    ws = WatchClient(server + path.format(chat["id"]), user["token"])
    try:
        assert [repo["repo_root"] for repo in receive(ws)["repositories"]] == ["."]
        ws.send_json({"type": "bogus"})
        assert receive(ws)["type"] == "error"
    finally:
        ws.close()
    # Before an upgrade, the same JSON errors as the v2 path.
    assert_error(client.get(path.format(chat["id"]), headers=auth), 400, "Expected a WebSocket upgrade.")
    assert_error(client.get(path.format(uuid.uuid4()), headers={**auth, **UPGRADE_HEADERS}), 404)
