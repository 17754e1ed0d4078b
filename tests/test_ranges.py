"""Range requests on downloads (RFC 9110 §14), on both stores: 206, 416, If-Range, and a 304 that wins.

The database plays no part in ranges, so these run on SQLite only, over the
local directory store and moto's S3 server; the stores' ranged opens are
checked on their own too, S3's down to the request it sends.
"""

import hashlib
import os

import pytest

import models
from harness.imaging import make_image
from storage import ByteRange
from tests.conftest import make_app
from tests.test_files import assert_error, upload
from web import ranges
from web.errors import ApiError

FILES = "/api/v2/chats/files"
BIG = 20 * 1024 * 1024  # past any size: "the rest of the file"


@pytest.fixture
def app(storage_config, tmp_path):
    """Both stores, one database: overrides conftest's app for this module."""
    app = make_app(f"sqlite:///{tmp_path}/chatfiles.db", storage_config, tmp_path)
    yield app
    models.close_all_connections()


@pytest.fixture
def png():
    return make_image("image/png", 64, 48)


@pytest.fixture
def file_id(client, auth, user, png):
    response = upload(client, auth, png, organization=user["organization_id"])
    assert response.status_code == 201, response.json
    return response.json["id"]


@pytest.fixture
def etag(png):
    return f'"{hashlib.sha256(png).hexdigest()}"'


@pytest.fixture
def opened_ranges(app, monkeypatch):
    """The byte_range of every storage open, in order."""
    storage = app.extensions["storage"]
    real_open = storage.open
    seen = []

    def recording_open(key, byte_range=None):
        seen.append(byte_range)
        return real_open(key, byte_range)

    monkeypatch.setattr(storage, "open", recording_open)
    return seen


def get(client, auth, file_id, path="", method="GET", **headers):
    return client.open(f"{FILES}/{file_id}{path}", method=method, headers={**auth, **headers})


def assert_partial(response, data, first, last):
    assert response.status_code == 206, response.get_data(as_text=True)
    assert response.data == data[first:last + 1]
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(data)}"
    assert response.headers["Content-Length"] == str(last - first + 1)
    assert response.headers["Accept-Ranges"] == "bytes"


def assert_whole(response, data):
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.data == data
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["Accept-Ranges"] == "bytes"
    assert "Content-Range" not in response.headers


def assert_not_satisfiable(response, size):
    assert_error(response, 416, "Range not satisfiable.", f"The file is {size} bytes long.")
    assert response.headers["Content-Range"] == f"bytes */{size}"


# What each Range header gets, for a file of `n` bytes: (first, last) of a 206, "whole" (200) or 416.
SATISFIABLE = {
    "bytes=0-9": lambda n: (0, 9),
    "bytes=10-": lambda n: (10, n - 1),
    "bytes=-10": lambda n: (n - 10, n - 1),
    "bytes=0-0": lambda n: (0, 0),
    "last byte": lambda n: (n - 1, n - 1),
    "suffix larger than the file": lambda n: (0, n - 1),
    "end past the file": lambda n: (5, n - 1),
    "bytes=0-99999999999999999999999": lambda n: (0, n - 1),
    "an end of 5000 digits": lambda n: (0, n - 1),  # int() of it raises: a 500 without the digit cap
    "leading zeros": lambda n: (1, 2),
    "BYTES=0-3 (units ignore case)": lambda n: (0, 3),
    "spaces and tabs around the range": lambda n: (0, 4),
    "an empty list element": lambda n: (0, 4),
}


def range_header(case, n):
    return {
        "last byte": f"bytes={n - 1}-{n - 1}",
        "suffix larger than the file": f"bytes=-{n + 100}",
        "end past the file": f"bytes=5-{n + 1000}",
        "an end of 5000 digits": "bytes=0-" + "9" * 5000,
        "leading zeros": "bytes=000000000000000000000001-0000000000000000000000002",
        "BYTES=0-3 (units ignore case)": "BYTES=0-3",
        "spaces and tabs around the range": "bytes= \t0-4 ",
        "an empty list element": "bytes=,0-4,",
    }.get(case, case)


@pytest.mark.parametrize("case", SATISFIABLE)
def test_one_satisfiable_range_is_206_with_those_bytes_only(client, auth, file_id, png, opened_ranges, case):
    first, last = SATISFIABLE[case](len(png))
    response = get(client, auth, file_id, Range=range_header(case, len(png)))
    assert_partial(response, png, first, last)
    assert response.headers["ETag"] == f'"{hashlib.sha256(png).hexdigest()}"'
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Cache-Control"] == "private, max-age=31536000, immutable"
    assert opened_ranges == [ByteRange(first, last)]  # the store was asked for the range, not the file


UNSATISFIABLE = {
    "bytes=-0": "an empty suffix",
    "start at the end": None,
    "start past the end": None,
    "bytes=99999999999999999999999-": "huge start",
    "bytes=99999999999999999999999-99999999999999999999999": "huge start and end",
}


@pytest.mark.parametrize("case", UNSATISFIABLE)
def test_a_range_past_the_end_is_416_json_without_reading_storage(client, auth, file_id, png, opened_ranges, case):
    header = {"start at the end": f"bytes={len(png)}-", "start past the end": f"bytes={len(png) + 1}-{len(png) + 9}"}
    response = get(client, auth, file_id, Range=header.get(case, case))
    assert_not_satisfiable(response, len(png))
    assert opened_ranges == []


IGNORED = [
    "bytes=0-1,3-4",  # several ranges: the RFC lets a server send the whole file
    "bytes=0-1, -2",
    "bytes=5-2",  # invalid: last before first
    "bytes=0 - 4",  # spaces inside a range
    "bytes =0-4",
    "bytes=",
    "bytes=,",
    "bytes=-",
    "bytes=abc",
    "bytes=1-2-3",
    "bytes=+0-4",  # int() would take these three
    "bytes=0-1_0",
    "bytes=0x0-4",
    "bytes=-+5",
    "items=0-4",
    "0-4",
    "",
]


@pytest.mark.parametrize("header", IGNORED)
def test_several_or_malformed_ranges_are_ignored_with_a_whole_200(client, auth, file_id, png, opened_ranges, header):
    assert_whole(get(client, auth, file_id, Range=header), png)
    assert opened_ranges == [None]


def test_every_whole_download_says_it_accepts_ranges(client, auth, file_id, png):
    assert_whole(get(client, auth, file_id), png)


# If-Range: the range only for the representation the client has part of (strong comparison).


@pytest.mark.parametrize("if_range, partial", [
    ("etag", True),
    ('"0000"', False),
    ("W/etag", False),  # weak tags never match strongly
    ("Wed, 21 Oct 2015 07:28:00 GMT", False),  # a date: we send no Last-Modified to compare it with
])
def test_if_range_gives_the_range_only_for_the_current_etag(client, auth, file_id, png, etag, if_range, partial):
    value = if_range.replace("etag", etag)
    response = get(client, auth, file_id, Range="bytes=0-9", **{"If-Range": value})
    if partial:
        assert_partial(response, png, 0, 9)
    else:
        assert_whole(response, png)


def test_if_range_that_does_not_match_also_drops_an_unsatisfiable_range(client, auth, file_id, png):
    response = get(client, auth, file_id, Range=f"bytes={len(png)}-", **{"If-Range": '"0000"'})
    assert_whole(response, png)


# If-None-Match first (RFC 9110 §13.2.2): Flask's send_file would answer these with a 206.


@pytest.mark.parametrize("range_value", ["bytes=0-9", "bytes=-0", "bytes=0-1,3-4"])
def test_a_matching_if_none_match_is_304_even_with_a_range(client, auth, file_id, etag, opened_ranges, range_value):
    response = get(client, auth, file_id, Range=range_value, **{"If-None-Match": etag})
    assert response.status_code == 304
    assert response.data == b""
    assert "Content-Range" not in response.headers
    assert opened_ranges == []


def test_a_stale_if_none_match_still_gets_the_range(client, auth, file_id, png):
    assert_partial(get(client, auth, file_id, Range="bytes=0-9", **{"If-None-Match": '"0000"'}), png, 0, 9)


# HEAD: range handling is defined for GET only (RFC 9110 §14.2), so HEAD ignores Range.


@pytest.mark.parametrize("range_value", ["bytes=0-9", f"bytes={BIG}-"])
def test_head_ignores_range_and_reads_no_storage(client, auth, file_id, png, opened_ranges, range_value):
    response = get(client, auth, file_id, method="HEAD", Range=range_value)
    assert response.status_code == 200
    assert response.data == b""
    assert response.headers["Content-Length"] == str(len(png))
    assert response.headers["Accept-Ranges"] == "bytes"
    assert "Content-Range" not in response.headers
    assert opened_ranges == []


# Variants follow the same rules.


@pytest.mark.parametrize("path", ["/thumbnail", "/preview"])
def test_variants_honour_range_too(client, auth, user, path):
    big = make_image("image/png", 2000, 1500)  # big enough for both variants to be made
    file_id = upload(client, auth, big, organization=user["organization_id"]).json["id"]
    whole = get(client, auth, file_id, path)
    assert_whole(whole, whole.data)
    assert_partial(get(client, auth, file_id, path, Range="bytes=-20"), whole.data, len(whole.data) - 20,
                   len(whole.data) - 1)
    assert_not_satisfiable(get(client, auth, file_id, path, Range=f"bytes={len(whole.data)}-"), len(whole.data))


# The stores' ranged opens.


OBJECT = os.urandom(700 * 1024)  # several of the stores' 256 KiB chunks


@pytest.mark.parametrize("first, last", [(0, 0), (100, 600_000), (300_000, len(OBJECT) - 1), (0, len(OBJECT) - 1)])
def test_a_ranged_open_streams_exactly_that_range(app, first, last):
    storage = app.extensions["storage"]
    storage.put("range-test/object", OBJECT, "application/octet-stream", {})
    stored = storage.open("range-test/object", ByteRange(first, last))
    try:
        assert b"".join(stored) == OBJECT[first:last + 1]
        assert stored.info.size == len(OBJECT)  # the whole object's, not the range's
    finally:
        stored.close()


@pytest.mark.parametrize("storage_config", ["s3"], indirect=True)
def test_s3_asks_for_the_range_and_receives_only_its_bytes(app, client, auth, file_id, png):
    """The GetObject on the wire carries the Range, and S3 answers with that many bytes."""
    sent, received = [], []
    events = app.extensions["storage"].client.meta.events
    events.register("before-send.s3.GetObject", lambda request, **_: sent.append(request.headers.get("Range")))
    events.register("after-call.s3.GetObject",
                    lambda http_response, **_: received.append(
                        (http_response.status_code, http_response.headers["Content-Length"])))
    assert_partial(get(client, auth, file_id, Range="bytes=10-29"), png, 10, 29)
    assert sent == [b"bytes=10-29"]  # botocore sends header values as bytes
    assert received == [(206, "20")]


# The parser alone, for what HTTP cannot carry.


@pytest.mark.parametrize("header", ["bytes=٠-٤", "bytes=0-٤", "bytes=-٣", "bytes=𝟎-4"])
def test_only_ascii_digits_are_positions(header):
    assert ranges.parse(header, 100) is None  # int() takes all of these


def test_a_start_of_5000_digits_is_past_the_end_not_a_crash():
    with pytest.raises(ApiError) as error:
        ranges.parse("bytes=" + "9" * 5000 + "-", 100)
    assert error.value.status == 416


@pytest.mark.parametrize("method", ["HEAD", "POST", "DELETE"])
def test_only_get_honours_a_range(method):
    assert ranges.requested_range(method, "bytes=0-1", None, '"x"', 100) is None
    assert ranges.requested_range("GET", "bytes=0-1", None, '"x"', 100) == ByteRange(0, 1)
