"""WSGI entry point for gunicorn: ``gunicorn api.wsgi:app``."""

from api import create_app
from leukoscreen import logs
from leukoscreen.config import load_settings

settings = load_settings()
# Run directly by gunicorn, nothing else configures the application's log lines.
logs.configure(settings.log_format)
app = create_app(settings)
