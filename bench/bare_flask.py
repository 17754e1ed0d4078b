"""Flask's own floor under a 304: ``gunicorn -c gunicorn.conf.py bench.bare_flask:app``.

One route with the service's download rule answering the hand-built 304 of
bench/bare.py: no middleware, no token, no database, no log line. What the
service's 304 costs beyond this is its own code; what this costs beyond
bench/bare.py is Flask's request and response machinery, which the
service's 304 cannot go below while it is a Flask app.
"""

from flask import Flask, Response

from bench.bare import HEADERS

app = Flask(__name__, static_folder=None)


@app.get("/api/v2/chats/files/<file_id>")
def not_modified(file_id):
    return Response(status=304, headers=HEADERS)
