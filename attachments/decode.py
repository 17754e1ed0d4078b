"""An upload's decode: verified, and its variants made, in a sandbox process (sandbox/tasks.py).

Two limits keep a worker's decodes from crowding it out: the bytes decoded
at once (budget.py) and its decode sandboxes, which are its decode slots. An
upload that waits too long for either gets 503.
"""

from __future__ import annotations

from flask import current_app

from attachments import budget
from imaging import images
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
