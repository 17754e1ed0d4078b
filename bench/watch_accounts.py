"""Many watch accounts at once for ``scripts/bench watch-scale``: users, tokens, one chat each on a small repository.

``python -m bench.watch_accounts OUT.json PREFIX COUNT TEMPLATE_REPO``, run in
the service's environment (its DATABASE_URL and WORKSPACES_ROOT, SQLite or
PostgreSQL alike). It calls the admin command's own function
(``cli.create_user``) for every user in one process and one transaction: a
thousand ``flask create-user`` runs would spend minutes importing the app.
Each user's workspace is a copy of TEMPLATE_REPO (copying beats a thousand
``git init`` + ``git commit``). Writes a JSON list of accounts to OUT.json
(not stdout: the app may log there).
"""

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

WORKSPACE = "proj"  # every account's chat watches <its workspaces_dir>/proj
TRACKED_FILE = "README.md"  # the file the change-latency phase rewrites
TRACKED_TEXT = "hello\n"


def make_template(path):
    """A one-commit repository (README.md), without git's sample hooks (nothing to copy a thousand times)."""
    path = Path(path)
    path.mkdir(parents=True)
    (path / TRACKED_FILE).write_text(TRACKED_TEXT)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q", "--template="], ["add", TRACKED_FILE], ["commit", "-q", "-m", "initial"]):
        subprocess.run([*git, *args], cwd=path, check=True, capture_output=True)
    return path


def create_accounts(prefix, count, template):
    from app import create_app
    from cli import create_user
    from models import Chat, db

    app = create_app()
    accounts = []
    with app.app_context(), db.connection_context(), db.atomic():
        for index in range(count):
            account = create_user(f"{prefix}-{index:05d}", f"{prefix}-org", app.config["TOKEN_LIFETIME_DAYS"])
            workspace_dir = Path(account["workspaces_dir"]) / WORKSPACE
            shutil.copytree(template, workspace_dir, symlinks=True)
            chat = Chat.create(owner=uuid.UUID(account["user_id"]), title=f"{prefix} {index}", workspace=WORKSPACE)
            accounts.append({**account, "chat_id": str(chat.id), "workspace_dir": str(workspace_dir)})
    return accounts


def make_accounts(server, prefix, count, template, out_path):
    """Run this module in ``server``'s environment (a harness.live.GunicornServer); the accounts it made."""
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "bench.watch_accounts", str(out_path), prefix, str(count), str(template)],
                   cwd=root, env=server.env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(Path(out_path).read_text())


if __name__ == "__main__":
    out, prefix, count, template = sys.argv[1:5]
    Path(out).write_text(json.dumps(create_accounts(prefix, int(count), template)))
