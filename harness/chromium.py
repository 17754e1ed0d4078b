"""Headless Chromium driven over the DevTools protocol, for the browser test.

Debian's chromium package (installed by scripts/test); nothing is downloaded
at run time. One ChromiumBrowser is a fresh profile in a scratch directory;
``page()`` gives a DevTools session on its first tab.
"""

import itertools
import json
import os
import shutil
import time
import urllib.request

import websocket

from harness.servers import LOCALHOST, _make_scratch_dir, _remove_scratch_dir, _ServerProcess

# The Debian launcher (/usr/bin/chromium) is a shell script around this binary.
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")


def find_chromium():
    for candidate in CHROMIUM_CANDIDATES:
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.access(path, os.X_OK):
            return path
    return None


class DevToolsError(RuntimeError):
    pass


class ChromiumBrowser(_ServerProcess):
    """Headless Chromium with its DevTools endpoint on a loopback port."""

    NAME = "chromium"
    STARTUP_TIMEOUT = 60

    def __init__(self):
        super().__init__()
        self.work_dir = _make_scratch_dir("chromium-")

    @classmethod
    def available(cls):
        return find_chromium() is not None

    @property
    def log_path(self):
        return self.work_dir / "chromium.log"

    def close(self):
        self.stop()
        _remove_scratch_dir(self.work_dir)

    def page(self):
        """A DevTools session on the browser's first tab."""
        targets = self._get_json("/json/list")
        page = next(target for target in targets if target["type"] == "page")
        return DevTools(page["webSocketDebuggerUrl"])

    def _command(self, port):
        profile = self.work_dir / f"profile-{port}"
        return [
            find_chromium(),
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage",  # /dev/shm is small in containers
            f"--user-data-dir={profile}",
            f"--remote-debugging-address={LOCALHOST}", f"--remote-debugging-port={port}",
            "about:blank",
        ]

    def _get_json(self, path):
        with urllib.request.urlopen(f"http://{LOCALHOST}:{self.port}{path}", timeout=5) as response:
            return json.load(response)

    def _answers(self):
        try:
            return any(target["type"] == "page" for target in self._get_json("/json/list"))
        except (OSError, ValueError):
            return False


class DevTools:
    """One DevTools session: commands answered in order, events kept for who asks."""

    def __init__(self, url, timeout=30):
        # DevTools refuses WebSocket clients sending an Origin it was not told to allow.
        self._ws = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self._ids = itertools.count(1)
        self.events = []
        self.timeout = timeout

    def close(self):
        self._ws.close()

    def call(self, method, **params):
        message_id = next(self._ids)
        self._ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = self._receive()
            if message.get("id") == message_id:
                if "error" in message:
                    raise DevToolsError(f"{method}: {message['error']}")
                return message.get("result", {})

    def wait_for_event(self, method, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for index, event in enumerate(self.events):
                if event["method"] == method:
                    return self.events.pop(index)
            if time.monotonic() > deadline:
                raise DevToolsError(f"no {method} event")
            self._receive()

    def navigate(self, url):
        """Load `url` and wait for its load event (images included)."""
        self.events = [event for event in self.events if event["method"] != "Page.loadEventFired"]
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise DevToolsError(f"navigating to {url}: {result['errorText']}")
        self.wait_for_event("Page.loadEventFired")

    def evaluate(self, expression):
        """The value of a JavaScript expression in the page, promises awaited."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _receive(self):
        message = json.loads(self._ws.recv())
        if "method" in message:
            self.events.append(message)
        return message
