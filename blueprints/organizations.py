"""An organization as its members see it: its storage usage against its quota."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify

from attachments import rows, usage
from web.auth import login_required
from web.ids import parse_uuid

bp = Blueprint("organizations", __name__)


@bp.get("/api/v2/organizations/<organization_id>/usage")
@login_required
def organization_usage(organization_id: str) -> Response:
    """What the organization stores (originals plus stored variants, the counter uploads move) and its quota."""
    organization = parse_uuid(organization_id, "Invalid organization ID.")
    rows.require_member(g.user.id, organization)
    counted = usage.of(organization)
    return jsonify(bytes=counted.bytes, files=counted.files, quota_bytes=current_app.config["ORG_STORAGE_QUOTA"])
