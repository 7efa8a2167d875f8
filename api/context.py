"""Typed access to the services create_app() attached to the current Flask app."""

from __future__ import annotations

from celery import Celery
from flask import current_app
from sqlalchemy.orm import Session, sessionmaker

from leukoscreen.config import Settings
from leukoscreen.storage import Store


def settings() -> Settings:
    return current_app.extensions["leukoscreen"]["settings"]


def sessions() -> sessionmaker[Session]:
    return current_app.extensions["leukoscreen"]["sessions"]


def store() -> Store:
    return current_app.extensions["leukoscreen"]["store"]


def celery() -> Celery:
    return current_app.extensions["leukoscreen"]["celery"]
