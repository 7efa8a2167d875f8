"""Failed sign-ins are throttled per account and address (with an exponential delay) and per
address, in the database; guesses from elsewhere never lock an account itself."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from api import create_app
from db.login_throttle import CLIENT_FACTOR, FIRST_DELAY_S, lockout
from db.models import AuditEvent, LoginFailure, utcnow
from db.session import engine_for, session_factory
from tests.conftest import PASSWORD, create_account, csrf_token

MAX, WINDOW = 5, 900


@pytest.fixture
def throttled(db_settings):
    return replace(db_settings, login_max_failures=MAX, login_window_s=WINDOW)


def _client(app, ip: str):  # type: ignore[no-untyped-def]
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = ip
    html = client.get("/login").get_data(as_text=True)
    client.csrf = csrf_token(html)  # type: ignore[attr-defined]
    return client


def _attempt(client, name: str, password: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/login", data={"username": name, "password": password, "csrf_token": client.csrf}
    )


def _actions(settings) -> list[str]:  # type: ignore[no-untyped-def]
    with session_factory(engine_for(settings.database_url))() as s:
        return list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def _age_failures(settings, seconds: float) -> None:  # type: ignore[no-untyped-def]
    """Move every counted failure ``seconds`` into the past, as if time had passed."""
    with session_factory(engine_for(settings.database_url)).begin() as s:
        for row in s.scalars(select(LoginFailure)):
            row.created_at = row.created_at - timedelta(seconds=seconds)


def test_repeated_failures_from_one_address_lock_that_name_there_even_with_the_right_password(
    throttled,
):
    create_account(throttled.database_url, "rita", "reviewer")
    app = create_app(throttled)
    guesser = _client(app, "10.0.0.1")
    for _ in range(MAX - 1):
        assert _attempt(guesser, "rita", "wrong").status_code == 401
    assert _attempt(guesser, "rita", "wrong").status_code == 429
    right = _attempt(guesser, "rita", PASSWORD)
    assert right.status_code == 429
    assert "Too many failed sign-ins" in right.get_data(as_text=True)
    assert 0 < int(right.headers["Retry-After"]) <= FIRST_DELAY_S + 1
    assert guesser.get("/batches").status_code == 302  # not signed in
    actions = _actions(throttled)
    assert actions.count("user.login_locked") == 1
    assert "user.login_refused" in actions and "user.login" not in actions


def test_guessing_from_other_addresses_never_locks_the_account_itself(throttled):
    create_account(throttled.database_url, "boss", "admin")
    app = create_app(throttled)
    # Someone guesses on purpose to lock the only administrator out, from many addresses.
    for i in range(4 * MAX):
        _attempt(_client(app, f"10.0.{i // 250}.{i % 250}"), "boss", "wrong")
    assert _attempt(_client(app, "198.51.100.9"), "boss", PASSWORD).status_code == 302


def test_each_further_failure_doubles_the_wait_up_to_the_window(throttled):
    create_account(throttled.database_url, "rita", "reviewer")
    app = create_app(throttled)
    waits = []
    for _ in range(4):
        client = _client(app, "10.1.1.1")
        while (resp := _attempt(client, "rita", "wrong")).status_code != 429:
            pass
        waits.append(int(resp.headers["Retry-After"]))
        # The wait is over: the next failure locks again, for twice as long.
        _age_failures(throttled, waits[-1] + 1)
    for k, wait in enumerate(waits):
        assert FIRST_DELAY_S * 2**k <= wait <= FIRST_DELAY_S * 2**k + 1, waits
    with session_factory(engine_for(throttled.database_url)).begin() as s:
        for _ in range(20):
            s.add(LoginFailure(user_name="rita", client_ip="10.1.1.1", created_at=utcnow()))
        s.flush()
        capped = lockout(s, "rita", "10.1.1.1", MAX, WINDOW)
    assert capped is not None and capped.retry_after_s <= WINDOW + 1


def test_lockout_ends_when_the_window_has_passed(throttled):
    create_account(throttled.database_url, "rita", "reviewer")
    app = create_app(throttled)
    client = _client(app, "10.1.1.1")
    for _ in range(MAX):
        _attempt(client, "rita", "wrong")
    assert _attempt(client, "rita", PASSWORD).status_code == 429
    with session_factory(engine_for(throttled.database_url)).begin() as s:
        s.execute(update(LoginFailure).values(created_at=utcnow() - timedelta(seconds=WINDOW + 1)))
    assert _attempt(client, "rita", PASSWORD).status_code == 302


def test_repeated_failures_from_one_client_lock_that_client_for_every_name(throttled):
    create_account(throttled.database_url, "rita", "reviewer")
    app = create_app(throttled)
    attacker = _client(app, "192.0.2.7")
    for i in range(CLIENT_FACTOR * MAX):
        _attempt(attacker, f"guess{i}", "wrong")
    assert _attempt(attacker, "rita", PASSWORD).status_code == 429
    # rita herself, at another address, is not locked out by someone else's guessing.
    assert _attempt(_client(app, "198.51.100.1"), "rita", PASSWORD).status_code == 302


def test_a_successful_login_resets_only_its_own_name_and_address(throttled):
    create_account(throttled.database_url, "rita", "reviewer")
    create_account(throttled.database_url, "ula", "uploader")
    app = create_app(throttled)
    shared = _client(app, "10.2.0.1")
    for _ in range(MAX - 1):
        _attempt(shared, "rita", "wrong")
        _attempt(shared, "ula", "wrong")
    assert _attempt(shared, "ula", PASSWORD).status_code == 302
    # ula's success forgot ula's failures, not rita's: rita's next failure locks her there.
    assert _attempt(_client(app, "10.2.0.1"), "rita", "wrong").status_code == 429
    for _ in range(MAX - 1):
        assert _attempt(_client(app, "10.2.0.1"), "ula", "wrong").status_code == 401


def test_counts_are_shared_by_every_app_process_through_the_database(throttled):
    create_account(throttled.database_url, "rita", "reviewer")
    # Two app instances share nothing but the database, as two gunicorn workers do.
    first, second = create_app(throttled), create_app(throttled)
    for i in range(MAX):
        app = first if i % 2 else second
        _attempt(_client(app, "10.6.0.1"), "rita", "wrong")
    assert _attempt(_client(first, "10.6.0.1"), "rita", PASSWORD).status_code == 429
    assert _attempt(_client(second, "10.6.0.1"), "rita", PASSWORD).status_code == 429


def test_throttling_settings_come_from_the_environment(monkeypatch):
    from leukoscreen.config import load_settings

    monkeypatch.setenv("LEUKOSCREEN_LOGIN_MAX_FAILURES", "3")
    monkeypatch.setenv("LEUKOSCREEN_LOGIN_WINDOW_S", "60")
    loaded = load_settings()
    assert (loaded.login_max_failures, loaded.login_window_s) == (3, 60)


def _forwarded_failures(app, proxy: str, forwarded_for: str) -> int:  # type: ignore[no-untyped-def]
    """Failed sign-ins through one proxy address, each with its own X-Forwarded-For."""
    for i in range(CLIENT_FACTOR * MAX):
        client = _client(app, proxy)
        client.environ_base["HTTP_X_FORWARDED_FOR"] = f"{forwarded_for}{i}"
        _attempt(client, f"nobody{i}", "wrong")
    client = _client(app, proxy)
    client.environ_base["HTTP_X_FORWARDED_FOR"] = f"{forwarded_for}99"
    return _attempt(client, "someone-else", "wrong").status_code


def test_behind_a_trusted_proxy_each_browser_is_throttled_by_its_own_address(throttled):
    app = create_app(replace(throttled, proxy_hops=1))
    # Browsers behind one proxy: none of them is locked out by the others' failures.
    assert _forwarded_failures(app, "10.8.0.1", "198.51.100.") == 401


def test_without_trusted_proxies_forwarded_headers_are_ignored(throttled):
    app = create_app(throttled)
    # A client cannot dodge the throttle by inventing X-Forwarded-For addresses.
    assert _forwarded_failures(app, "10.9.0.1", "203.0.113.") == 429


def test_proxy_hops_come_from_the_environment(monkeypatch):
    from leukoscreen.config import load_settings

    monkeypatch.setenv("LEUKOSCREEN_PROXY_HOPS", "2")
    assert load_settings().proxy_hops == 2
