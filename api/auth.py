"""Who is calling: a login session (web pages) or a per-user API token (JSON API).

Every endpoint except /healthz and the login page needs one or the other. Session requests
that change state must carry a CSRF token (form field, or X-CSRFToken header from fetch);
token requests need none, since a browser never attaches a bearer token by itself.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlparse

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask import session as cookie_session
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.orm import Session

from api import context
from api.errors import ApiError
from api.params import MAX_SMALL_ID
from db.accounts import check_password, end_sessions, find_user, user_for_token
from db.audit import record_event
from db.login_throttle import clear_failures, lockout, record_failure
from db.models import Role, User
from db.tenancy import Scope, narrowed, scope_of

bp = Blueprint("auth", __name__)
login_manager = LoginManager()
csrf = CSRFProtect()

METRICS_ENDPOINT = "metrics.metrics"
PUBLIC_ENDPOINTS = {"health.healthz", "health.readyz", "auth.login", "static"}
# The user's session_version at sign-in, kept in the signed session cookie.
SESSION_VERSION = "_sv"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Principal(UserMixin):
    """The signed-in user of this request (a detached copy: no database session needed)."""

    id: int
    name: str
    role: str
    # Which laboratories this request may see (``db.tenancy``), read with the user.
    scope: Scope
    via_token: bool = False
    session_version: int = 0

    @property
    def laboratory_id(self) -> int:
        """The home laboratory: audit events of this principal are filed there."""
        return self.scope.home

    def get_id(self) -> str:
        return str(self.id)

    def has_role(self, *roles: str) -> bool:
        return self.role == Role.ADMIN.value or self.role in roles


def _principal(session: Session, user: User, via_token: bool = False) -> Principal:
    return Principal(
        id=user.id,
        name=user.name,
        role=user.role,
        scope=scope_of(session, user),
        via_token=via_token,
        session_version=user.session_version,
    )


@login_manager.user_loader
def _load_user(user_id: str) -> Principal | None:
    with context.sessions()() as session:
        user = session.get(User, int(user_id))
        # Checked on every request: deactivating a user ends their sessions at once, and so
        # does signing out or a password change (they increment session_version).
        if (
            user is None
            or not user.active
            or cookie_session.get(SESSION_VERSION) != user.session_version
        ):
            return None
        return _principal(session, user)


def is_api_request() -> bool:
    # /metrics is read by Prometheus, not a browser: a JSON 401, never a login redirect.
    return request.path.startswith("/api/") or request.endpoint == METRICS_ENDPOINT


def _bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Authorization header must be 'Bearer <token>'")
    return token.strip()


def _is_metrics_token(token: str) -> bool:
    expected = context.settings().metrics_token
    return bool(expected) and hmac.compare_digest(token.encode(), expected.encode())


def _authenticate() -> Any:
    if request.endpoint is None:
        return None  # unknown URL: let the 404/405 handlers answer
    if "Authorization" in request.headers:
        token = _bearer_token()
        if request.endpoint == METRICS_ENDPOINT and _is_metrics_token(token):
            g.metrics_scraper = True  # no user: the view admits it by this mark alone
            return None
        with context.sessions()() as session:
            user = user_for_token(session, token)
            principal = _principal(session, user, True) if user is not None else None
        if principal is None:
            raise ApiError(401, "invalid or revoked API token")
        # Flask-Login's request-scoped user, without writing a session cookie for API calls.
        current_app.login_manager._update_request_context_with_user(principal)  # type: ignore[attr-defined]
        return None
    public = request.endpoint in PUBLIC_ENDPOINTS
    if not public and not current_user.is_authenticated:
        if is_api_request():
            raise ApiError(401, "sign in or send 'Authorization: Bearer <token>'")
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    if request.method not in SAFE_METHODS:
        csrf.protect()
    return None


def _require(allowed: Callable[[Principal], bool], needs: str) -> Callable[[F], F]:
    def decorate(view: F) -> F:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not allowed(current_user):
                message = f"needs {needs}; you are {current_user.role}"
                if is_api_request():
                    raise ApiError(403, message)
                abort(403, message)
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorate


def require_role(*roles: str) -> Callable[[F], F]:
    """Admins may do everything; others need one of ``roles`` (403 otherwise)."""
    return _require(lambda p: p.has_role(*roles), f"role {' or '.join(roles)}")


def is_global_admin(principal: Principal) -> bool:
    return principal.role == Role.ADMIN.value and principal.scope.is_global


def require_global_admin() -> Callable[[F], F]:
    """Only an admin whose scope is every laboratory: laboratories themselves, and what spans
    every laboratory (worker status, metrics)."""
    return _require(is_global_admin, "a global admin")


def scope() -> Scope:
    """The laboratories this request may see: pass it to every query of ``db/``."""
    return actor().scope


def laboratory_scope(what: str, ident: object) -> Scope:
    """The request's scope, narrowed to ``?laboratory=`` when given: a specimen id names a
    specimen within one laboratory, so whoever sees several laboratories that use the same
    id says whose they mean. A laboratory outside the scope: no ``what`` ``ident`` (404)."""
    raw = request.args.get("laboratory")
    if raw is None:
        return scope()
    try:
        laboratory_id = int(raw)
    except ValueError:
        raise ApiError(400, "query parameter 'laboratory' must be a laboratory id") from None
    if not 0 < laboratory_id <= MAX_SMALL_ID:  # beyond the column: no such laboratory
        laboratory_id = 0
    return narrowed(scope(), laboratory_id, what, ident)


def specimen_scope(specimen_id: str) -> Scope:
    return laboratory_scope("specimen", specimen_id)


def actor() -> Principal:
    return current_user._get_current_object()


def _safe_next(target: str | None) -> str:
    # Only same-site paths: a crafted ?next= must not send a pathologist elsewhere.
    if (
        target
        and target.startswith("/")
        and not target.startswith(("//", "/\\"))
        and not urlparse(target).netloc
    ):
        return target
    return url_for("pages.batches")


def _locked_out_page(retry_after_s: int):
    minutes = max(1, -(-retry_after_s // 60))
    flash(
        "Too many failed sign-ins for this user name or from this computer. "
        f"Try again in about {minutes} minute{'s' if minutes != 1 else ''}."
    )
    response = current_app.make_response((render_template("login.html"), 429))
    response.headers["Retry-After"] = str(retry_after_s)
    return response


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "POST":
        name = request.form.get("username", "")
        client = request.remote_addr or "unknown"
        limits = context.settings().login_max_failures, context.settings().login_window_s
        with context.sessions().begin() as session:
            # Checked before the password: a locked-out name stays locked even when the
            # guess is right, otherwise the lock-out would still confirm a correct guess.
            locked = lockout(session, name, client, *limits)
            # Attempts on a real account are filed under its laboratory, for its admins.
            named = find_user(session, name)
            lab = named.laboratory_id if named is not None else None
            if locked is not None:
                record_event(
                    session,
                    None,
                    "user.login_refused",
                    "",
                    laboratory_id=lab,
                    name=name[:255],
                    client_ip=client,
                )
                user = None
            else:
                user = check_password(session, name, request.form.get("password", ""))
                if user is not None:
                    clear_failures(session, name, client)
                    record_event(session, user, "user.login", f"user:{user.id}")
                    principal = _principal(session, user)
                else:
                    record_event(
                        session, None, "user.login_failed", "", laboratory_id=lab, name=name[:255]
                    )
                    locked = record_failure(session, name, client, *limits, laboratory_id=lab)
        if locked is not None:
            return _locked_out_page(locked.retry_after_s)
        if user is not None:
            login_user(principal)
            cookie_session[SESSION_VERSION] = principal.session_version
            return redirect(_safe_next(request.args.get("next")))
        flash("Unknown user name or wrong password.")
        return render_template("login.html"), 401
    return render_template("login.html")


@bp.post("/logout")
def logout():
    principal = actor()
    if not principal.via_token:
        # A copy of the cookie (another tab, a stolen one) must not outlive the sign-out.
        with context.sessions().begin() as session:
            end_sessions(session, principal.id)
            record_event(session, principal, "user.logout", f"user:{principal.id}")
    logout_user()
    return redirect(url_for("auth.login"))


def register(app: Flask) -> None:
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)  # checked in _authenticate instead
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # a long review session stays valid
    login_manager.init_app(app)
    csrf.init_app(app)
    app.before_request(_authenticate)
    app.register_blueprint(bp)
