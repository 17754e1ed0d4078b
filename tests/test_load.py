"""A short run of scripts/loadtest.py: gunicorn workers SIGKILLed under load, nothing acknowledged lost.

Uses the session's PostgreSQL and S3 servers (the load test only reads and
writes them) and starts its own gunicorn with several workers.
"""

from scripts.loadtest import KILL_GRACE, LoadOptions, LoadRun, Outcome, report, run_load


def test_nothing_acknowledged_is_lost_while_workers_are_killed(postgres_url, s3_bucket):
    options = LoadOptions(duration=6, max_requests=5_000, clients=6, workers=3, threads=8, kill_every=2, seed=7)

    result = run_load(options, database_url=postgres_url, s3_bucket=s3_bucket)

    print(report(result))  # shown with -s or on failure: the figures of this run
    assert result.kills, "no worker was killed: the run proves nothing"
    assert result.succeeded("upload") > 0 and result.succeeded("download") > 0
    assert result.lost == []
    assert [outcome.error for outcome in result.real_errors] == []


def test_only_connection_failures_around_a_kill_are_blamed_on_it():
    run = LoadRun(stack=None, options=LoadOptions(), payloads=[])
    run.kills = [10.0]
    cut_off = Outcome("upload", 9.0, 10.5, error="reset", interrupted=True)
    sent_just_after = Outcome("download", 10.0 + KILL_GRACE / 2, 10.3, error="reset", interrupted=True)
    long_after = Outcome("upload", 12.0, 12.1, error="reset", interrupted=True)
    server_error = Outcome("upload", 9.0, 10.5, status=500, error="upload answered 500")
    fine = Outcome("download", 9.0, 10.5, status=200)
    run.outcomes = [cut_off, sent_just_after, long_after, server_error, fine]

    killed_in_flight, real = run.classify()

    assert killed_in_flight == [cut_off, sent_just_after]
    assert real == [long_after, server_error]
