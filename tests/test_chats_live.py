"""Chats under gunicorn, over real HTTP, on both databases: the per-chat cap under racing requests, and an
archive by upstream's PATCH closing a socket opened at upstream's watch path."""

import os

import pytest
import requests

from harness.imaging import make_image
from harness.live import GunicornServer, sqlite_settings
from harness.wsclient import WatchClient
from tests.concurrency import run_at_once

CAP = 3
RACERS = 8
ROUNDS = 3


@pytest.fixture(params=["sqlite", "postgres"])
def live(request, tmp_path):
    settings = sqlite_settings(tmp_path)  # the files' bytes are beside the point: a local store on both
    if request.param == "postgres":
        settings["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    server = GunicornServer({**settings, "MAX_FILES_PER_CHAT": CAP,
                             "WEB_CONCURRENCY": 2, "WEB_THREADS": RACERS}, work_dir=str(tmp_path))
    server.start()
    yield server
    server.stop()


def test_racing_links_for_the_last_slot_let_exactly_one_in(live):
    """RACERS requests, each linking its own file to a chat one short of the cap, sent at once: one 204, the
    rest 400, and the chat holds CAP files. Without the chat-row lock (chats/links.py) this fails on both
    databases: several links each count CAP - 1 and get in."""
    account = live.flask("create-user", "alice", "--org", "acme")
    headers = {"Coder-Session-Token": account["token"]}
    png = make_image("image/png", 8, 8)

    def new_file():
        response = requests.post(f"{live.url}/api/v2/chats/files", params={"organization": account["organization_id"]},
                                 data=png, headers={**headers, "Content-Type": "image/png"}, timeout=10)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    # A file may be in several chats: each round links the same files to a fresh chat.
    first, racers = [new_file() for _ in range(CAP - 1)], [new_file() for _ in range(RACERS)]
    for _ in range(ROUNDS):  # a race lost once is not a proof
        chat = requests.post(f"{live.url}/api/v2/chats", json={"title": "race"}, headers=headers, timeout=10).json()
        url = f"{live.url}/api/v2/chats/{chat['id']}/files"
        assert requests.post(url, json={"file_ids": first}, headers=headers,
                             timeout=10).status_code == 204
        files = list(racers)

        def link_one(file_id):
            response = requests.post(url, json={"file_ids": [file_id]}, headers=headers, timeout=30)
            return response.status_code, response.json()["message"] if response.content else ""

        results = run_at_once(lambda: link_one(files.pop()), RACERS)

        assert sorted(results) == [(204, "")] + [(400, "Too many files in this chat.")] * (RACERS - 1)
        linked = requests.get(f"{live.url}/api/v2/chats/{chat['id']}", headers=headers, timeout=10).json()["files"]
        assert len(linked) == CAP


def test_patch_archive_closes_a_socket_opened_at_the_experimental_stream_path(live):
    """On PostgreSQL the socket hears of the archive only through the NOTIFY sent in PATCH's transaction."""
    account = live.flask("create-user", "alice", "--org", "acme")
    headers = {"Coder-Session-Token": account["token"]}
    os.makedirs(os.path.join(account["workspaces_dir"], "proj"))
    chat = requests.post(f"{live.url}/api/experimental/chats", json={"title": "w", "workspace": "proj"},
                         headers=headers, timeout=10).json()
    ws = WatchClient(live.url.replace("http://", "ws://") + f"/api/experimental/chats/{chat['id']}/stream/git",
                     account["token"])
    try:
        assert ws.receive(timeout=10)["type"] == "changes"
        response = requests.patch(f"{live.url}/api/experimental/chats/{chat['id']}", json={"archived": True},
                                  headers=headers, timeout=10)
        assert response.status_code == 204, response.text
        closed = ws.wait_until_closed()
        assert (closed.code, closed.reason) == (1000, "Chat was archived.")
    finally:
        ws.close()
