"""``gds-notify metrics``: the pool's Prometheus metrics on a port of their own, for
deployments that run no HTTP API (which serves the same at ``/metrics``)."""

from __future__ import annotations

import signal
import threading

import click
from prometheus_client import start_http_server

from api.metrics import REGISTRY
from cli.common import Failed, one_line_errors


@click.command()
@click.option("--port", default=9808, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@one_line_errors
def metrics(port: int, host: str) -> None:
    """Serve /metrics (every gds_notify_* metric, read from Redis at each scrape) until
    Ctrl-C or SIGTERM."""
    try:
        server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        raise Failed(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    click.echo(f"metrics on http://{host}:{port}/metrics")
    stop.wait()
    server.shutdown()
    thread.join(5)
