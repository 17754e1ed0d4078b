"""The sandbox pool: the kernel's limits end a runaway task, the call fails alone, the pool heals.

The tasks misbehave as hostile files make parsers misbehave
(tests/sandbox_hostile_tasks.py); the real hostile files are in the image,
repository and upload tests.
"""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import filetypes
from gitwatch.repository import RepositoryRefused
from imaging import images
from sandbox import Limits, Pool, PoolBusy, SandboxFailed
from sandbox import tasks as sandboxed
from sandbox.wire import WireError, recv_frame, send_frame

MiB = 1024 * 1024
TASKS = "tests.sandbox_hostile_tasks"


@pytest.fixture
def make_pool():
    pools = []

    def make(size=1, memory=64 * MiB, cpu_seconds=5, wall_seconds=30):
        made = Pool("test", size, Limits(memory, cpu_seconds, wall_seconds), tasks=TASKS)
        pools.append(made)
        return made

    yield make
    for each in pools:
        each.close()


def echo(pool, text="hello"):
    answer, blobs = pool.run("echo", {"text": text}, wait=30)
    return answer["pid"], blobs


def test_a_call_gets_its_answer_and_blobs_and_the_process_is_reused(make_pool):
    pool = make_pool()
    first_pid, blobs = echo(pool, "ünïcode")
    second_pid, _ = echo(pool)
    assert blobs == ["ünïcode".encode()]
    assert first_pid == second_pid != os.getpid()


def test_file_descriptors_go_to_the_sandbox(make_pool, tmp_path):
    pool = make_pool()
    with open(tmp_path / "spooled", "wb") as spooled:
        answer, _ = pool.run("echo", {"text": ""}, fds=[spooled.fileno()], wait=30)
    assert answer["fds"] == 1


def test_memory_past_the_ceiling_fails_the_call_and_a_fresh_process_takes_over(make_pool):
    pool = make_pool(memory=64 * MiB)
    answer, _ = pool.run("allocate", {"bytes": 32 * MiB}, wait=30)  # under the ceiling: fine
    assert answer["allocated"] == 32 * MiB
    hostile_pid, _ = echo(pool)

    with pytest.raises(SandboxFailed) as failed:
        pool.run("allocate", {"bytes": 128 * MiB}, wait=30)

    assert failed.value.cause == "memory"
    healthy_pid, blobs = echo(pool)
    assert blobs == [b"hello"] and healthy_pid != hostile_pid


def test_cpu_burning_is_ended_by_the_kernel(make_pool):
    pool = make_pool(cpu_seconds=1, wall_seconds=30)
    started = time.monotonic()
    with pytest.raises(SandboxFailed) as failed:
        pool.run("spin", {}, wait=30)
    assert failed.value.cause == "cpu"
    assert time.monotonic() - started < 10  # the 1 s of CPU, not the 30 s deadline
    assert echo(pool)[1] == [b"hello"]


def test_a_task_blocked_in_the_kernel_is_killed_at_the_deadline(make_pool, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it blocks until a writer comes: none will
    pool = make_pool(wall_seconds=1)
    started = time.monotonic()
    with pytest.raises(SandboxFailed) as failed:
        pool.run("block", {"fifo": str(fifo)}, wait=30)
    assert failed.value.cause == "deadline"
    assert 1 <= time.monotonic() - started < 5
    assert echo(pool)[1] == [b"hello"]


def test_a_failure_is_logged_with_its_cause(make_pool, caplog):
    pool = make_pool(cpu_seconds=1)
    with caplog.at_level("WARNING", logger="sandbox.pool"), pytest.raises(SandboxFailed):
        pool.run("spin", {}, wait=30)
    assert any("task spin failed (cpu:" in record.getMessage() for record in caplog.records), caplog.text


def test_a_crash_fails_only_its_own_call(make_pool):
    pool = make_pool()
    with pytest.raises(SandboxFailed) as failed:
        pool.run("crash", {}, wait=30)
    assert failed.value.cause == "crashed"
    assert echo(pool)[1] == [b"hello"]


def test_other_calls_and_threads_go_on_while_a_task_burns(make_pool):
    pool = make_pool(size=2, cpu_seconds=2)
    pool.warm()
    burning = threading.Thread(target=lambda: pytest.raises(SandboxFailed, pool.run, "spin", {}, wait=30))
    counted = []
    burning.start()
    try:
        time.sleep(0.2)
        started = time.monotonic()
        echo(pool)
        answered_in = time.monotonic() - started
        # This process's own threads keep running: the burning call holds no GIL while it waits.
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            counted.append(1)
    finally:
        burning.join(30)
    assert answered_in < 1.0
    assert len(counted) > 10_000


def test_a_process_killed_while_idle_costs_the_next_call_nothing(make_pool):
    pool = make_pool()
    pid, _ = echo(pool)
    os.kill(pid, signal.SIGKILL)  # the kernel's OOM killer, an operator's kill
    time.sleep(0.2)
    other, blobs = echo(pool)
    assert blobs == [b"hello"] and other != pid


def test_a_busy_pool_says_so_after_the_wait(make_pool):
    pool = make_pool(size=1)
    with pool.held(wait=30):
        started = time.monotonic()
        with pytest.raises(PoolBusy):
            pool.run("echo", {"text": ""}, wait=0.2)
        assert time.monotonic() - started < 2
    assert echo(pool)[1] == [b"hello"]


def test_a_process_that_kept_memory_retires_after_its_answer(make_pool):
    pool = make_pool(memory=512 * MiB)
    first_pid, _ = echo(pool)
    answer, _ = pool.run("keep", {"bytes": 100 * MiB}, wait=30)  # a library cache that never shrinks
    assert answer["kept"] == 100 * MiB
    assert echo(pool)[0] != first_pid  # the next call found a fresh process


def test_a_process_that_gave_its_memory_back_stays(make_pool):
    pool = make_pool(memory=512 * MiB)
    first_pid, _ = echo(pool)
    pool.run("allocate", {"bytes": 100 * MiB}, wait=30)
    assert echo(pool)[0] == first_pid


def test_sandbox_processes_die_with_their_serving_process(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from sandbox import Limits, Pool
        pool = Pool("orphans", 2, Limits(64 << 20, 5, 30), tasks={TASKS!r})
        pool.warm()
        print(" ".join(str(process.popen.pid) for process in pool.members()), flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    children = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(children) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in children)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("frame", [
    b"\xff\xff\xff\xff",  # a header longer than any frame may be
    b"\x00\x00\x00\x05hello",  # not JSON
    b"\x00\x00\x00\x02[]",  # not an object
    b'\x00\x00\x00\x0f{"blobs": [-1]}',  # a negative blob
    b'\x00\x00\x00\x16{"blobs": [999999999]}',  # blobs larger than any frame may be
    b"\x00\x00\x00\x10{\"blobs\": []",  # cut short
])
def test_what_a_taken_over_sandbox_sends_is_only_ever_data(frame):
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(frame)
        theirs.shutdown(socket.SHUT_WR)
        with pytest.raises(WireError):
            recv_frame(ours, deadline=time.monotonic() + 5)


def test_a_frame_round_trips_with_blobs_and_descriptors(tmp_path):
    ours, theirs = socket.socketpair()
    with ours, theirs, open(tmp_path / "f", "wb") as handle:
        send_frame(ours, {"a": 1}, [b"x" * 100_000, b""], fds=[handle.fileno()])
        header, blobs, fds = recv_frame(theirs, with_fds=True)
        for fd in fds:
            os.close(fd)
    assert header == {"a": 1} and blobs == [b"x" * 100_000, b""] and len(fds) == 1


@pytest.fixture
def lying_sandboxes(monkeypatch):
    """The service's own calls, answered by sandboxes that a hostile file took over."""
    made = []

    def pool(name, size, limits):
        made.append(Pool(name, size, limits, tasks=TASKS))
        return made[-1]

    monkeypatch.setattr(sandboxed, "pool", pool)
    yield
    for each in made:
        each.close()


def test_what_a_taken_over_decoder_claims_is_not_believed(lying_sandboxes, tmp_path):
    with open(tmp_path / "upload", "wb") as spooled:
        spooled.write(b"\x89PNG whatever")
        spooled.flush()
        with pytest.raises(images.InvalidImage, match="too expensive to decode"):
            sandboxed.verify_and_make(spooled.fileno(), 10**6, 10**8, "0" * 64, max_file_size=10**6, wait=30)


@pytest.mark.parametrize("claimed", ["image/heic", "image/avif"])
def test_a_taken_over_decoder_cannot_make_a_camera_original_its_own_preview(lying_sandboxes, tmp_path, claimed):
    """Only a web image is served as its own preview: a camera original claimed as one is not believed."""
    with open(tmp_path / "upload", "w+b") as spooled:
        spooled.write(b"original:" + claimed.encode())
        spooled.flush()
        with pytest.raises(images.InvalidImage, match="too expensive to decode"):
            sandboxed.verify_and_make(spooled.fileno(), 10**6, 10**8, "0" * 64, max_file_size=10**6, wait=30)


def test_a_web_original_may_be_its_own_preview(lying_sandboxes, tmp_path):
    """The same answer for a web type is believed: what the test above refuses is the camera type alone."""
    with open(tmp_path / "upload", "w+b") as spooled:
        spooled.write(b"original:image/png")
        spooled.flush()
        info, _, made = sandboxed.verify_and_make(spooled.fileno(), 10**6, 10**8, "0" * 64, max_file_size=10**6,
                                                  wait=30)
    assert info.content_type == "image/png"
    assert [(variant.name, variant.content_type) for variant in made] == [("preview", "image/png")]


@pytest.mark.parametrize("family", [filetypes.TEXT, filetypes.PDF])
def test_what_a_taken_over_document_checker_says_is_not_repeated(lying_sandboxes, tmp_path, family):
    with open(tmp_path / "upload", "w+b") as spooled:
        spooled.write(b"anything")
        spooled.flush()
        with pytest.raises(filetypes.InvalidFile) as refused:
            sandboxed.verify_document(spooled.fileno(), family, filetypes.JsonCheck.NONE, max_memory=10**8,
                                      max_file_size=10**6, wait=30)
    assert refused.value.message == filetypes.INVALID_MESSAGES[family]
    assert refused.value.detail == "The file is too expensive to check: the checker failed on it."


def test_a_taken_over_scan_cannot_answer_for_another_repository(lying_sandboxes, tmp_path):
    with pytest.raises(RepositoryRefused):
        sandboxed.read_repository(str(tmp_path), ".", str(tmp_path))

