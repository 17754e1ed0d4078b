"""The admin CLI, through click's runner, exactly as an operator calls it."""

import json
import os
import uuid

import pytest

import models
from tests.test_files import assert_error

pytestmark = pytest.mark.parametrize("storage_config", ["local"], indirect=True)


def invoke(runner, *args):
    result = runner.invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_init_db_is_idempotent(runner):
    assert "up to date" in invoke(runner, "init-db")
    assert "up to date" in invoke(runner, "init-db")


def test_create_user_prints_json_and_the_token_works(app, runner):
    output = json.loads(invoke(runner, "create-user", "carol", "--org", "initech", "--json"))
    assert set(output) == {"user_id", "organization_id", "token", "workspaces_dir"}
    uuid.UUID(output["user_id"]), uuid.UUID(output["organization_id"])
    # The user's own directory below WORKSPACES_ROOT, created for the provisioning tool to fill.
    assert output["workspaces_dir"] == os.path.join(os.path.realpath(app.config["WORKSPACES_ROOT"]), output["user_id"])
    assert os.path.isdir(output["workspaces_dir"])
    response = app.test_client().get(
        f"/api/v2/chats/files/{uuid.uuid4()}", headers={"Coder-Session-Token": output["token"]}
    )
    assert response.status_code == 404


def test_create_user_in_existing_org_joins_it(app, runner):
    first = json.loads(invoke(runner, "create-user", "carol", "--org", "initech", "--json"))
    second = json.loads(invoke(runner, "create-user", "dave", "--org", "initech", "--json"))
    assert first["organization_id"] == second["organization_id"]
    with app.app_context(), models.db.connection_context():
        assert models.Membership.select().count() == 2


def test_create_user_twice_fails_clearly(runner):
    invoke(runner, "create-user", "carol", "--org", "initech")
    result = runner.invoke(args=["create-user", "carol", "--org", "initech"])
    assert result.exit_code != 0
    assert "already exists" in result.output


def test_create_user_without_json_is_readable(runner):
    output = invoke(runner, "create-user", "carol", "--org", "initech")
    assert "token: " in output


def test_create_token_issues_a_second_working_token(app, runner):
    invoke(runner, "create-user", "carol", "--org", "initech")
    output = json.loads(invoke(runner, "create-token", "carol", "--json"))
    assert list(output) == ["token"]
    response = app.test_client().get("/api/v2/chats/files/x", headers={"Coder-Session-Token": output["token"]})
    assert_error(response, 400, "Invalid file ID.")


def test_create_token_for_unknown_user_fails(runner):
    result = runner.invoke(args=["create-token", "nobody"])
    assert result.exit_code != 0
    assert "No user named" in result.output
