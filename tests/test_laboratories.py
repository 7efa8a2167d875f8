"""Laboratories (tenants): migration 0008 with existing data, grants, lab and global admins,
the uploader of record, the CLI and a fresh install. Every route across two laboratories is
in tests/test_authz_matrix.py (CROSS)."""

from __future__ import annotations

import io

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from api import create_app
from db import migrate
from db.accounts import create_laboratory, create_token, create_user, find_user, update_user
from db.errors import Conflict
from db.session import engine_for, session_factory
from db.tenancy import DEFAULT_LAB_ID, granted
from leukoscreen.cli import main as cli_main
from tests.conftest import PASSWORD, create_account, csrf_token
from tests.reviewdata import seed_scored


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_database(request: pytest.FixtureRequest, settings) -> str:  # type: ignore[no-untyped-def]
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return settings.database_url


OLD_ROWS = [
    "INSERT INTO batch (id, name, submitted_by, created_at, state) "
    "VALUES ('b', 'old', 'lab', CURRENT_TIMESTAMP, 'complete')",
    "INSERT INTO image (id, batch_id, sha256, original_name, size_bytes, state, attempts, "
    "created_at, updated_at) VALUES (1, 'b', 's1', '1.jpg', 1, 'scored', 1, CURRENT_TIMESTAMP, "
    "CURRENT_TIMESTAMP)",
    "INSERT INTO user_account (id, name, password_hash, role, active, created_at) "
    "VALUES (1, 'boss', 'x', 'admin', true, CURRENT_TIMESTAMP)",
    "INSERT INTO user_account (id, name, password_hash, role, active, created_at) "
    "VALUES (2, 'dr', 'x', 'reviewer', true, CURRENT_TIMESTAMP)",
    "INSERT INTO api_token (user_id, token_sha256, prefix, label, created_at) "
    "VALUES (2, 't', 'p', '', CURRENT_TIMESTAMP)",
    "INSERT INTO review (image_id, seq, decision, comment, reviewer_id, created_at) "
    "VALUES (1, 1, 'confirmed', '', 2, CURRENT_TIMESTAMP)",
    "INSERT INTO audit_event (created_at, actor_id, actor_name, action, target, details) "
    "VALUES (CURRENT_TIMESTAMP, 1, 'boss', 'user.create', 'user:2', '{}')",
]


SPECIMEN_ROWS = [
    "UPDATE image SET specimen_id = 'S-1' WHERE id = 1",
    "INSERT INTO specimen_signoff (specimen_id, seq, interpretation, comment, signed_content, "
    "signed_by_id, created_at) VALUES ('S-1', 1, 'no_leukemia_detected', '', '{}', 2, "
    "CURRENT_TIMESTAMP)",
    "INSERT INTO webhook (url, events, secret_encrypted, active, created_at) VALUES "
    "('https://lis.example/h', '[]', 'x', true, CURRENT_TIMESTAMP)",
]
SECOND_LAB_ROWS = [
    "INSERT INTO laboratory (name, created_at) VALUES ('north', CURRENT_TIMESTAMP)",
    "INSERT INTO batch (id, laboratory_id, name, submitted_by, created_at, state) VALUES "
    "('n', (SELECT id FROM laboratory WHERE name = 'north'), 'n', 'x', CURRENT_TIMESTAMP, "
    "'complete')",
    "INSERT INTO image (id, batch_id, sha256, original_name, size_bytes, state, attempts, "
    "created_at, updated_at) VALUES (2, 'n', 's1', '1.jpg', 1, 'scored', 1, CURRENT_TIMESTAMP, "
    "CURRENT_TIMESTAMP)",
    "INSERT INTO review (image_id, laboratory_id, sha256, seq, decision, comment, reviewer_id, "
    "created_at) VALUES (2, (SELECT id FROM laboratory WHERE name = 'north'), 's1', 1, "
    "'overturned', '', 2, CURRENT_TIMESTAMP)",
]


def _rows(conn, sql: str) -> list[tuple]:  # type: ignore[no-untyped-def]
    return [tuple(r) for r in conn.execute(text(sql)).all()]


def test_migration_0008_files_existing_data_in_the_default_laboratory_and_back(empty_database):
    migrate.upgrade(empty_database, "0005")
    engine = create_engine(empty_database, poolclass=NullPool)
    with engine.begin() as conn:
        for statement in OLD_ROWS:
            conn.execute(text(statement))
    migrate.upgrade(empty_database, "0009")
    with engine.begin() as conn:
        for statement in SPECIMEN_ROWS:
            conn.execute(text(statement))
    migrate.upgrade(empty_database, "0008")
    with engine.connect() as conn:
        assert _rows(conn, "SELECT laboratory_id, seq FROM specimen_signoff") == [
            (DEFAULT_LAB_ID, 1)
        ]
        assert _rows(conn, "SELECT laboratory_id FROM webhook") == [(DEFAULT_LAB_ID,)]
        assert _rows(conn, "SELECT id, name FROM laboratory") == [(DEFAULT_LAB_ID, "default")]
        assert _rows(conn, "SELECT laboratory_id FROM batch") == [(DEFAULT_LAB_ID,)]
        users = _rows(
            conn, "SELECT name, laboratory_id, global_admin FROM user_account ORDER BY id"
        )
        assert [(n, lab, bool(g)) for n, lab, g in users] == [
            ("boss", DEFAULT_LAB_ID, True),  # admins kept the scope they had: everything
            ("dr", DEFAULT_LAB_ID, False),
        ]
        assert _rows(conn, "SELECT laboratory_id FROM audit_event") == [(DEFAULT_LAB_ID,)]
        assert _rows(conn, "SELECT laboratory_id, seq FROM review") == [(DEFAULT_LAB_ID, 1)]
    # A second laboratory decides on the same bytes: its own history, seq 1 again.
    with engine.begin() as conn:
        for statement in SECOND_LAB_ROWS:
            conn.execute(text(statement))
    # The append-only triggers survived the migration (SQLite rebuilt no audit table).
    with pytest.raises(DBAPIError), engine.begin() as conn:
        conn.execute(text("UPDATE audit_event SET action = 'forged'"))
    with pytest.raises(DBAPIError), engine.begin() as conn:
        conn.execute(text("DELETE FROM review"))
    migrate.downgrade(empty_database, "0005")
    with engine.connect() as conn:
        assert _rows(conn, "SELECT id, submitted_by FROM batch ORDER BY id") == [
            ("b", "lab"),
            ("n", "x"),
        ]
        assert _rows(conn, "SELECT name FROM user_account ORDER BY id") == [("boss",), ("dr",)]
        # One history per content again (0006), in the order the decisions were made.
        assert _rows(conn, "SELECT image_id, seq FROM review ORDER BY id") == [(1, 1), (2, 2)]
        assert _rows(conn, "SELECT action FROM audit_event") == [("user.create",)]
        columns = conn.execute(text("SELECT * FROM audit_event")).keys()
    assert "laboratory_id" not in columns
    with pytest.raises(DBAPIError), engine.begin() as conn:
        conn.execute(text("UPDATE audit_event SET action = 'forged'"))
    migrate.upgrade(empty_database)  # and forward again over the same rows
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("table", ["review", "audit_event", "specimen_signoff"])
def test_truncate_of_an_append_only_table_is_refused(postgres_url, table):
    migrate.upgrade(postgres_url)
    engine = create_engine(postgres_url, poolclass=NullPool)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {table}"))
    # TRUNCATE of a table they reference cascades to them, and is refused the same way.
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text("TRUNCATE image, user_account CASCADE"))
    engine.dispose()


def _lab(database_url: str, name: str) -> int:
    with session_factory(engine_for(database_url)).begin() as s:
        return create_laboratory(s, name, None).id


def _user(database_url: str, name: str, role: str, lab: int, **kw) -> str:  # type: ignore[no-untyped-def]
    with session_factory(engine_for(database_url)).begin() as s:
        user = create_user(s, name, role, PASSWORD, laboratory_id=lab, **kw)
        return create_token(s, user, None, "tests")[1]


def _client(app, token: str):  # type: ignore[no-untyped-def]
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def test_a_reviewer_granted_two_laboratories_reviews_both_and_no_third(db_settings):
    url = db_settings.database_url
    app = create_app(db_settings)
    lab_b, lab_c = _lab(url, "lab-b"), _lab(url, "lab-c")
    in_a, _ = seed_scored(url, [0.9], name="a")
    in_b, _ = seed_scored(url, [0.8], name="b", laboratory_id=lab_b)
    _, (in_c,) = seed_scored(url, [0.7], name="c", laboratory_id=lab_c)
    reviewer = _client(app, _user(url, "rex", "reviewer", DEFAULT_LAB_ID))
    boss = _client(app, _user(url, "boss", "admin", DEFAULT_LAB_ID, global_admin=True))
    rex = next(u for u in boss.get("/api/v1/users").json["users"] if u["name"] == "rex")
    granted = boss.patch(f"/api/v1/users/{rex['id']}", json={"laboratories": [lab_b]})
    assert granted.status_code == 200 and granted.json["laboratories"] == [lab_b]
    queue = reviewer.get("/api/v1/review/queue").json["items"]
    assert sorted(i["batch_id"] for i in queue) == sorted([in_a, in_b])
    assert (
        reviewer.post(f"/api/v1/images/{in_c}/reviews", json={"decision": "confirmed"}).status_code
        == 404
    )
    # The decision on lab B's image is filed in lab B's audit, where B's admin sees it.
    decided = reviewer.post(
        f"/api/v1/images/{queue[0]['image_id']}/reviews", json={"decision": "confirmed"}
    )
    assert decided.status_code == 201
    b_admin = _client(app, _user(url, "bea", "admin", lab_b))
    b_events = b_admin.get("/api/v1/audit").json["events"]
    assert any(e["action"] == "review.decide" for e in b_events) == (queue[0]["batch_id"] == in_b)


def test_a_lab_admin_manages_only_their_laboratory_and_never_a_global_admin(db_settings):
    url = db_settings.database_url
    app = create_app(db_settings)
    lab_b = _lab(url, "lab-b")
    _user(url, "root", "admin", DEFAULT_LAB_ID, global_admin=True)
    lab_admin = _client(app, _user(url, "ada", "admin", DEFAULT_LAB_ID))
    names = [u["name"] for u in lab_admin.get("/api/v1/users").json["users"]]
    assert "root" not in names and "ada" in names
    root_id = _user_id(url, "root")
    # Resetting a global admin's password or minting their token would gain every laboratory.
    assert (
        lab_admin.patch(f"/api/v1/users/{root_id}", json={"password": "x" * 12}).status_code == 404
    )
    assert lab_admin.post(f"/api/v1/users/{root_id}/tokens").status_code == 404
    made_global = lab_admin.post(
        "/api/v1/users",
        json={"name": "eve", "role": "admin", "password": PASSWORD, "global_admin": True},
    )
    assert made_global.status_code == 400
    elsewhere = lab_admin.post(
        "/api/v1/users",
        json={"name": "eve", "role": "uploader", "password": PASSWORD, "laboratory_id": lab_b},
    )
    assert elsewhere.status_code == 404
    assert lab_admin.post("/api/v1/laboratories", json={"name": "mine"}).status_code == 403
    granted = lab_admin.patch(
        f"/api/v1/users/{_user_id(url, 'ada')}", json={"laboratories": [lab_b]}
    )
    assert granted.status_code == 400
    here = lab_admin.post(
        "/api/v1/users", json={"name": "ida", "role": "uploader", "password": PASSWORD}
    )
    assert here.status_code == 201 and here.json["laboratory_id"] == DEFAULT_LAB_ID


def test_a_lab_admin_cannot_take_over_an_account_granted_another_laboratory(db_settings):
    url = db_settings.database_url
    app = create_app(db_settings)
    lab_b = _lab(url, "lab-b")
    in_b, _ = seed_scored(url, [0.8], name="b", laboratory_id=lab_b)
    _user(url, "rex", "reviewer", DEFAULT_LAB_ID)
    boss = _client(app, _user(url, "boss", "admin", DEFAULT_LAB_ID, global_admin=True))
    rex_id = _user_id(url, "rex")
    assert boss.patch(f"/api/v1/users/{rex_id}", json={"laboratories": [lab_b]}).status_code == 200
    # An admin of rex's home laboratory only: a token, a password or a role for rex would
    # reach lab B, which nobody made them an admin of.
    lab_admin = _client(app, _user(url, "ada", "admin", DEFAULT_LAB_ID))
    minted = lab_admin.post(f"/api/v1/users/{rex_id}/tokens")
    assert minted.status_code == 404
    assert (
        lab_admin.patch(f"/api/v1/users/{rex_id}", json={"password": "x" * 12}).status_code == 404
    )
    assert lab_admin.patch(f"/api/v1/users/{rex_id}", json={"role": "admin"}).status_code == 404
    assert "rex" not in [u["name"] for u in lab_admin.get("/api/v1/users").json["users"]]
    # An admin granted lab B as well sees every laboratory rex sees, and manages rex.
    both = _client(app, _user(url, "bo", "admin", DEFAULT_LAB_ID))
    bo_id = _user_id(url, "bo")
    assert boss.patch(f"/api/v1/users/{bo_id}", json={"laboratories": [lab_b]}).status_code == 200
    token = both.post(f"/api/v1/users/{rex_id}/tokens").json["token"]
    assert _client(app, token).get(f"/api/v1/batches/{in_b}").status_code == 200


def _user_id(database_url: str, name: str) -> int:
    with session_factory(engine_for(database_url))() as s:
        user = find_user(s, name)
        assert user is not None
        return user.id


def test_the_last_global_admin_stays_one(db_settings):
    url = db_settings.database_url
    app = create_app(db_settings)
    _user(url, "root", "admin", DEFAULT_LAB_ID, global_admin=True)
    ops = _client(app, _user(url, "ops", "admin", DEFAULT_LAB_ID, global_admin=True))
    _user(url, "ada", "admin", DEFAULT_LAB_ID)  # an admin, but of one laboratory only
    root_id = _user_id(url, "root")
    assert ops.patch(f"/api/v1/users/{root_id}", json={"active": False}).status_code == 200
    with session_factory(engine_for(url)).begin() as s:
        last = find_user(s, "ops")
        assert last is not None
        with pytest.raises(Conflict, match="last active global admin"):
            update_user(s, last, None, role="reviewer")


def test_the_uploader_of_record_is_the_authenticated_principal(app, db_settings, make_jpeg):
    client = _client(app, create_account(db_settings.database_url, "ula", "uploader"))
    resp = client.post(
        "/api/v1/batches",
        data={"images": [(io.BytesIO(make_jpeg(1)), "a.jpg")], "submitted_by": "dr-someone"},
        headers={"X-Submitted-By": "dr-else"},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 202
    batch = client.get(f"/api/v1/batches/{resp.json['batch_id']}").json
    assert batch["submitted_by"] == "ula"


def test_cli_creates_laboratories_and_users_in_them(monkeypatch, settings, capsys):
    migrate.upgrade(settings.database_url)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    assert cli_main(["lab", "add", "north"]) == 0
    assert cli_main(["lab", "add", "north"]) == 1
    assert (
        cli_main(
            ["user", "add", "nia", "--role", "reviewer", "--lab", "north", "--password", PASSWORD]
        )
        == 0
    )
    assert (
        cli_main(
            ["user", "add", "zed", "--role", "reviewer", "--lab", "nowhere", "--password", PASSWORD]
        )
        == 1
    )
    assert cli_main(["user", "add", "dee", "--role", "uploader", "--password", PASSWORD]) == 0
    assert (
        cli_main(
            ["user", "add", "gus", "--role", "admin", "--global-admin", "--password", PASSWORD]
        )
        == 0
    )
    capsys.readouterr()
    assert cli_main(["lab", "list"]) == 0
    assert [line.split("\t")[1] for line in capsys.readouterr().out.split("\n") if line] == [
        "default",
        "north",
    ]
    with session_factory(engine_for(settings.database_url))() as s:
        nia, dee, gus = (find_user(s, n) for n in ("nia", "dee", "gus"))
        assert nia is not None and dee is not None and gus is not None
        assert nia.laboratory_id != DEFAULT_LAB_ID and dee.laboratory_id == DEFAULT_LAB_ID
        assert gus.global_admin and not nia.global_admin


def test_a_fresh_install_has_one_default_laboratory_and_the_first_admin_in_it(settings):
    from leukoscreen.serve import ensure_first_admin

    migrate.upgrade(settings.database_url)
    assert ensure_first_admin(settings) is not None
    with session_factory(engine_for(settings.database_url))() as s:
        admin = find_user(s, "admin")
        assert admin is not None
        assert admin.laboratory_id == DEFAULT_LAB_ID and admin.global_admin


def test_a_global_admin_grants_laboratories_on_the_admin_page(db_settings):
    url = db_settings.database_url
    app = create_app(db_settings)
    lab_b = _lab(url, "lab-b")
    _user(url, "root", "admin", DEFAULT_LAB_ID, global_admin=True)
    _user(url, "rex", "reviewer", DEFAULT_LAB_ID)
    page = app.test_client()
    token = csrf_token(page.get("/login").get_data(as_text=True))
    page.post("/login", data={"username": "root", "password": PASSWORD, "csrf_token": token})
    html = page.get("/admin").get_data(as_text=True)
    assert 'name="laboratories"' in html and "lab-b" in html
    rex = _user_id(url, "rex")
    form = {"csrf_token": csrf_token(html), "grants": "1", "laboratories": [str(lab_b)]}
    assert page.post(f"/admin/users/{rex}", data=form).status_code == 302
    with session_factory(engine_for(url))() as s:
        assert granted(s, rex) == [lab_b]
    form = {"csrf_token": csrf_token(html), "grants": "1"}  # nothing selected: no grant left
    page.post(f"/admin/users/{rex}", data=form)
    with session_factory(engine_for(url))() as s:
        assert granted(s, rex) == []


def test_the_same_bytes_in_two_laboratories_have_separate_review_histories(db_settings):
    url = db_settings.database_url
    app = create_app(db_settings)
    lab_b = _lab(url, "lab-b")
    # seed_scored gives both images the same content hash: the same file sent by two labs.
    _, (in_a,) = seed_scored(url, [0.9], name="a")
    _, (in_b,) = seed_scored(url, [0.9], name="b", laboratory_id=lab_b)
    reviewer_a = _client(app, _user(url, "ana", "reviewer", DEFAULT_LAB_ID))
    reviewer_b = _client(app, _user(url, "ben", "reviewer", lab_b))
    assert (
        reviewer_a.post(
            f"/api/v1/images/{in_a}/reviews", json={"decision": "confirmed"}
        ).status_code
        == 201
    )
    queue_b = reviewer_b.get("/api/v1/review/queue").json["items"]
    assert [i["image_id"] for i in queue_b] == [in_b]  # not hidden behind A's earlier copy
    item_b = reviewer_b.get(f"/api/v1/review/items/{in_b}").json
    assert item_b["state"] == "unreviewed" and item_b["copies"] == [] and item_b["history"] == []
    decided = reviewer_b.post(f"/api/v1/images/{in_b}/reviews", json={"decision": "overturned"})
    assert decided.status_code == 201 and decided.json["seq"] == 1
    history_a = reviewer_a.get(f"/api/v1/images/{in_a}/reviews").json["reviews"]
    assert [r["decision"] for r in history_a] == ["confirmed"]
    export_a = reviewer_a.get(f"/api/v1/batches/{_batch_of(url, in_a)}/results").json["results"]
    assert [r["review_decision"] for r in export_a] == ["confirmed"]


def _batch_of(database_url: str, image_id: int) -> str:
    from db.models import Image

    with session_factory(engine_for(database_url))() as s:
        image = s.get(Image, image_id)
        assert image is not None
        return image.batch_id


def test_a_specimen_id_names_one_specimen_per_laboratory(db_settings):
    from sqlalchemy import update

    from db.models import Image

    url = db_settings.database_url
    app = create_app(db_settings)
    lab_b = _lab(url, "lab-b")
    _, in_a = seed_scored(url, [0.1], name="a")
    _, in_b = seed_scored(url, [0.1], name="b", laboratory_id=lab_b)
    with session_factory(engine_for(url)).begin() as s:
        s.execute(update(Image).where(Image.id.in_(in_a + in_b)).values(specimen_id="S-1"))
    reviewer_a = _client(app, _user(url, "ana", "reviewer", DEFAULT_LAB_ID))
    reviewer_b = _client(app, _user(url, "ben", "reviewer", lab_b))
    signed = {"interpretation": "no_leukemia_detected"}
    assert reviewer_a.post("/api/v1/specimens/S-1/signoffs", json=signed).status_code == 201
    seen_by_b = reviewer_b.get("/api/v1/specimens/S-1").json
    assert [i["image_id"] for i in seen_by_b["images"]] == in_b
    assert seen_by_b["status"] == "ready_to_sign"  # A's signature is not B's
    assert reviewer_b.post("/api/v1/specimens/S-1/signoffs", json=signed).status_code == 201
    listed = reviewer_b.get("/api/v1/specimens").json["specimens"]
    assert [(s["specimen_id"], s["images"]) for s in listed] == [("S-1", 1)]


def test_webhooks_hear_only_their_own_laboratorys_events(db_settings):
    from db.lifecycle import subscribers
    from db.models import WebhookEvent
    from db.webhooks import create_webhook

    url = db_settings.database_url
    lab_b = _lab(url, "lab-b")
    with session_factory(engine_for(url)).begin() as s:
        key = db_settings.secret_key
        hook_a = create_webhook(s, "https://a.example/h", ["batch.complete"], key, None)
        hook_b = create_webhook(s, "https://b.example/h", ["batch.complete"], key, None, lab_b)
        s.flush()
        event = WebhookEvent.BATCH_COMPLETE
        assert subscribers(s, event, lab_b) == [hook_b.webhook.id]
        assert subscribers(s, event, DEFAULT_LAB_ID) == [hook_a.webhook.id]
    app = create_app(db_settings)
    admin_b = _client(app, _user(url, "bea", "admin", lab_b))
    assert [h["url"] for h in admin_b.get("/api/v1/webhooks").json["webhooks"]] == [
        "https://b.example/h"
    ]


def test_whoever_sees_two_laboratories_names_which_ones_specimen_a_shared_id_is(db_settings):
    # Accession numbers are each laboratory's own: two laboratories may both have "S-1". A
    # global admin, or a reviewer granted both, must still reach, sign and export each one.
    from sqlalchemy import update

    from db.models import Image

    url = db_settings.database_url
    app = create_app(db_settings)
    lab_b, lab_c = _lab(url, "lab-b"), _lab(url, "lab-c")
    _, in_a = seed_scored(url, [0.1], name="a")
    _, in_b = seed_scored(url, [0.2, 0.3], name="b", laboratory_id=lab_b)
    with session_factory(engine_for(url)).begin() as s:
        s.execute(update(Image).where(Image.id.in_(in_a + in_b)).values(specimen_id="S-1"))
    boss = _client(app, _user(url, "boss", "admin", DEFAULT_LAB_ID, global_admin=True))
    rex = _user(url, "rex", "reviewer", DEFAULT_LAB_ID)
    rex_id = next(u["id"] for u in boss.get("/api/v1/users").json["users"] if u["name"] == "rex")
    assert boss.patch(f"/api/v1/users/{rex_id}", json={"laboratories": [lab_b]}).status_code == 200
    reviewer = _client(app, rex)

    listed = reviewer.get("/api/v1/specimens").json["specimens"]
    assert sorted((s["specimen_id"], s["laboratory_id"]) for s in listed) == sorted(
        [("S-1", DEFAULT_LAB_ID), ("S-1", lab_b)]
    )
    ambiguous = reviewer.get("/api/v1/specimens/S-1")
    assert ambiguous.status_code == 409 and "laboratory" in ambiguous.json["error"]
    of_b = reviewer.get(f"/api/v1/specimens/S-1?laboratory={lab_b}")
    assert of_b.status_code == 200, of_b.json
    assert sorted(i["image_id"] for i in of_b.json["images"]) == in_b
    assert of_b.json["laboratory_id"] == lab_b
    signed = reviewer.post(
        f"/api/v1/specimens/S-1/signoffs?laboratory={lab_b}",
        json={"interpretation": "no_leukemia_detected"},
    )
    assert signed.status_code == 201, signed.json
    assert sorted(i["image_id"] for i in signed.json["specimen"]["images"]) == in_b
    report = boss.get(f"/api/v1/specimens/S-1/fhir?laboratory={lab_b}")
    assert report.status_code == 200, report.get_data(as_text=True)
    assert boss.get(f"/api/v1/specimens/S-1?laboratory={DEFAULT_LAB_ID}").json["status"] == (
        "ready_to_sign"  # B's signature is not A's
    )
    page = boss.get(f"/specimens/S-1?laboratory={lab_b}")
    assert page.status_code == 200
    assert f"/api/v1/specimens/S-1/fhir?laboratory={lab_b}" in page.get_data(as_text=True)
    assert f"laboratory={lab_b}" in boss.get("/specimens").get_data(as_text=True)
    # A laboratory the caller does not see is one with no such specimen.
    assert reviewer.get(f"/api/v1/specimens/S-1?laboratory={lab_c}").status_code == 404
    assert reviewer.get(f"/api/v1/specimens/S-1/fhir?laboratory={lab_c}").status_code == 404
    assert reviewer.get("/api/v1/specimens/S-1?laboratory=x").status_code == 400


def test_reviewing_a_specimen_shows_only_its_laboratorys_images_to_a_granted_reviewer(
    db_settings,
):
    from sqlalchemy import update

    from db.models import Image

    url = db_settings.database_url
    app = create_app(db_settings)
    lab_b, lab_c = _lab(url, "lab-b"), _lab(url, "lab-c")
    _, in_a = seed_scored(url, [0.9], name="a")
    _, in_b = seed_scored(url, [0.8], name="b", laboratory_id=lab_b)
    with session_factory(engine_for(url)).begin() as s:
        s.execute(update(Image).where(Image.id.in_(in_a + in_b)).values(specimen_id="S-1"))
    boss = _client(app, _user(url, "boss", "admin", DEFAULT_LAB_ID, global_admin=True))
    rex = _user(url, "rex", "reviewer", DEFAULT_LAB_ID)
    rex_id = next(u["id"] for u in boss.get("/api/v1/users").json["users"] if u["name"] == "rex")
    assert boss.patch(f"/api/v1/users/{rex_id}", json={"laboratories": [lab_b]}).status_code == 200
    reviewer = _client(app, rex)

    queue = reviewer.get(f"/api/v1/review/queue?specimen=S-1&laboratory={DEFAULT_LAB_ID}")
    assert [i["image_id"] for i in queue.json["items"]] == in_a
    page = boss.get(f"/specimens/S-1?laboratory={lab_b}").get_data(as_text=True)
    assert f"laboratory={lab_b}" in page.split("image(s) waiting")[0]  # the review link
    assert reviewer.get(f"/api/v1/review/queue?laboratory={lab_c}").status_code == 404
    assert reviewer.get("/api/v1/review/queue?laboratory=b").status_code == 400
    # The page's filter form keeps the laboratory when the reviewer applies other filters.
    review_page = reviewer.get(f"/review?specimen=S-1&laboratory={DEFAULT_LAB_ID}")
    form = review_page.get_data(as_text=True).split('id="filters"')[1].split("</form>")[0]
    assert f'name="laboratory" value="{DEFAULT_LAB_ID}"' in form
