"""For test modules whose behaviour does not depend on the backends: import these two fixtures
and the conftest's ``app``, ``client``, ``user``... run on SQLite and the local store only."""

import pytest


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path}/chatfiles.db"


@pytest.fixture
def storage_config(tmp_path):
    return {"LOCAL_STORAGE_ROOT": str(tmp_path / "objects")}
