"""The service in the benchmark's own process, through Flask's test client: one user on a fresh database.

For sections that time an upload's work without a server or a network in the way (bench/variants.py,
bench/quota.py).
"""


class InProcessApp:
    """The app on ``database_url`` (SQLite under ``work_dir`` when None) and a local store, with one user."""

    def __init__(self, work_dir, database_url=None, **config):
        import cli
        import migrations
        import models
        from app import create_app

        self.app = create_app({"DATABASE_URL": database_url or f"sqlite:///{work_dir}/db.sqlite",
                               "LOCAL_STORAGE_ROOT": f"{work_dir}/objects", "WORKSPACES_ROOT": f"{work_dir}/ws",
                               **config})
        with self.app.app_context():
            migrations.upgrade()
            with models.db.connection_context():
                self.user = cli.create_user("bench", "bench", lifetime_days=1)
        self.client = self.app.test_client()

    def upload(self, data, content_type):
        """POST ``data`` as an upload of ``content_type``; the 201 response (anything else fails the run)."""
        response = self.client.post(f"/api/v2/chats/files?organization={self.user['organization_id']}", data=data,
                                    headers={"Coder-Session-Token": self.user["token"], "Content-Type": content_type})
        assert response.status_code == 201, response.get_data(as_text=True)
        return response
