"""`python -m finetune_operator`: run the operator (all namespaces, or FTO_NAMESPACES=a,b)."""

from __future__ import annotations

import asyncio
import logging
import os

import kopf

from . import handlers, startup  # noqa: F401  (registers the handlers)
from .settings import OperatorSettings


class _QuietSuccess(logging.Filter):
    """Drop Kopf's "Handler 'x' succeeded." lines: one per watch event of every child is noise (and,
    at 200 jobs, a measurable share of the operator's CPU)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and str(record.msg).endswith(" succeeded."))


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("kopf.objects").addFilter(_QuietSuccess())
    settings = OperatorSettings.from_env()
    namespaces = list(settings.namespaces)
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=os.environ.get("FTO_LIVENESS_ENDPOINT") or None,
        )
    )


if __name__ == "__main__":
    main()
