"""Admin commands: ``flask --app wsgi <command>``. Each wraps a function tests call directly."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Iterator, Mapping

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from peewee import IntegrityError, PeeweeException

import migrations
from gitwatch import workspaces
from jobs import gc_storage, generate_variants, purge
from models import Membership, Organization, User, db
from storage import StorageError, get_storage
from web import auth


def create_user(name: str, org_name: str, lifetime_days: int) -> dict[str, str]:
    """Create the user (and the organization if new), add the membership, issue a token,
    and create the user's workspaces directory (the only place its chats may watch)."""
    with db.atomic():
        organization, _ = Organization.get_or_create(name=org_name)
        try:
            with db.atomic():
                user = User.create(name=name)
        except IntegrityError:
            raise click.ClickException(f"User {name!r} already exists; use create-token for a new token.") from None
        Membership.create(user=user, organization=organization)
        token = auth.issue_token(user, lifetime_days)
        workspaces_dir = workspaces.create_user_dir(current_app.config["WORKSPACES_ROOT"], user.id)
    return {"user_id": str(user.id), "organization_id": str(organization.id), "token": token,
            "workspaces_dir": workspaces_dir}


def create_token(name: str, lifetime_days: int) -> dict[str, str]:
    user = User.get_or_none(User.name == name)
    if user is None:
        raise click.ClickException(f"No user named {name!r}.")
    return {"token": auth.issue_token(user, lifetime_days)}


def _print(result: Mapping[str, object], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result))
    else:
        for key, value in result.items():
            click.echo(f"{key}: {value}")


def describe_schema_change(change: migrations.SchemaChange) -> str:
    if change.from_version is None:
        return f"Created the database schema at version {change.to_version}."
    if change.applied:
        return f"Upgraded the database schema from version {change.from_version} to {change.to_version}."
    return f"Database schema is up to date (version {change.to_version})."


@click.command("init-db")
@with_appcontext
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def init_db_command(as_json: bool) -> None:
    """Create the schema, or migrate an existing database to the latest version (safe to run again)."""
    try:
        change = migrations.upgrade()
    except migrations.SchemaError as error:
        raise click.ClickException(str(error)) from None
    except PeeweeException as error:
        raise click.ClickException(f"Database error, nothing was changed: {error}") from None
    if as_json:
        result = {"from_version": change.from_version, "version": change.to_version, "applied": list(change.applied)}
        click.echo(json.dumps(result))
    else:
        click.echo(describe_schema_change(change))


@click.command("create-user")
@with_appcontext
@click.argument("name")
@click.option("--org", "org_name", required=True, help="Organization name; created if new.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def create_user_command(name: str, org_name: str, as_json: bool) -> None:
    """Create a user in an organization and print a session token."""
    with db.connection_context():
        result = create_user(name, org_name, current_app.config["TOKEN_LIFETIME_DAYS"])
    _print(result, as_json)


@click.command("create-token")
@with_appcontext
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def create_token_command(name: str, as_json: bool) -> None:
    """Issue another session token for an existing user."""
    with db.connection_context():
        result = create_token(name, current_app.config["TOKEN_LIFETIME_DAYS"])
    _print(result, as_json)


@click.command("gc-storage")
@with_appcontext
@click.option(
    "--older-than",
    type=click.IntRange(min=0, max=gc_storage.MAX_GRACE_SECONDS),
    default=gc_storage.DEFAULT_GRACE_SECONDS,
    show_default=True,
    help="Grace period in seconds: younger objects are kept, their upload may still be recording its row.",
)
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def gc_storage_command(older_than: int, dry_run: bool, as_json: bool) -> None:
    """Delete stored objects (originals and variants) that have no database row (uploads cut short, failed deletions)."""
    with _job_failures(progress_shown=False), db.connection_context():
        result = gc_storage.collect_orphans(get_storage(), older_than, dry_run)
    _report(result, as_json)
    if result.failed:
        raise click.ClickException(f"{len(result.failed)} deletions failed; run gc-storage again.")


@click.command("generate-variants")
@with_appcontext
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def generate_variants_command(as_json: bool) -> None:
    """Make the missing thumbnails and previews of stored files (safe to run again, and after a kill)."""
    progress = _progress_line if stdout_is_terminal() else None
    with _job_failures(progress_shown=progress is not None), db.connection_context():
        result = generate_variants.generate_missing(get_storage(), progress)
    _report(result, as_json)
    if result.failed:
        raise click.ClickException(f"{len(result.failed)} files failed; see above.")


@click.command("purge")
@with_appcontext
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--batch-size", type=click.IntRange(min=1, max=10_000), default=purge.BATCH_SIZE, show_default=True,
              help="Chats or files per transaction.")
def purge_command(dry_run: bool, as_json: bool, batch_size: int) -> None:
    """Delete what the retention settings let go: archived chats past ARCHIVED_CHAT_RETENTION_DAYS with the files
    linked only to them, and files linked to no chat past UNLINKED_FILE_RETENTION (safe to run again, and after
    a kill)."""
    config = current_app.config
    progress = _purge_progress_line if stdout_is_terminal() else None
    with _job_failures(progress_shown=progress is not None), db.connection_context():
        result = purge.purge(get_storage(), config["UNLINKED_FILE_RETENTION"], config["ARCHIVED_CHAT_RETENTION_DAYS"],
                             dry_run, batch_size=batch_size, progress=progress)
    _report(result, as_json)


def _purge_progress_line(result: purge.PurgeResult, progress: purge.Progress) -> None:
    deleted = len(result.files_of_chats) + len(result.unlinked_files)
    click.echo(f"\r{progress.done}/{progress.total} chats and files checked, {len(result.chats)} chats and "
               f"{deleted} files {'to delete' if result.dry_run else 'deleted'}", nl=False)


@contextlib.contextmanager
def _job_failures(*, progress_shown: bool) -> Iterator[None]:
    """A job's storage or database failure as one clean line (every job is safe to run again, and goes on
    where it stopped), and its progress line cleared at the end, whatever happened."""
    try:
        yield
    except StorageError as error:
        raise click.ClickException(f"Storage error, stopped (run it again to go on): {error}") from None
    except PeeweeException as error:
        raise click.ClickException(f"Database error, stopped (run it again to go on): {error}") from None
    finally:
        if progress_shown:
            click.echo("\r\033[K", nl=False)  # the progress line gives way to the result


def _report(result: gc_storage.GcResult | generate_variants.BackfillResult | purge.PurgeResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        for line in result.report_lines():
            click.echo(line)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _progress_line(result: generate_variants.BackfillResult, total: int) -> None:
    click.echo(f"\r{result.files}/{total} files checked, {result.generated} given variants", nl=False)


def init_app(app: Flask) -> None:
    for command in (init_db_command, create_user_command, create_token_command, gc_storage_command,
                    generate_variants_command, purge_command):
        app.cli.add_command(command)
