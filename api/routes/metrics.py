"""``GET /metrics``: the pool's metrics for Prometheus (api/metrics.py). No token: like
``/readyz``, it holds no secret and no job's content, and Prometheus scrapes it from
inside the deployment."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from api.metrics import CONTENT_TYPE, exposition

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
def metrics() -> Response:
    """Every gds_notify_* metric, pool-wide, in Prometheus' text format."""
    return Response(exposition(), media_type=CONTENT_TYPE)
