"""The service as an operator runs it: gunicorn, the Procfile's config, real HTTP."""

import hashlib
import threading

import pytest
import requests

from tests.imaging import make_image
from tests.live import GunicornServer


@pytest.fixture(params=["sqlite-local", "postgres-s3"])
def live(request, tmp_path):
    if request.param == "sqlite-local":
        env = {"DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite", "LOCAL_STORAGE_ROOT": str(tmp_path / "objects")}
    else:
        endpoint_url, bucket = request.getfixturevalue("s3_bucket")
        env = {"DATABASE_URL": request.getfixturevalue("postgres_url"), "S3_BUCKET": bucket,
               "S3_ENDPOINT_URL": endpoint_url}
    env.update(WEB_CONCURRENCY=3, WEB_THREADS=8, WORKSPACES_ROOT=str(tmp_path / "workspaces"))
    server = GunicornServer(env, work_dir=str(tmp_path))
    server.start()
    yield server
    server.stop()


def test_readme_flow_upload_and_download_over_http(live):
    account = live.flask("create-user", "alice", "--org", "acme")
    headers = {"Coder-Session-Token": account["token"]}
    data = make_image("image/png", 300, 200)
    response = requests.post(
        f"{live.url}/api/v2/chats/files",
        params={"organization": account["organization_id"]},
        data=data,
        headers={**headers, "Content-Type": "image/png", "Content-Disposition": 'attachment; filename="a.png"'},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    download = requests.get(f"{live.url}/api/v2/chats/files/{response.json()['id']}", headers=headers, timeout=10)
    assert download.status_code == 200
    assert download.content == data
    assert download.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'


def test_chunked_upload_over_http(live):
    account = live.flask("create-user", "alice", "--org", "acme")
    data = make_image("image/jpeg", 300, 200)
    chunks = (data[i : i + 1000] for i in range(0, len(data), 1000))  # a generator: requests sends it chunked
    response = requests.post(
        f"{live.url}/api/v2/chats/files",
        params={"organization": account["organization_id"]},
        data=chunks,
        headers={"Coder-Session-Token": account["token"], "Content-Type": "image/jpeg"},
        timeout=10,
    )
    assert response.status_code == 201, response.text


def test_concurrent_archives_across_workers_give_one_204(live):
    account = live.flask("create-user", "alice", "--org", "acme")
    headers = {"Coder-Session-Token": account["token"]}
    chat = requests.post(f"{live.url}/api/v2/chats", json={"title": "race"}, headers=headers, timeout=10).json()
    barrier = threading.Barrier(10)
    statuses = []

    def archive():
        with requests.Session() as session:  # one connection each, spread over the workers
            barrier.wait()
            statuses.append(session.post(f"{live.url}/api/v2/chats/{chat['id']}/archive", headers=headers,
                                         timeout=30).status_code)

    threads = [threading.Thread(target=archive) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [204] + [400] * 9
