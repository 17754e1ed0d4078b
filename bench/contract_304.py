"""The least a correct 304 costs in Flask: ``gunicorn -c gunicorn.conf.py bench.contract_304:app``.

One route doing only what the contract asks of a conditional GET, with the
service's own pieces: the caller's token checked (``auth.user_for_token``,
with its per-process cache), the file's row found by id and owner (the
service's prepared lookup, through the same peewee pool, on the service's
database, given in ``DATABASE_URL``), and the 304 when the ETag matches.
No middleware, request id, log line, metrics or cross-origin hook.

Between bench/bare_flask.py and this is the contract's own work; between
this and the service's 304 is what the service adds to every request for
operability (the request log line, metrics, request ids) and defence (the
body and cross-origin middleware).
"""

import os
import uuid

from flask import Flask, Response, request

import config
import models
from attachments.rows import FILE_TO_SEND
from bench.bare import HEADERS
from web import auth

app = Flask(__name__, static_folder=None)
app.config["TOKEN_CACHE_SECONDS"] = config.DEFAULTS["TOKEN_CACHE_SECONDS"]
models.db.initialize(models.connect_database(os.environ["DATABASE_URL"], config.DEFAULTS["DATABASE_POOL_SIZE"]))


@app.get("/api/v2/chats/files/<file_id>")
def not_modified(file_id):
    user = auth.user_for_token(request.headers.get(auth.TOKEN_HEADER))
    if user is None:
        return Response(status=401)
    try:
        file_uuid = uuid.UUID(file_id)
    except ValueError:
        return Response(status=400)
    row = FILE_TO_SEND.first(file_uuid, user.id)
    models.release_connection()
    if row is None or not request.if_none_match.contains_weak(row.sha256):
        return Response(status=404)  # the benchmark only asks for its own file, with its ETag
    headers = dict(HEADERS)
    headers["ETag"] = f'"{row.sha256}"'
    return Response(status=304, headers=headers)
