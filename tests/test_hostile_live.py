"""Issue 16's reproductions, all at once, against the service under gunicorn: one worker, so the
attacker shares it with everyone else. The worker keeps answering /healthz throughout, and another
user's upload and watch socket are served as if nothing happened.

The attacker (alice, with an account) watches a workspace of hostile repositories and uploads hostile
images while bob uploads and watches his own repository.
"""

import os
import resource
import statistics
import threading
import time
from pathlib import Path

import pytest
import requests

from bench.decode_memory import ASPECT_CORPUS, CORPUS, corpus_file
from harness.imaging import make_image
from harness.live import GunicornServer, sqlite_settings
from harness.wsclient import WatchClient
from tests.test_gitwatch import git, make_repo
from tests.test_gitwatch_hostile import deep_chains  # noqa: F401 (fixture)
from tests.test_hostile_images import PROFILES, png_with_icc

BOBS_SECRET_ORIGIN = "https://git.example.com/bob/private-plans.git"
HEALTHZ_BOUND = 1.0  # seconds; the measured figures (p50, max) go to the test's output


@pytest.fixture
def one_worker(tmp_path):
    server = GunicornServer({**sqlite_settings(tmp_path), "WEB_CONCURRENCY": 1, "WEB_THREADS": 16},
                            work_dir=str(tmp_path))
    server.start()
    yield server
    server.stop()


class HealthzProbe(threading.Thread):
    """Asks /healthz every 50 ms until stopped; every answer's latency, and any failure."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.latencies = []
        self.failures = []
        self._stopping = threading.Event()

    def run(self):
        while not self._stopping.wait(0.05):
            started = time.monotonic()
            try:
                status = requests.get(f"{self.url}/healthz", timeout=10).status_code
            except requests.RequestException as error:
                self.failures.append(repr(error))
                continue
            self.latencies.append(time.monotonic() - started)
            if status != 200:
                self.failures.append(status)

    def stop(self):
        self._stopping.set()
        self.join(15)


def hostile_workspace(root, bobs_git_dir, deep_chains):
    """Each of the issue's hostile repositories, and one honest one, in ``root``."""
    make_repo(root / "good")
    (root / "good" / "README.md").write_text("hello\nchanged\n")

    fifo_ref = make_repo(root / "fifo-ref")
    os.remove(fifo_ref / ".git" / "refs" / "heads" / "main")
    os.mkfifo(fifo_ref / ".git" / "refs" / "heads" / "main")  # libgit2's open() of HEAD's ref blocks
    fifo_config = make_repo(root / "fifo-config")
    os.remove(fifo_config / ".git" / "config")
    os.mkfifo(fifo_config / ".git" / "config")
    fifo_ignore = make_repo(root / "fifo-ignore")
    os.mkfifo(fifo_ignore / ".gitignore")

    sparse = make_repo(root / "sparse")
    with open(sparse / "README.md", "r+b") as tracked:  # a tracked file now 500 MiB of nothing
        tracked.truncate(500 * 1024 * 1024)

    leak = make_repo(root / "leak")
    with open(leak / ".git" / "config", "a") as config:
        config.write("#" + " padding" * 150_000 + "\n")  # 1.2 MB of comment first
        config.write(f"[include]\n\tpath = {bobs_git_dir / 'config'}\n")

    deep_chains(root / "deep")  # 2,000 levels: a recursive walk would recurse once per level


def post_chat(server, token, workspace):
    response = requests.post(f"{server.url}/api/v2/chats", json={"title": workspace, "workspace": workspace},
                             headers={"Coder-Session-Token": token}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def watch(server, token, chat):
    url = server.url.replace("http://", "ws://") + f"/api/v2/chats/{chat['id']}/git/watch"
    return WatchClient(url, token, timeout=30)


def upload(server, account, data, content_type):
    return requests.post(f"{server.url}/api/v2/chats/files", params={"organization": account["organization_id"]},
                         data=data, headers={"Coder-Session-Token": account["token"], "Content-Type": content_type},
                         timeout=60)


def test_every_reproduction_at_once_leaves_the_worker_and_other_users_unaffected(one_worker, deep_chains):
    server = one_worker
    alice = server.flask("create-user", "alice", "--org", "acme")
    bob = server.flask("create-user", "bob", "--org", "acme")
    bobs_repo = make_repo(Path(bob["workspaces_dir"]) / "plans")
    git(bobs_repo, "remote", "add", "origin", BOBS_SECRET_ORIGIN)
    hostile_workspace(Path(alice["workspaces_dir"]) / "proj", bobs_repo / ".git", deep_chains)
    corpus = {name: (content_type, builder) for name, content_type, builder in CORPUS + ASPECT_CORPUS}
    attacks = [  # [declared type, bytes, the status it must get, the response]
        ["image/png", png_with_icc(PROFILES["mpet of 100,000 matrices (the issue's)"][0]), 201, None],
        *[[corpus[name][0], corpus_file(name, corpus[name][1]).read_bytes(), 400, None]
          for name in ("gif-frame-past-the-screen", "png-palette-1x39999999")],
    ]

    probe = HealthzProbe(server.url)
    probe.start()
    sockets = []
    try:
        alices = watch(server, alice["token"], post_chat(server, alice["token"], "proj"))
        uploading = [threading.Thread(target=lambda attack=attack: attack.__setitem__(3, upload(
            server, alice, attack[1], attack[0]))) for attack in attacks]
        for thread in uploading:
            thread.start()

        # Bob, meanwhile, on the same worker.
        bobs_upload = upload(server, bob, make_image("image/png", 300, 200), "image/png")
        bobs = watch(server, bob["token"], post_chat(server, bob["token"], "plans"))
        sockets += [alices, bobs]
        bobs_first = bobs.receive(timeout=30)

        alices_first = alices.receive(timeout=60)
        for thread in uploading:
            thread.join(90)
    finally:
        probe.stop()
        for ws in sockets:
            ws.close()

    assert bobs_upload.status_code == 201, bobs_upload.text
    assert [repo["repo_root"] for repo in bobs_first["repositories"]] == ["."]
    assert bobs_first["repositories"][0]["remote_origin"] == BOBS_SECRET_ORIGIN

    assert alices_first["type"] == "changes", alices_first
    reported = {repo["repo_root"]: repo for repo in alices_first["repositories"]}
    assert "good" in reported and "+changed" in reported["good"]["unified_diff"]
    assert not {"fifo-ref", "fifo-config", "fifo-ignore", "leak"} & set(reported), sorted(reported)
    assert reported["sparse"]["unified_diff"].startswith("Diff too large to display")  # known by its size
    assert "private-plans" not in str(alices_first)

    for content_type, _, expected, response in attacks:
        assert response is not None and response.status_code == expected, (content_type, response)

    assert not probe.failures, probe.failures
    print(f"/healthz during the attack: {len(probe.latencies)} answers, median "
          f"{statistics.median(probe.latencies) * 1000:.1f} ms, max {max(probe.latencies) * 1000:.1f} ms")
    assert max(probe.latencies) < HEALTHZ_BOUND


def sandbox_processes(pid):
    """The sandbox processes a worker started (from any of its threads), by their command line."""
    found = []
    for thread in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{thread}/children") as children:
            for child in children.read().split():
                with open(f"/proc/{child}/cmdline", "rb") as cmdline:
                    if b"sandbox.worker" in cmdline.read():
                        found.append(int(child))
    return found


def test_a_worker_starts_its_sandboxes_at_boot_and_they_end_with_it(one_worker):
    (worker,) = one_worker.worker_pids()
    deadline = time.monotonic() + 30
    while len(sandbox_processes(worker)) < 4 and time.monotonic() < deadline:  # 2 decode, 2 scan: no upload yet
        time.sleep(0.1)
    started = sandbox_processes(worker)
    assert len(started) == 4

    one_worker.stop()
    deadline = time.monotonic() + 15
    while any(os.path.exists(f"/proc/{pid}") for pid in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in started)


def test_a_worker_may_open_as_many_files_as_the_hard_limit_allows(tmp_path):
    """Every watch socket is a descriptor: gunicorn.conf.py raises the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    server = GunicornServer(sqlite_settings(tmp_path, WEB_CONCURRENCY=1), work_dir=str(tmp_path))
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # what most shells start with
    try:
        server.start()  # inherits it
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        (worker,) = server.worker_pids()
        with open(f"/proc/{worker}/limits") as limits:
            line = next(line for line in limits if line.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)], line
    finally:
        server.stop()

