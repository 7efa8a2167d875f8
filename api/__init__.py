"""The Flask intake API. It stores uploads and signals workers; it never imports TensorFlow."""

from __future__ import annotations

from celery import Celery
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from api.params import limit_request_body, reject_out_of_range_ids
from api.spool import SpoolingRequest
from db.session import engine_for, session_factory
from leukoscreen.config import Settings, load_settings, resolve_secret_key
from leukoscreen.storage import open_store
from worker.dispatch import watch_outbox


def create_app(settings: Settings | None = None, celery: Celery | None = None) -> Flask:
    settings = settings or load_settings()
    # Before anything else: gunicorn workers and `serve` must not come up with a forgeable key.
    settings = resolve_secret_key(settings)
    app = Flask(__name__)
    app.request_class = SpoolingRequest
    app.url_value_preprocessor(reject_out_of_range_ids)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        # A form field's text (a file part goes to disk: api/spool.py).
        MAX_FORM_MEMORY_SIZE=1024 * 1024,
        MAX_FORM_PARTS=100_000,
        JSON_SORT_KEYS=False,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
    )
    if settings.proxy_hops > 0:
        # The login throttle and the audit log need the browser's address, not the proxy's.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app,
            x_for=settings.proxy_hops,
            x_proto=settings.proxy_hops,
            x_host=settings.proxy_hops,
        )
    if celery is None:
        from worker.celery_app import make_celery

        celery = make_celery(settings)
    store = open_store(settings)
    store.sweep_temporary()
    sessions = session_factory(engine_for(settings.database_url))
    # Webhook deliveries written by a request (a sign-off, a re-send) go out after its commit.
    watch_outbox(sessions, celery)
    app.extensions["leukoscreen"] = {
        "settings": settings,
        "sessions": sessions,
        "store": store,
        "celery": celery,
    }

    from api import (
        accounts,
        auth,
        batches,
        errors,
        fhir,
        health,
        metrics,
        openapi,
        pages,
        request_context,
        reviews,
        specimens,
        webhooks,
        workers,
    )

    request_context.register(app)
    app.before_request(limit_request_body)  # before auth's CSRF check reads a form
    errors.register(app)
    auth.register(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(batches.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(reviews.bp)
    app.register_blueprint(accounts.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(specimens.bp)
    app.register_blueprint(specimens.pages)
    app.register_blueprint(fhir.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(workers.bp)
    app.register_blueprint(metrics.bp)
    return app
