"""Structured logging set-up shared by the supervisor and the lab tools.

Every line is ``key=value`` text on stderr, flushed at once, so a container
runtime keeps the last lines written before a SIGKILL. Events are short, stable
names (``cert_promoted``); details travel as fields. Private key material is
never passed to a logger: callers log fingerprints and public-key hashes only.
"""

import logging
import sys

import structlog


def configure(level: int = logging.INFO) -> None:
    """Send structlog events to stderr as timestamped ``key=value`` lines."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(
                key_order=["timestamp", "level", "logger", "event"],
                drop_missing=True,
            ),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
