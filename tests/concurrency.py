"""Running one call from many threads at the same moment."""

import threading


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
