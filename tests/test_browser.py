"""The service in a real browser: headless Chromium, through the shipped nginx, on a page nginx serves.

The page (tests/browser/chat.html) is served on the service's own origin and,
by a second nginx server block on another port, on a different origin, from
where it plays the hostile page.
"""

import json
import os
import re
from pathlib import Path

import pytest
import requests

from harness.chromium import ChromiumBrowser
from harness.servers import LOCALHOST, free_port
from tests.concurrency import wait_for
from tests.fixtures_edge import make_workspace, require
from tests.fixtures_servers import serving

PAGE = "/browser-test/chat.html"
STATIC_LOCATION = """
location /browser-test/ {
    root static;
    types { text/html html; }
}
"""
ACCESS_LOG_REQUEST = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3}) ')


@pytest.fixture
def browser():
    require(ChromiumBrowser.available(), "chromium")
    yield from serving(ChromiumBrowser())


@pytest.fixture
def sites(start_nginx):
    """(nginx, the other origin's URL): the page on the service's origin, and on another port."""
    other_port = free_port()
    nginx = start_nginx(
        static_files={PAGE.lstrip("/"): (Path(__file__).parent / "browser" / "chat.html").read_bytes()},
        frontend_conf=STATIC_LOCATION,
        extra_http=f"server {{\n    listen {LOCALHOST}:{other_port};\n{STATIC_LOCATION}}}\n",
    )
    return nginx, f"http://{LOCALHOST}:{other_port}"


def requests_reaching_service(nginx, path_prefix):
    """(method, target, status) of every request nginx passed on whose target starts with `path_prefix`."""
    found = []
    for line in nginx.access_log().splitlines():
        match = ACCESS_LOG_REQUEST.search(line)
        if match and match["target"].startswith(path_prefix):
            found.append((match["method"], match["target"], int(match["status"])))
    return found


def test_the_service_in_a_real_browser(sites, browser, instances, account):
    nginx, other_origin = sites
    organization = json.dumps(account["organization_id"])
    page = browser.page()
    page.call("Page.enable")
    page.call("Network.setCookie", name="coder_session_token", value=account["token"], url=nginx.url)
    page.navigate(nginx.url + PAGE)

    # fetch() upload from the page, authenticated by the cookie alone.
    uploaded = page.evaluate(f"upload({organization})")
    assert uploaded["status"] == 201, uploaded
    file_id = uploaded["body"]["id"]
    file_path = f"/api/v2/chats/files/{file_id}"

    # <img> renders it: the browser decoded what the service stored.
    page.navigate(f"{nginx.url}{PAGE}?file={file_id}")
    assert page.evaluate("document.getElementById('picture').naturalWidth") == 40
    # nginx logs a request once its response is done, which may be just after the page has the image.
    wait_for(lambda: requests_reaching_service(nginx, file_path), "the image's request in nginx's log")
    assert requests_reaching_service(nginx, file_path) == [("GET", file_path, 200)]

    # A second navigation shows it from the browser's cache: no request reaches the service.
    page.navigate(f"{nginx.url}{PAGE}?file={file_id}&again=1")
    assert page.evaluate("document.getElementById('picture').naturalWidth") == 40
    assert requests_reaching_service(nginx, file_path) == [("GET", file_path, 200)]

    # The watch socket (cookie-authenticated) gets a change without a refresh.
    workspace = make_workspace(account, instances, "proj")
    chat = requests.post(f"{nginx.url}/api/v2/chats", json={"title": "w", "workspace": "proj"},
                         headers={"Coder-Session-Token": account["token"]}, timeout=10).json()
    assert page.evaluate(f"watch(location.origin, {json.dumps(chat['id'])})") == "open"
    wait_for(lambda: page.evaluate("watchMessages.length") >= 1, "the first watch message")
    with open(os.path.join(workspace, "notes.txt"), "w") as handle:
        handle.write("seen in the browser\n")
    wait_for(lambda: page.evaluate(
        "watchMessages.some(m => m.type === 'changes' && m.repositories.some(r => r.unified_diff.includes('seen in the browser')))"
    ), "the change to arrive on the socket")

    # A page on another origin: the cookie goes along (same site), the service refuses.
    page.navigate(other_origin + PAGE)
    upload_path = "/api/v2/chats/files?organization="
    uploads_before = requests_reaching_service(nginx, upload_path)
    assert page.evaluate(f"uploadFrom({json.dumps(nginx.url)}, {organization})") == "sent"
    refused = wait_for(lambda: requests_reaching_service(nginx, upload_path)[len(uploads_before):],
                         "the cross-origin upload in nginx's log")
    assert [status for _, _, status in refused] == [403]

    watch_path = f"/api/v2/chats/{chat['id']}/git/watch"
    assert page.evaluate(f"watch({json.dumps(nginx.url)}, {json.dumps(chat['id'])})") == "closed 1006"
    assert [status for _, _, status in requests_reaching_service(nginx, watch_path)][-1] == 403

    # Safe methods stay open to other origins: its <img> of the file still shows.
    assert page.evaluate(f"show({json.dumps(nginx.url + file_path)})") == 40
    page.close()
