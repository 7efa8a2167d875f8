"""gunicorn settings that ``leukoscreen api`` passes with ``--config python:...``.

Only logging: gunicorn's master and workers log through the same handler and format as the
application (``LEUKOSCREEN_LOG_FORMAT``), so a JSON log stays one object per line.
"""

from leukoscreen import logs
from leukoscreen.config import load_settings

logconfig_dict = logs.dict_config(load_settings().log_format)
