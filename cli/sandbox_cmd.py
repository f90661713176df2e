"""``gds-notify sandbox``: the local PagerDuty emulator and SMTP sink."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import click
from pydantic import ValidationError

from sandbox.faults import Fault, FaultPlan, RandomFault
from sandbox.pagerduty_emulator import EmulatorOptions
from sandbox.server import SandboxError, serve
from sandbox.smtp_sink import SinkOptions
from worker.validation import validation_errors


def _fail_rate(value: str) -> RandomFault:
    status, _, probability = value.partition("=")
    try:
        return RandomFault(probability=float(probability), fault=Fault(status=int(status)))
    except ValidationError as exc:  # a number, but not one a fault can have
        problems = "; ".join(f"{e['field']}: {e['message']}" for e in validation_errors(exc))
        raise click.BadParameter(f"{value!r}: {problems}") from None
    except ValueError:  # not two numbers
        raise click.BadParameter(
            f"{value!r}: expected STATUS=PROBABILITY, such as 503=0.3"
        ) from None


def _plan(
    fail_rates: tuple[str, ...],
    slow_rate: float,
    slow_seconds: float,
    drop_rate: float,
    seed: int | None,
) -> FaultPlan:
    rules = [_fail_rate(v) for v in fail_rates]
    if slow_rate:
        rules.append(RandomFault(probability=slow_rate, fault=Fault(delay=slow_seconds)))
    if drop_rate:
        rules.append(RandomFault(probability=drop_rate, fault=Fault(drop=True)))
    return FaultPlan(random=rules, seed=seed)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8025,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port for the web page and the PagerDuty Events API.",
)
@click.option(
    "--rate-limit",
    default=120,
    show_default=True,
    type=click.IntRange(0),
    help="Events allowed per routing key per window (0: no limit).",
)
@click.option(
    "--rate-window",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0.001),
    help="Length of the sliding rate-limit window, in seconds.",
)
@click.option(
    "--retry-after/--no-retry-after",
    default=False,
    show_default=True,
    help="Send a Retry-After header with 429 answers (PagerDuty documents none).",
)
@click.option(
    "--strict-key",
    "strict_keys",
    multiple=True,
    metavar="KEY",
    help="Accept only these routing keys; others get 'Invalid routing key'.",
)
@click.option(
    "--fail-rate",
    "fail_rates",
    multiple=True,
    metavar="STATUS=P",
    help="Answer STATUS to a fraction P of requests (repeatable), e.g. 503=0.3.",
)
@click.option(
    "--slow-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Fraction of requests answered only after --slow-seconds.",
)
@click.option(
    "--slow-seconds",
    default=35.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Delay for slow answers (PagerDuty clients time out at 30 s by default).",
)
@click.option(
    "--drop-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Fraction of requests whose connection is dropped without an answer.",
)
@click.option("--seed", type=int, default=None, help="Seed for the random faults.")
@click.option(
    "--smtp-port",
    default=1025,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Port for the SMTP sink.",
)
@click.option("--smtp-user", default=None, help="Require SMTP AUTH with this user name.")
@click.option(
    "--smtp-password",
    default=None,
    envvar="SANDBOX_SMTP_PASSWORD",
    help="Password for --smtp-user (or SANDBOX_SMTP_PASSWORD).",
)
@click.option(
    "--smtp-tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Certificate (PEM) for STARTTLS; with --smtp-tls-key.",
)
@click.option(
    "--smtp-tls-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Private key (PEM) for STARTTLS.",
)
@click.option("--smtp-require-starttls", is_flag=True, help="Refuse mail before STARTTLS.")
@click.option(
    "--smtp-fail-rate",
    "smtp_fail_rates",
    multiple=True,
    metavar="CODE=P",
    help="Answer SMTP CODE to a fraction P of messages (repeatable), e.g. 421=0.2.",
)
@click.option(
    "--smtp-slow-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Fraction of messages answered only after --slow-seconds.",
)
@click.option(
    "--smtp-drop-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Fraction of messages whose connection is dropped at the end of DATA.",
)
def sandbox(
    host: str,
    port: int,
    rate_limit: int,
    rate_window: float,
    retry_after: bool,
    strict_keys: tuple[str, ...],
    fail_rates: tuple[str, ...],
    slow_rate: float,
    slow_seconds: float,
    drop_rate: float,
    seed: int | None,
    smtp_port: int,
    smtp_user: str | None,
    smtp_password: str | None,
    smtp_tls_cert: str | None,
    smtp_tls_key: str | None,
    smtp_require_starttls: bool,
    smtp_fail_rates: tuple[str, ...],
    smtp_slow_rate: float,
    smtp_drop_rate: float,
) -> None:
    """Run the local PagerDuty Events API v2 emulator, with a web page of what arrived.

    Point the service at it with PAGERDUTY_API_URL=http://HOST:PORT/v2/enqueue and
    SMTP_HOST/SMTP_PORT. Faults can also be changed while it runs: POST /sandbox/faults and
    POST /sandbox/smtp/faults.
    """
    if (smtp_tls_cert is None) != (smtp_tls_key is None):
        raise click.UsageError("--smtp-tls-cert and --smtp-tls-key go together")
    if (smtp_user is None) != (smtp_password is None):
        raise click.UsageError("--smtp-user and --smtp-password go together")
    if smtp_require_starttls and smtp_tls_cert is None:
        raise click.UsageError("--smtp-require-starttls needs --smtp-tls-cert and --smtp-tls-key")
    tls = None
    if smtp_tls_cert and smtp_tls_key:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(smtp_tls_cert, smtp_tls_key)
    sink = SinkOptions(
        username=smtp_user,
        password=smtp_password,
        tls_context=tls,
        require_starttls=smtp_require_starttls,
    )
    options = EmulatorOptions(
        rate_limit=rate_limit,
        rate_window=rate_window,
        retry_after=retry_after,
        strict_keys=frozenset(strict_keys) if strict_keys else None,
    )
    url = f"http://{host}:{port}"

    def banner() -> None:
        click.echo(f"Sandbox page:          {url}/")
        click.echo(f"PagerDuty Events API:  {url}/v2/enqueue  (PAGERDUTY_API_URL)")
        click.echo(
            f"SMTP sink:             {host}:{smtp_port}  (SMTP_HOST, SMTP_PORT)"
            + ("  STARTTLS" if tls else "")
            + ("  AUTH" if smtp_user else "")
        )
        click.echo("Stop with Ctrl-C.")

    faults = _plan(fail_rates, slow_rate, slow_seconds, drop_rate, seed)
    smtp_faults = _plan(smtp_fail_rates, smtp_slow_rate, slow_seconds, smtp_drop_rate, seed)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                serve(
                    host,
                    port,
                    options,
                    faults,
                    smtp_port=smtp_port,
                    sink=sink,
                    smtp_faults=smtp_faults,
                    # Only once both ports are ours: a taken port is the one line printed.
                    ready=banner,
                )
            )
    except SandboxError as exc:
        raise click.ClickException(str(exc)) from None
