"""The floor under a 304: a trivial WSGI app, ``gunicorn -c gunicorn.conf.py bench.bare:app``.

Every request gets an empty ``304 Not Modified`` with the headers a
conditional GET of a chat file carries, built by hand. What a 304 from the
service costs beyond one of these (same gunicorn settings, same client,
same connection reuse) is the service's own work: dispatch, the token and
row lookups, the request log and metrics.
"""

HEADERS = [
    ("Cache-Control", "private, max-age=31536000, immutable"),
    ("ETag", '"0000000000000000000000000000000000000000000000000000000000000000"'),
    ("X-Content-Type-Options", "nosniff"),
]


def app(environ, start_response):
    start_response("304 Not Modified", HEADERS)
    return [b""]
