"""Tasks that misbehave the ways a hostile file makes a parser misbehave, for tests/test_sandbox.py.

Run inside a sandbox process (sandbox/worker.py imports this module as its tasks).
"""

import os
import signal
import time


def run(header, fds):
    return _TASKS[header["task"]](header, fds)


def _echo(header, fds):
    """What a healthy task does: answer, with a blob; and which process answered."""
    return {"pid": os.getpid(), "fds": len(fds)}, [header["text"].encode()]


def _allocate(header, fds):
    """A decoder asking for more memory than the ceiling."""
    hoard = bytearray(header["bytes"])
    return {"allocated": len(hoard)}, []


def _spin(header, fds):
    """A decoder in a loop that only burns CPU (LittleCMS on a pipeline of a million stages)."""
    while True:
        pass


def _block(header, fds):
    """A read blocked in the kernel, burning nothing (libgit2 opening a FIFO)."""
    with open(header["fifo"], "rb") as fifo:
        return {"read": len(fifo.read())}, []


def _crash(header, fds):
    """A decoder that corrupts its memory."""
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)


_KEPT = []


def _keep(header, fds):
    """A library that caches what it decoded and never gives it back."""
    _KEPT.append(bytearray(header["bytes"]))
    return {"kept": len(_KEPT[-1])}, []


def _lying_decode(header, fds):
    """A decoder a hostile file took over, claiming the upload is a page and its thumbnail a script.

    An upload that starts ``original:<type>`` is claimed as an image of that type serving as its own preview."""
    start = os.pread(fds[0], 64, 0) if fds else b""
    if start.startswith(b"original:"):
        claimed = start[len(b"original:"):].decode().strip()
        info = {"content_type": claimed, "width": 1, "height": 1, "animated": False}
        preview = {"name": "preview", "content_type": claimed, "width": 1, "height": 1}
        return {"info": info, "still": {"width": 1, "height": 1}, "made": [(preview, None)]}, []
    made = [({"name": "thumbnail", "content_type": "text/html", "width": 1, "height": 1}, 0)]
    info = {"content_type": header.get("claim", "text/html"), "width": 1, "height": 1, "animated": False}
    return {"info": info, "still": {"width": 1, "height": 1}, "made": made}, [b"<script>alert(1)</script>"]


def _lying_document(header, fds):
    """A text or PDF checker a hostile file took over, answering with a message of its own."""
    return {"invalid": "<script>alert(1)</script>", "detail": "<img src=x onerror=alert(1)>"}, []


def _lying_scan(header, fds):
    """A repository read that answers for another repository."""
    return {"state": {"repo_root": "../bob", "branch": "main", "remote_origin": "", "unified_diff": "",
                      "error": ""}}, []


_TASKS = {"verify_and_make": _lying_decode, "verify_document": _lying_document, "read_repository": _lying_scan, "echo": _echo, "allocate": _allocate, "spin": _spin, "block": _block, "crash": _crash, "keep": _keep}
