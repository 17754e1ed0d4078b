"""An upload's proof: an image decoded and its variants made, or a text or PDF checked, in a sandbox process
(sandbox/tasks.py); and the stored type that follows (filetypes).

Two limits keep a worker's decodes from crowding it out: the bytes decoded
at once (budget.py) and its decode sandboxes, which are its decode slots. An
upload that waits too long for either gets 503.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

import filetypes
from attachments import budget
from imaging import images, variants
from ops import observability
from sandbox import PoolBusy
from sandbox import tasks as sandboxed
from web.bodies import SpooledBody
from web.errors import ApiError


def verify_and_make(body: SpooledBody) -> sandboxed.ImageResults:
    """(info, still, made) of the spooled ``body``, as sandboxed.verify_and_make gives them; 400 for what is not
    an image of an allowed type, 503 when no room or slot came free in time.

    The upload waits up to BUDGET_WAIT_SECONDS for room in the budget, then up
    to DECODE_WAIT_TIMEOUT for a slot.
    """
    config = current_app.config
    try:
        with budget.reserved(body.size), observability.image_work():
            return sandboxed.verify_and_make(body.fileno(), config["MAX_IMAGE_PIXELS"], config["MAX_DECODE_MEMORY"],
                                             body.sha256, max_file_size=config["MAX_FILE_SIZE"],
                                             wait=config["DECODE_WAIT_TIMEOUT"])
    except PoolBusy:
        raise budget.busy() from None
    except images.UnsupportedType as error:
        raise ApiError(400, "Unsupported file type.", str(error), code="unsupported_type") from None
    except images.InvalidImage as error:
        raise ApiError(400, "Invalid image file.", str(error), code="invalid_image") from None


@dataclass(frozen=True)
class Verified:
    """What an upload proved: its stored type, and for an image its displayed size and variants."""

    content_type: str
    width: int | None  # None: no pixels (text, PDF)
    height: int | None
    animated: bool
    made: list[variants.Made]


def verify(body: SpooledBody, declared: str, name: str | None) -> Verified:
    """The upload proved as the family its declared type names (filetypes), or 400; 503 as verify_and_make.

    ``declared`` is one of filetypes.ALLOWED_TYPES (the route checked it); ``name`` the display name, which
    refines a text/plain upload's stored type.
    """
    family = filetypes.family_of(declared)
    if family is None:  # the route refuses these before reading the body
        raise ApiError(400, "Unsupported file type.", code="unsupported_type")
    if family.pixels:
        info, still, made = verify_and_make(body)
        return Verified(info.content_type, still.width, still.height, info.animated, made)
    json_check = filetypes.json_check(declared, name) if family.name == filetypes.TEXT else filetypes.JsonCheck.NONE
    is_json = _check_document(body, family.name, json_check)
    stored = filetypes.stored_text_type(declared, name, is_json) if family.name == filetypes.TEXT else declared
    return Verified(stored, None, None, False, [])


def _check_document(body: SpooledBody, family: str, json_check: str) -> bool:
    """sandboxed.verify_document within the worker's budget, its errors as the contract's answers."""
    config = current_app.config
    try:
        with budget.reserved(body.size):
            return sandboxed.verify_document(body.fileno(), family, json_check, max_memory=config["MAX_DECODE_MEMORY"],
                                             max_file_size=config["MAX_FILE_SIZE"], wait=config["DECODE_WAIT_TIMEOUT"])
    except PoolBusy:
        raise budget.busy() from None
    except filetypes.WrongFamily as error:
        raise ApiError(400, "Unsupported file type.", str(error), code="unsupported_type") from None
    except filetypes.InvalidFile as error:
        raise ApiError(400, error.message, error.detail, code=filetypes.INVALID_CODES[error.message]) from None
