"""models.PreparedSelect: the download's lookup with its SQL built once gives what peewee's own query gives."""

import uuid

import pytest

import models
from blueprints import files

pytestmark = pytest.mark.parametrize("storage_config", ["local"], indirect=True)


def make_file(user):
    return models.ChatFile.create(owner=user["user_id"], organization=user["organization_id"], name="a.png",
                                  content_type="image/png", size=1, sha256="0" * 64, width=1, height=1)


def test_the_prepared_lookup_returns_the_same_row_as_peewee(app, user):
    with app.app_context(), models.db.connection_context():
        created = make_file(user)
        expected = models.ChatFile.get_by_id(created.id)
        row = files._OWN_FILE.first(created.id, uuid.UUID(user["user_id"]))
        assert {name: (value, type(value)) for name, value in row.__data__.items()} == {
            name: (value, type(value)) for name, value in expected.__data__.items()}


def test_the_prepared_lookup_keeps_the_owner_condition(app, user, other_user):
    with app.app_context(), models.db.connection_context():
        created = make_file(user)
        assert files._OWN_FILE.first(created.id, uuid.UUID(other_user["user_id"])) is None
        assert files._OWN_FILE.first(uuid.uuid4(), uuid.UUID(user["user_id"])) is None


def test_a_query_that_does_not_use_its_fields_in_order_is_refused(app):
    swapped = models.PreparedSelect(lambda a, b: models.ChatFile.select().where(
        (models.ChatFile.owner == b) & (models.ChatFile.id == a)), (models.ChatFile.id, models.ChatFile.owner),
        (uuid.UUID(int=1), uuid.UUID(int=2)))
    with app.app_context(), models.db.connection_context(), pytest.raises(ValueError):
        swapped.first(uuid.uuid4(), uuid.uuid4())
