"""Running one call from many threads at the same moment; waiting, boundedly, for something to happen."""

import threading
import time


def run_at_once(call, count):
    """Start ``count`` threads that wait at a barrier and then ``call()``; return the results."""
    barrier = threading.Barrier(count)
    results = []

    def run():
        barrier.wait()
        results.append(call())

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def wait_for(condition, what, seconds=15, interval=0.02):
    """``condition()``'s first truthy value, polled until ``seconds`` have passed; AssertionError then."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
