"""The shipped deploy/nginx.conf in front of two instances sharing PostgreSQL and S3.

Everything goes through nginx as a client of the deployed service would; the
instances are reached directly only to look at them (metrics, logs) or to
act on one of them on purpose.
"""

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import websocket

from harness.imaging import make_image
from harness.live import archive_and_wait_for_close, kill_instance, log_lines
from harness.servers import raw_exchange
from harness.wsclient import WatchClient
from tests.concurrency import wait_for
from tests.fixtures_edge import make_workspace

MAX_FILE_SIZE = 10 * 1024 * 1024  # the default, which deploy/nginx.conf's client_max_body_size is matched to
FILE_TOO_LARGE = {"message": "File too large.", "detail": f"Maximum file size is {MAX_FILE_SIZE} bytes."}
CHUNK = 1 << 20
# What nginx writes when it takes an instance for failed or its connection broke.
UPSTREAM_FAILURE_MARKS = ("upstream prematurely closed", "broken pipe", "no live upstreams", "reset",
                          "temporarily disabled")


def upload(base_url, account, data, content_type="image/png", **options):
    headers = {"Coder-Session-Token": account["token"], "Content-Type": content_type, **options.pop("headers", {})}
    return requests.post(f"{base_url}/api/v2/chats/files", params={"organization": account["organization_id"]},
                         data=data, headers=headers, timeout=60, **options)


def download(base_url, account, file_id, **headers):
    return requests.get(f"{base_url}/api/v2/chats/files/{file_id}",
                        headers={"Coder-Session-Token": account["token"], **headers}, timeout=30)


def upstream_failures(nginx):
    return [line for line in nginx.error_log().splitlines() if any(mark in line.lower() for mark in UPSTREAM_FAILURE_MARKS)]


def request_lines(instance, method, route):
    return [line for line in log_lines(instance) if line.get("method") == method and line.get("route") == route]


def test_upload_download_and_304_through_nginx_on_both_instances(nginx, instances, account):
    images = [make_image("image/png", 40 + index, 30) for index in range(4)]
    ids = []
    for data in images:
        response = upload(nginx.url, account, data, headers={"Content-Disposition": 'attachment; filename="a.png"'})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    for file_id, data in zip(ids, images):
        response = download(nginx.url, account, file_id)
        assert response.status_code == 200
        assert response.content == data
        assert response.headers["Cache-Control"] == "private, max-age=31536000, immutable"
        assert response.headers["Content-Type"] == "image/png"
        revalidated = download(nginx.url, account, file_id, **{"If-None-Match": response.headers["ETag"]})
        assert revalidated.status_code == 304
        assert revalidated.content == b""
    # Round robin: both instances took uploads, and each served what the other stored.
    for instance in instances:
        assert request_lines(instance, "POST", "/api/v2/chats/files")
    assert upstream_failures(nginx) == []


def test_ranges_pass_through_nginx_untouched(nginx, account):
    """nginx passes Range and If-Range on and the service's 206 and 416 back, never a 200 of its own making."""
    data = make_image("image/png", 300, 200)
    file_id = upload(nginx.url, account, data).json()["id"]
    whole = download(nginx.url, account, file_id)
    assert (whole.status_code, whole.headers["Accept-Ranges"], whole.content) == (200, "bytes", data)
    etag, size = whole.headers["ETag"], len(data)

    partial = download(nginx.url, account, file_id, Range="bytes=10-29", **{"If-Range": etag})
    assert partial.status_code == 206
    assert partial.content == data[10:30]
    assert partial.headers["Content-Range"] == f"bytes 10-29/{size}"
    assert partial.headers["Content-Length"] == "20"
    assert partial.headers["Accept-Ranges"] == "bytes"

    suffix = download(nginx.url, account, file_id, Range="bytes=-7")
    assert (suffix.status_code, suffix.content) == (206, data[-7:])

    past_the_end = download(nginx.url, account, file_id, Range=f"bytes={size}-")
    assert past_the_end.status_code == 416
    assert past_the_end.json() == {"message": "Range not satisfiable.", "detail": f"The file is {size} bytes long."}
    assert past_the_end.headers["Content-Range"] == f"bytes */{size}"

    stale = download(nginx.url, account, file_id, Range="bytes=10-29", **{"If-Range": '"0000"'})
    assert (stale.status_code, stale.content) == (200, data)
    several = download(nginx.url, account, file_id, Range="bytes=0-1,5-6")
    assert (several.status_code, several.content) == (200, data)
    cached = download(nginx.url, account, file_id, Range="bytes=10-29", **{"If-None-Match": etag})
    assert (cached.status_code, cached.content) == (304, b"")
    head = requests.head(f"{nginx.url}/api/v2/chats/files/{file_id}", timeout=30,
                         headers={"Coder-Session-Token": account["token"], "Range": "bytes=10-29"})
    assert (head.status_code, head.headers["Content-Length"], head.headers["Accept-Ranges"]) == (200, str(size), "bytes")


def test_chunked_upload_through_nginx(nginx, account):
    data = make_image("image/jpeg", 300, 200)
    chunks = (data[i : i + 1000] for i in range(0, len(data), 1000))  # a generator: sent chunked
    response = upload(nginx.url, account, chunks, "image/jpeg")
    assert response.status_code == 201, response.text
    assert download(nginx.url, account, response.json()["id"]).content == data


def test_forwarded_for_from_the_client_is_not_trusted_past_nginx(nginx, instances, account):
    headers = {"Coder-Session-Token": account["token"], "X-Forwarded-For": "203.0.113.9",
               "X-Request-ID": "forged-forwarded-for"}
    assert requests.get(f"{nginx.url}/api/v2/chats", headers=headers, timeout=10).status_code == 200
    line = wait_for_request_line(instances, "forged-forwarded-for")
    assert line["remote_addr"] == "127.0.0.1"  # nginx's view of the client, not the header


def wait_for_request_line(instances, request_id):
    """The request's log line, written just after its response went out (so: maybe a moment after)."""
    def find():
        lines = (line for instance in instances for line in log_lines(instance))
        return next((line for line in lines if line.get("request_id") == request_id and "status" in line), None)

    return wait_for(find, f"the log line of request {request_id}")


@pytest.mark.parametrize("size, chunked", [
    (MAX_FILE_SIZE + 1, False),  # answered by the service, before it read the body
    (MAX_FILE_SIZE + 1, True),  # nginx buffers the chunked body, then sends it with a Content-Length
    (11 * 1024 * 1024 - 1, False),  # the most nginx lets through
    (40 * 1024 * 1024, False),  # answered by nginx itself, in the same words
])
def test_over_limit_upload_gets_the_json_413_and_nginx_never_fails_the_instance(nginx, account, size, chunked):
    body = b"\x89PNG\r\n\x1a\n" + bytes(size - 8)
    for _ in range(6):  # the lost answer came 1 in 8 to 2 in 6 tries
        data = (body[i : i + CHUNK] for i in range(0, size, CHUNK)) if chunked else body
        response = upload(nginx.url, account, data)
        assert response.status_code == 413, response.text
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json() == FILE_TOO_LARGE
    assert upstream_failures(nginx) == []
    # Both instances still in rotation: the next uploads land and succeed.
    for _ in range(2):
        assert upload(nginx.url, account, make_image()).status_code == 201
    assert upstream_failures(nginx) == []


@pytest.mark.parametrize("status", [401, 403])
def test_large_body_refused_before_reading_gets_its_json_answer(nginx, instances, account, status):
    if status == 401:
        caller = {**account, "token": "nope-nope"}
    else:  # a member of another organization only
        caller = {**account, "organization_id": instances[0].flask("create-user", "bob", "--org", "globex")["organization_id"]}
    body = b"\x89PNG\r\n\x1a\n" + bytes(MAX_FILE_SIZE - 8)
    for _ in range(8):
        response = upload(nginx.url, caller, body)
        assert response.status_code == status, response.text
        assert "message" in response.json()
    assert upstream_failures(nginx) == []


def test_nginx_errors_of_its_own_are_json(nginx, instances):
    metrics = requests.get(f"{nginx.url}/metrics", timeout=10)  # kept off the public listener
    assert (metrics.status_code, metrics.json()) == (404, {"message": "Not found."})
    for instance in instances:
        kill_instance(instance)
    response = requests.get(f"{nginx.url}/healthz", timeout=30)
    assert response.status_code == 502
    assert response.json() == {"message": "Service unavailable."}


# Past large_client_header_buffers (4 x 8k by default): nginx reads no further.
LONG_REQUEST_LINE = b"GET /api/v2/chats?q=" + b"a" * 20000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
NGINX_OWN_ERRORS = {
    "414 request line too long": (LONG_REQUEST_LINE, 414, "Request URI too long."),
    "414 on the upload route": (LONG_REQUEST_LINE.replace(b"/api/v2/chats?", b"/api/v2/chats/files?"), 414,
                                "Request URI too long."),
    "501 unknown transfer coding": (b"POST /api/v2/chats/files HTTP/1.1\r\nHost: localhost\r\n"
                                    b"Transfer-Encoding: gzip\r\n\r\n", 501, "Not implemented."),
    "400 request line not HTTP": (b"NOT A REQUEST LINE\r\n\r\n", 400, "Bad request."),
    "400 no Host": (b"GET /healthz HTTP/1.1\r\n\r\n", 400, "Bad request."),
    # 494 goes out as 400 (nginx's choice), with its own words.
    "494 header too large": (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
                             400, "Request headers too large."),
    "505 HTTP version": (b"GET /healthz HTTP/2.0\r\nHost: localhost\r\n\r\n", 505, "HTTP version not supported."),
    "404 the error page itself": (b"GET /_chatfiles/nginx-error HTTP/1.1\r\nHost: localhost\r\n"
                                  b"Connection: close\r\n\r\n", 404, "Not found."),
}


def test_nginx_answers_malformed_requests_with_json_and_their_own_status(nginx):
    # One nginx for every case: starting the instances is most of the time.
    answers = {}
    for case, (request_bytes, _, _) in NGINX_OWN_ERRORS.items():
        status, headers, body = raw_exchange(nginx.port, request_bytes)
        answers[case] = (status, headers.get("content-type"), body)
    expected = {case: (status, "application/json", {"message": message})
                for case, (_, status, message) in NGINX_OWN_ERRORS.items()}
    assert {case: (status, content_type, json_or_text(body))
            for case, (status, content_type, body) in answers.items()} == expected


def json_or_text(body):
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("latin-1")


def watch_url(nginx, chat):
    return nginx.url.replace("http://", "ws://") + f"/api/v2/chats/{chat['id']}/git/watch"


def open_sockets(instance):
    metrics = requests.get(f"{instance.url}/metrics", timeout=10).text
    line = next(line for line in metrics.splitlines() if line.startswith("chatfiles_watch_sockets_open"))
    return int(float(line.split()[-1]))


def test_watch_through_nginx_and_archive_on_one_instance_closes_sockets_held_by_the_other(nginx, instances, account):
    headers = {"Coder-Session-Token": account["token"]}
    workspace = make_workspace(account, instances, "proj")
    chat = requests.post(f"{nginx.url}/api/v2/chats", json={"title": "w", "workspace": "proj"}, headers=headers,
                         timeout=10).json()
    sockets = [WatchClient(watch_url(nginx, chat), account["token"]) for _ in range(4)]
    try:
        for ws in sockets:
            assert ws.receive(timeout=10)["type"] == "changes"
        # A change reaches every socket through nginx, unbuffered, without a refresh.
        with open(os.path.join(workspace, "notes.txt"), "w") as handle:
            handle.write("through the proxy\n")
        for ws in sockets:
            message = ws.receive(timeout=15)
            assert message["type"] == "changes"
            assert "through the proxy" in message["repositories"][0]["unified_diff"]

        held = [open_sockets(instance) for instance in instances]
        assert sum(held) == 4
        # Archive through an instance while the *other* one holds sockets.
        archiver, holder = (instances[0], instances[1]) if held[1] else (instances[1], instances[0])
        assert open_sockets(holder) > 0
        archive_and_wait_for_close(archiver.url, chat, headers, sockets)
    finally:
        for ws in sockets:
            ws.close()


def test_cookie_authenticated_watch_through_nginx_is_checked_against_the_host_the_browser_used(
        nginx, instances, account):
    # What a browser sends (no Sec-Fetch-Site on a WebSocket): the cookie, and its page's Origin.
    make_workspace(account, instances, "proj")
    chat = requests.post(f"{nginx.url}/api/v2/chats", json={"title": "w", "workspace": "proj"},
                         headers={"Coder-Session-Token": account["token"]}, timeout=10).json()
    cookie = f"coder_session_token={account['token']}"
    ws = websocket.create_connection(watch_url(nginx, chat), cookie=cookie, origin=nginx.url, timeout=10)
    try:
        assert json.loads(ws.recv())["type"] == "changes"
    finally:
        ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(watch_url(nginx, chat), cookie=cookie, origin="http://127.0.0.1:1", timeout=10)
    assert refused.value.status_code == 403


def test_killing_one_instance_loses_no_acknowledged_upload(nginx, instances, account):
    uploads_per_client, clients, kill_after = 15, 4, 12
    finished = []
    lock = threading.Lock()
    enough_finished = threading.Event()

    def client(index):
        results = []
        with requests.Session() as session:
            for number in range(uploads_per_client):
                data = make_image("image/png", 20 + index, 10 + number)  # every upload different
                try:
                    response = session.post(
                        f"{nginx.url}/api/v2/chats/files", params={"organization": account["organization_id"]},
                        data=data, headers={"Coder-Session-Token": account["token"], "Content-Type": "image/png"},
                        timeout=60)
                    results.append((response.status_code, response.text, data))
                except requests.ConnectionError:
                    results.append((None, "", data))  # never acknowledged
                with lock:
                    finished.append(number)
                    if len(finished) == kill_after:
                        enough_finished.set()
        return results

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, index) for index in range(clients)]
        assert enough_finished.wait(timeout=120)
        kill_instance(instances[0])  # while the clients are still uploading
        results = [result for future in futures for result in future.result()]

    acknowledged = [(json.loads(text)["id"], data) for status, text, data in results if status == 201]
    refused = [(status, text) for status, text, _ in results if status != 201]
    assert len(acknowledged) > kill_after  # instance B kept taking uploads after A died
    for status, text in refused:  # in flight on A when it died: nginx says so, in JSON
        assert status is None or (status, json.loads(text)) == (502, {"message": "Service unavailable."})
    for file_id, data in acknowledged:
        response = download(nginx.url, account, file_id)
        assert response.status_code == 200
        assert response.content == data


def test_upstreams_paths_through_nginx_the_watch_upgrades_and_an_oversized_upload_gets_the_json_413(
        nginx, instances, account):
    """/api/experimental/chats… reaches the instances, and its watch (also at /stream/git) gets the upgrade
    headers the v2 watch gets: without them the service would answer 400 Expected a WebSocket upgrade."""
    headers = {"Coder-Session-Token": account["token"]}
    make_workspace(account, instances, "proj")
    chat = requests.post(f"{nginx.url}/api/experimental/chats", json={"title": "w", "workspace": "proj"},
                         headers=headers, timeout=10).json()
    base = nginx.url.replace("http://", "ws://")
    for path in ("/api/experimental/chats/{}/stream/git", "/api/experimental/chats/{}/git/watch",
                 "/api/v2/chats/{}/stream/git"):
        ws = WatchClient(base + path.format(chat["id"]), account["token"])
        try:
            assert ws.receive(timeout=10)["type"] == "changes", path
        finally:
            ws.close()
    response = requests.patch(f"{nginx.url}/api/experimental/chats/{chat['id']}", json={"archived": True},
                              headers=headers, timeout=10)
    assert response.status_code == 204, response.text
    assert requests.get(f"{nginx.url}/api/experimental/chats/{chat['id']}", headers=headers,
                        timeout=10).json()["archived"] is True
    oversized = requests.post(f"{nginx.url}/api/experimental/chats/files",
                              params={"organization": account["organization_id"]},
                              data=b"\x89PNG\r\n\x1a\n" + bytes(40 * 1024 * 1024), timeout=60,
                              headers={**headers, "Content-Type": "image/png"})
    assert (oversized.status_code, oversized.json()) == (413, FILE_TOO_LARGE)
