"""The work that runs in sandbox processes, and the serving side's call for each.

Each task is a pair kept side by side: ``_<task>(header, fds)`` runs in the
sandbox and answers (header, blobs); the public function of the same name is
what the serving process calls, with the same arguments and results as the
in-process function it wraps, and the sandbox's failures mapped to that
function's own errors:

- ``verify_and_make``: an upload's image work (variants.verify_and_make) on
  its spooled file, passed as a file descriptor. A sandbox that ran out of
  memory or time is ``InvalidImage`` ("too expensive to decode").
- ``verify_document``: an upload's text or PDF check (filetypes.text.verify_text,
  filetypes.pdf.verify_pdf) on its spooled file, in the same pool and under
  the same limits as an image's decode. A sandbox that ran out of memory or
  time is the family's ``InvalidFile`` ("too expensive to check").
- ``read_repository``: one repository of a watched workspace
  (gitwatch.repository.read_repository). A sandbox that failed leaves the
  repository out (``RepositoryRefused``); no free sandbox in the scan's time
  is the scan running out of time (the repository is read next turn).
"""

from __future__ import annotations

import hashlib
import logging
import math
import mmap
import os
import threading
import time
from typing import Any, Callable, Mapping

import filetypes
from filetypes import pdf as pdf_check
from filetypes import text as text_check
from gitwatch import repository
from imaging import images, variants
from sandbox.pool import Limits, Pool, PoolBusy, SandboxFailed, pool

log = logging.getLogger(__name__)

# Image work: as many processes as decodes may run at once per serving process (more would not go
# faster on two cores); each may add MAX_DECODE_MEMORY to its idle size, plus the upload's own mapping.
DECODE_PROCESSES = 2
DECODE_CPU_SECONDS = 5
DECODE_WALL_SECONDS = 15
# Repository reads: a workspace's repositories are read one by one.
SCAN_PROCESSES = 2
SCAN_MEMORY = 256 * 1024 * 1024
SCAN_LIMITS = Limits(memory=SCAN_MEMORY, cpu_seconds=5, wall_seconds=10)

TOO_EXPENSIVE = {
    "memory": "it needs more memory than the decoder's ceiling",
    "cpu": "it needs more CPU time than the decoder's limit",
    "deadline": "it did not finish within the decoder's time limit",
    "crashed": "the decoder failed on it",
}

TOO_EXPENSIVE_TO_CHECK = {
    "memory": "it needs more memory than the checker's ceiling",
    "cpu": "it needs more CPU time than the checker's limit",
    "deadline": "it did not finish within the checker's time limit",
    "crashed": "the checker failed on it",
}

# What a task answers: a JSON header and byte strings.
Answer = tuple[dict[str, Any], list[bytes]]
ImageResults = tuple[images.ImageInfo, variants.Still, list[variants.Made]]


def decode_pool(max_decode_memory: int, max_file_size: int) -> Pool:
    return pool("decode", DECODE_PROCESSES,
                Limits(max_decode_memory + max_file_size, DECODE_CPU_SECONDS, DECODE_WALL_SECONDS))


def scan_pool() -> Pool:
    return pool("scan", SCAN_PROCESSES, SCAN_LIMITS)


def warm(config: Mapping[str, Any]) -> None:
    """Start the decode and scan sandboxes now, in the background, not on the first upload or watch."""
    for each in (decode_pool(config["MAX_DECODE_MEMORY"], config["MAX_FILE_SIZE"]), scan_pool()):
        threading.Thread(target=each.warm, name=f"sandbox-{each.name}-warm", daemon=True).start()


def prepare() -> None:
    """Inside the sandbox, before its memory ceiling: load what decoding loads lazily elsewhere (libheif:
    pillow-heif's opener), so it counts in the idle size and never in a task's memory. The serving
    process imports this module too, and never calls this."""
    images.register_camera_decoders()


def run(header: dict[str, Any], fds: list[int]) -> Answer:
    """Inside the sandbox: the task the header names."""
    return _TASKS[header["task"]](header, fds)


# --- an upload's image work -----------------------------------------------------


def verify_and_make(
    fileno: int, max_pixels: int, max_memory: int, sha256: str, *, max_file_size: int, wait: float
) -> ImageResults:
    """imaging.variants.verify_and_make on the file open at ``fileno``, in a sandbox; raises what it raises, and PoolBusy."""
    header = {"max_pixels": max_pixels, "max_memory": max_memory, "sha256": sha256}
    try:
        answer, blobs = decode_pool(max_memory, max_file_size).run("verify_and_make", header, fds=[fileno],
                                                                   wait=wait)
    except SandboxFailed as failure:
        raise images.InvalidImage(f"The image is too expensive to decode: {TOO_EXPENSIVE[failure.cause]}.") from None
    if "unsupported" in answer:
        raise images.UnsupportedType(str(answer["unsupported"]))
    if "invalid" in answer:
        raise images.InvalidImage(str(answer["invalid"]))
    try:
        return _image_results(answer, blobs, os.fstat(fileno).st_size, sha256)
    except (KeyError, TypeError, ValueError, IndexError) as error:
        log.error("a decode sandbox answered what is not a decode's result: %r", error)
        raise images.InvalidImage(f"The image is too expensive to decode: {TOO_EXPENSIVE['crashed']}.") from None


def _image_results(answer: dict[str, Any], blobs: list[bytes], size: int, sha256: str) -> ImageResults:
    """(ImageInfo, Still, [Made]) from a sandbox's answer, taken as untrusted: a hostile file that took
    the decoder over may lie, so only an allowed type is believed, every number must be one, and a
    variant's size and digest are computed here from its bytes (the original's are the upload's own)."""
    fields = answer["info"]
    info = images.ImageInfo(_one_of(fields["content_type"], images.ALLOWED_TYPES), _pixels(fields["width"]),
                            _pixels(fields["height"]), fields["animated"] is True)
    still = variants.Still(None, _pixels(answer["still"]["width"]), _pixels(answer["still"]["height"]))
    made: list[variants.Made] = []
    for fields, index in answer["made"]:
        name, width, height = _one_of(fields["name"], variants.NAMES), _pixels(fields["width"]), _pixels(fields["height"])
        if index is None:  # the original itself serves as this variant (a web image's only)
            _one_of(info.content_type, images.WEB_TYPES)
            made.append(variants.Made(name, info.content_type, width, height, size, sha256))
        else:
            data = blobs[index]
            made.append(variants.Made(name, _one_of(fields["content_type"], (variants.ENCODING[1],)), width, height,
                                      len(data), hashlib.sha256(data).hexdigest(), data))
    return info, still, made


def _one_of(value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{value!r} is not one of {allowed}")
    return allowed[allowed.index(value)]


def _pixels(value: object) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"{value!r} is not a size in pixels")
    return value


def _verify_and_make(header: dict[str, Any], fds: list[int]) -> Answer:
    with mmap.mmap(fds[0], 0, access=mmap.ACCESS_READ) as data:
        try:
            info, still, made = variants.verify_and_make(data, header["max_pixels"], header["max_memory"],
                                                         header["sha256"])
        except images.UnsupportedType as error:
            return {"unsupported": str(error)}, []
        except images.InvalidImage as error:
            return {"invalid": str(error)}, []
    blobs: list[bytes] = []
    made_fields: list[tuple[dict[str, Any], int | None]] = []
    for variant in made:
        fields = {name: getattr(variant, name) for name in ("name", "content_type", "width", "height")}
        made_fields.append((fields, None if variant.data is None else len(blobs)))
        if variant.data is not None:
            blobs.append(variant.data)
    answer = {
        "info": {"content_type": info.content_type, "width": info.width, "height": info.height,
                 "animated": info.animated},
        "still": {"width": still.width, "height": still.height},
        "made": made_fields,
    }
    return answer, blobs


# --- an upload's text or PDF check ----------------------------------------------


def verify_document(
    fileno: int, family: str, json_check: str, *, max_memory: int, max_file_size: int, wait: float
) -> bool:
    """filetypes.text.verify_text (``family`` TEXT, with ``json_check``) or filetypes.pdf.verify_pdf (PDF) on
    the file open at ``fileno``, in a decode sandbox: whether it parsed as JSON. Raises what they raise
    (WrongFamily, InvalidFile), and PoolBusy."""
    header = {"family": family, "json_check": json_check}
    message = filetypes.INVALID_MESSAGES[
        family if family == filetypes.PDF or json_check != filetypes.JsonCheck.REQUIRED else filetypes.JSON_TYPE]
    try:
        answer, _ = decode_pool(max_memory, max_file_size).run("verify_document", header, fds=[fileno], wait=wait)
    except SandboxFailed as failure:
        raise filetypes.InvalidFile(message, f"The file is too expensive to check: "
                                             f"{TOO_EXPENSIVE_TO_CHECK[failure.cause]}.") from None
    # Taken as untrusted, as an image's answer: only a known message is repeated.
    if "unsupported" in answer:
        raise filetypes.WrongFamily(str(answer["unsupported"]))
    if "invalid" in answer:
        if answer["invalid"] not in filetypes.INVALID_MESSAGES.values():
            log.error("a decode sandbox answered an unknown message: %r", answer["invalid"])
            raise filetypes.InvalidFile(
                message, f"The file is too expensive to check: {TOO_EXPENSIVE_TO_CHECK['crashed']}.")
        raise filetypes.InvalidFile(str(answer["invalid"]), str(answer.get("detail", "")))
    return answer.get("json") is True


def _verify_document(header: dict[str, Any], fds: list[int]) -> Answer:
    with mmap.mmap(fds[0], 0, access=mmap.ACCESS_READ) as data:
        try:
            if header["family"] == filetypes.PDF:
                pdf_check.verify_pdf(data)
                return {"json": False}, []
            return {"json": text_check.verify_text(data, header["json_check"])}, []
        except filetypes.WrongFamily as error:
            return {"unsupported": str(error)}, []
        except filetypes.InvalidFile as error:
            return {"invalid": error.message, "detail": error.detail}, []


# --- one repository of a watched workspace ----------------------------------------


def read_repository(
    repo_dir: str, repo_root: str, boundary: str, *, max_diff_bytes: int = repository.MAX_DIFF_BYTES,
    deadline: float = math.inf,
) -> repository.RepoState:
    """gitwatch.repository.read_repository in a sandbox (monotonic deadlines are the same in every process)."""
    header = {"repo_dir": repo_dir, "repo_root": repo_root, "boundary": boundary, "max_diff_bytes": max_diff_bytes,
              "deadline": None if math.isinf(deadline) else deadline}
    wait = SCAN_LIMITS.wall_seconds if math.isinf(deadline) else max(0.0, deadline - time.monotonic())
    try:
        answer, _ = scan_pool().run("read_repository", header, wait=wait)
    except PoolBusy:
        return repository.RepoState(repo_root, error=repository.OUT_OF_TIME)
    except SandboxFailed as failure:
        log.warning("repository %s left out: its read failed in the sandbox (%s)", repo_root, failure)
        raise repository.RepositoryRefused(f"reading it failed: {failure}") from None
    if "refused" in answer:
        raise repository.RepositoryRefused(str(answer["refused"]))
    fields = answer.get("state")
    if (not isinstance(fields, dict) or set(fields) != set(_STATE_FIELDS) or fields["repo_root"] != repo_root
            or not all(isinstance(value, str) for value in fields.values())):
        log.error("a scan sandbox answered what is not %s's state; left out", repo_root)
        raise repository.RepositoryRefused("the sandbox's answer was not a repository's state")
    return repository.RepoState(**fields)


def _read_repository(header: dict[str, Any], fds: list[int]) -> Answer:
    deadline = math.inf if header["deadline"] is None else header["deadline"]
    try:
        state = repository.read_repository(header["repo_dir"], header["repo_root"], header["boundary"],
                                           max_diff_bytes=header["max_diff_bytes"], deadline=deadline)
    except repository.RepositoryRefused as refused:
        return {"refused": str(refused)}, []
    return {"state": {name: getattr(state, name) for name in _STATE_FIELDS}}, []


_STATE_FIELDS = ("repo_root", "branch", "remote_origin", "unified_diff", "error")


_TASKS: dict[str, Callable[[dict[str, Any], list[int]], Answer]] = {
    "verify_and_make": _verify_and_make,
    "verify_document": _verify_document,
    "read_repository": _read_repository,
}
