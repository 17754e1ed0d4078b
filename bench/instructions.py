"""Instructions per request, counted by valgrind: ``.venv/bin/python -m bench.instructions``.

CPU time on a shared 2-core machine moves by tens of percent from run to
run; the number of instructions a request executes does not. Each kind of
request runs in this process's Flask app (no gunicorn, no network between
client and app), once ``SHORT`` and once ``LONG`` times under ``valgrind
--tool=callgrind``; (instructions of the long run − of the short one) ÷
(LONG − SHORT) is the cost of one request, start-up cancelled out. Only the
app's process is counted: moto, which the upload writes to, runs natively
beside it. A run takes a few minutes (valgrind runs Python ~50 times slower).

    .venv/bin/python -m bench.instructions              # every kind
    .venv/bin/python -m bench.instructions 304 upload   # some
"""

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = {  # kind: (what it is, short, long)
    "304": ("conditional GET answered 304, local storage", 50, 200),
    "200": ("GET of a 40x30 PNG, local storage", 50, 200),
    "upload": ("upload of an 80x60 PNG to moto's S3, its thumbnail made and stored", 5, 25),
    # The same 304 without what the service adds, and from the floors beneath it (see bench/grid.py conditional).
    "304-nolog": ("the service's 304 with LOG_LEVEL=WARNING: no request log line", 50, 200),
    "304-contract": ("the same 304 from bench/contract_304.py: token check and row lookup only", 50, 200),
    "304-flask": ("the same 304 from bench/bare_flask.py: Flask's own floor", 50, 200),
    "304-bare": ("the same 304 from bench/bare.py: a bare WSGI app", 50, 200),
}
FLOOR_APPS = {"304-contract": "bench.contract_304", "304-flask": "bench.bare_flask", "304-bare": "bench.bare"}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kinds", nargs="*", metavar="KIND", help="any of " + ", ".join(KINDS) + " (default: all)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        return _requests(args.child[0], int(args.child[1]))
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    args.kinds = args.kinds or list(KINDS)
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = {kind: pool.map(lambda n, kind=kind: _instructions(kind, n), KINDS[kind][1:]) for kind in args.kinds}
        for kind, (short, long) in ((kind, list(result)) for kind, result in counts.items()):
            what, n_short, n_long = KINDS[kind]
            print(f"{kind:7} {(long - short) / (n_long - n_short):12,.0f} instructions/request  ({what})")
    return 0


def _instructions(kind, count):
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
               "bench.instructions", "--child", kind, str(count)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return int(re.search(r"Collected : (\d+)", done.stderr).group(1))


def _requests(kind, count):
    """In the child, under valgrind: a warm-up, then ``count`` requests of ``kind``."""
    sys.path.insert(0, str(ROOT))
    scratch = tempfile.mkdtemp(prefix="bench-instructions-")
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(dir=scratch))
    settings = {"DATABASE_URL": f"sqlite:///{scratch}/chatfiles.db", "LOCAL_STORAGE_ROOT": f"{scratch}/objects",
                "WORKSPACES_ROOT": f"{scratch}/workspaces", "LOG_LEVEL": "WARNING" if kind == "304-nolog" else "INFO"}
    os.environ["DATABASE_URL"] = settings["DATABASE_URL"]  # bench/contract_304.py reads the service's database
    moto = None
    try:
        if kind == "upload":
            from bench.stack import AWS_ENVIRONMENT, BUCKET
            from harness.servers import MotoServer

            os.environ.update(AWS_ENVIRONMENT)
            moto = MotoServer(f"{scratch}/moto")
            moto.start()
            moto.create_bucket(BUCKET)
            settings.update(S3_BUCKET=BUCKET, S3_ENDPOINT_URL=moto.endpoint_url)
        request = _prepared_request(kind, settings, open(os.devnull, "w"))
        for _ in range(5 + count):
            request()
    finally:
        if moto is not None:
            moto.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _prepared_request(kind, settings, log_stream):
    """A function making one request of ``kind`` through the app's WSGI callable, asserting its status."""
    from PIL import Image
    from werkzeug.test import EnvironBuilder

    import cli
    import migrations
    from app import create_app
    from models import db

    app = create_app(settings)
    with app.app_context():
        migrations.upgrade()
        with db.connection_context():
            account = cli.create_user("bench", "bench-org", 90)
    sys.stdout = log_stream  # the request lines: written, as in production, but not to the terminal
    auth = {"Coder-Session-Token": account["token"]}
    image = io.BytesIO()
    Image.effect_noise((64, 48), 64).convert("RGB").resize((80, 60) if kind == "upload" else (40, 30)).save(
        image, "PNG")
    data = image.getvalue()
    upload = {"path": "/api/v2/chats/files", "method": "POST", "query_string": {"organization":
              account["organization_id"]}, "data": data, "headers": {**auth, "Content-Type": "image/png"}}
    client = app.test_client()
    created = client.post(upload["path"], query_string=upload["query_string"], data=data, headers=upload["headers"])
    file_url = f"/api/v2/chats/files/{created.json['id']}"
    etag = client.get(file_url, headers=auth).headers["ETag"]
    if kind == "upload":
        make_environ, status = (lambda: EnvironBuilder(**upload).get_environ()), "201"
    else:
        headers = auth if kind == "200" else {**auth, "If-None-Match": etag}
        environ = EnvironBuilder(path=file_url, headers=headers).get_environ()
        make_environ, status = (lambda: dict(environ)), "200" if kind == "200" else "304"
    wsgi_app = app.wsgi_app
    if kind in FLOOR_APPS:
        import importlib

        floor = importlib.import_module(FLOOR_APPS[kind]).app
        wsgi_app = getattr(floor, "wsgi_app", floor)  # Flask's app, or the bare WSGI callable

    def one_request():
        answered = []
        body = wsgi_app(make_environ(), lambda line, headers, exc_info=None: answered.append(line))
        for _ in body:
            pass
        if hasattr(body, "close"):
            body.close()
        assert answered[0].startswith(status), answered

    return one_request


if __name__ == "__main__":
    sys.exit(main())
