"""models.PreparedSelect: the download's lookup with its SQL built once gives what peewee's own query gives."""

import uuid

import pytest

import models
from attachments import rows as queries

pytestmark = pytest.mark.parametrize("storage_config", ["local"], indirect=True)


def make_file(user):
    return models.ChatFile.create(owner=user["user_id"], organization=user["organization_id"], name="a.png",
                                  content_type="image/png", size=1, sha256="0" * 64, width=1, height=1)


def test_the_prepared_lookup_returns_the_same_row_as_peewee(app, user):
    with app.app_context(), models.db.connection_context():
        created = make_file(user)
        expected = models.ChatFile.get_by_id(created.id)
        row = queries.OWN_FILE.first(created.id, uuid.UUID(user["user_id"]))
        assert {name: (value, type(value)) for name, value in row.__data__.items()} == {
            name: (value, type(value)) for name, value in expected.__data__.items()}


def test_the_prepared_lookup_keeps_the_owner_condition(app, user, other_user):
    with app.app_context(), models.db.connection_context():
        created = make_file(user)
        assert queries.OWN_FILE.first(created.id, uuid.UUID(other_user["user_id"])) is None
        assert queries.OWN_FILE.first(uuid.uuid4(), uuid.UUID(user["user_id"])) is None


def test_a_query_that_does_not_use_its_fields_in_order_is_refused(app):
    swapped = models.PreparedSelect(lambda a, b: models.ChatFile.select().where(
        (models.ChatFile.owner == b) & (models.ChatFile.id == a)), (models.ChatFile.id, models.ChatFile.owner),
        (uuid.UUID(int=1), uuid.UUID(int=2)))
    with app.app_context(), models.db.connection_context(), pytest.raises(ValueError):
        swapped.first(uuid.uuid4(), uuid.uuid4())


def test_the_prepared_insert_stores_what_peewee_create_stores(app, user):
    with app.app_context(), models.db.connection_context():
        expected = make_file(user)
        file_id = uuid.uuid4()
        queries.INSERT_FILE.execute(file_id, expected.owner_id, expected.organization_id, expected.name,
                                    expected.content_type, expected.size, expected.sha256, expected.width,
                                    expected.height, expected.created_at, expected.animated).close()
        stored = models.ChatFile.get_by_id(file_id)
        reference = models.ChatFile.get_by_id(expected.id)
        assert {**stored.__data__, "id": None} == {**reference.__data__, "id": None}


def test_the_prepared_variant_upsert_inserts_then_replaces(app, user):
    with app.app_context(), models.db.connection_context():
        file_id = make_file(user).id
        queries.UPSERT_VARIANT.execute(file_id, "thumbnail", False, "image/webp", 10, 20, 30, "a" * 64).close()
        queries.UPSERT_VARIANT.execute(file_id, "thumbnail", True, "image/png", 11, 21, 31, "b" * 64).close()
        rows = [(v.variant, v.original, v.content_type, v.width, v.height, v.size, v.sha256)
                for v in models.ChatFileVariant.select().where(models.ChatFileVariant.file == file_id)]
        assert rows == [("thumbnail", True, "image/png", 11, 21, 31, "b" * 64)]


def test_the_prepared_variant_lookup_finds_that_files_variant_only(app, user):
    with app.app_context(), models.db.connection_context():
        file_id, other_id = make_file(user).id, make_file(user).id
        queries.UPSERT_VARIANT.execute(file_id, "thumbnail", False, "image/webp", 10, 20, 30, "a" * 64).close()
        queries.UPSERT_VARIANT.execute(file_id, "preview", True, "image/png", 11, 21, 31, "b" * 64).close()
        queries.UPSERT_VARIANT.execute(other_id, "thumbnail", False, "image/jpeg", 12, 22, 32, "c" * 64).close()
        thumbnail = queries.VARIANT_TO_SEND.first(file_id, "thumbnail")
        preview = queries.VARIANT_TO_SEND.first(file_id, "preview")
        assert (thumbnail.original, thumbnail.content_type, thumbnail.size, thumbnail.sha256) == (
            False, "image/webp", 30, "a" * 64)
        assert (preview.original, preview.content_type, preview.size, preview.sha256) == (
            True, "image/png", 31, "b" * 64)
        assert queries.VARIANT_TO_SEND.first(uuid.uuid4(), "thumbnail") is None


def test_a_narrow_prepared_select_leaves_unselected_columns_empty(app, user):
    with app.app_context(), models.db.connection_context():
        created = make_file(user)
        row = queries.FILE_TO_SEND.first(created.id, uuid.UUID(user["user_id"]))
        assert (row.id, row.organization_id, row.sha256, row.size) == (
            created.id, uuid.UUID(user["organization_id"]), created.sha256, created.size)
        assert row.created_at is None  # not selected, and not defaulted to "now" either
        assert queries.FILE_TO_SEND.first(created.id, uuid.uuid4()) is None


def test_the_prepared_membership_check(app, user, other_user):
    with app.app_context(), models.db.connection_context():
        assert queries.MEMBER.exists(uuid.UUID(user["user_id"]), uuid.UUID(user["organization_id"]))
        assert not queries.MEMBER.exists(uuid.UUID(other_user["user_id"]), uuid.UUID(user["organization_id"]))


def test_an_insert_whose_parameters_are_not_its_fields_in_order_is_refused(app):
    columns = (models.ChatFileVariant.variant, models.ChatFileVariant.sha256)
    swapped = models.PreparedQuery(lambda a, b: models.ChatFileVariant.insert(
        {columns[1]: a, columns[0]: b}), columns, ("thumbnail", "0" * 64))
    with app.app_context(), models.db.connection_context(), pytest.raises(ValueError):
        swapped.execute("preview", "1" * 64)
