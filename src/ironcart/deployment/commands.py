"""`ironcart deploy ...`: write deployment configuration generated from the code."""

from __future__ import annotations

from pathlib import Path

import click

from ironcart.deployment.nginx import (
    InvalidNginxSpec,
    NginxOptions,
    parse_instances,
    prepare_prefix,
    render_config,
)

_DEFAULTS = NginxOptions(prefix=Path("/"))


@click.group()
def deploy() -> None:
    """Generate deployment configuration (nginx in front of the service instances)."""


@deploy.command("nginx")
@click.option(
    "--instances",
    "instance_specs",
    multiple=True,
    required=True,
    metavar="POOL=HOST:PORT[,HOST:PORT...]",
    help="A pool of instances: a context (catalog, cart, ...) or `all` (repeatable).",
)
@click.option("--listen", default=_DEFAULTS.listen, show_default=True, help="nginx's host:port.")
@click.option(
    "--prefix",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/nginx"),
    show_default=True,
    help="Directory for nginx's pid, logs and temp files (created).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the config here [default: standard output].",
)
@click.option("--user", default=None, help="User nginx's workers run as [default: nginx's].")
@click.option("--worker-processes", type=click.IntRange(1, 256), default=None)
@click.option("--max-fails", type=click.IntRange(1, 100), default=_DEFAULTS.max_fails)
@click.option(
    "--fail-timeout",
    type=click.FloatRange(min=0.001),
    default=_DEFAULTS.fail_timeout_seconds,
    show_default=True,
    help="Seconds an instance is left out after max-fails failures.",
)
@click.option(
    "--rate-limit",
    type=click.IntRange(min=1),
    default=None,
    help="Requests per second per client IP at the edge [default: none, the app limits].",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    default=None,
    help="Requests sent to each instance at once; the excess gets 503 at the edge "
    "[default: no limit, the apps shed load].",
)
def nginx(
    instance_specs: tuple[str, ...],
    listen: str,
    prefix: Path,
    output: Path | None,
    user: str | None,
    worker_processes: int | None,
    max_fails: int,
    fail_timeout: float,
    rate_limit: int | None,
    max_in_flight: int | None,
) -> None:
    """Write an nginx config routing each context's paths to its pool of instances."""
    options = NginxOptions(
        prefix=prefix.absolute(),
        listen=listen,
        user=user,
        worker_processes=worker_processes,
        max_fails=max_fails,
        fail_timeout_seconds=fail_timeout,
        requests_per_second_per_ip=rate_limit,
        max_in_flight_per_instance=max_in_flight,
    )
    try:
        config = render_config(parse_instances(instance_specs), options)
    except InvalidNginxSpec as error:
        raise click.ClickException(str(error)) from None
    prepare_prefix(options.prefix)
    if output is None:
        click.echo(config, nl=False)
        return
    output.write_text(config, encoding="utf-8")
    click.echo(
        f"wrote {output}; check it with: nginx -t -p {options.prefix} -c {output.absolute()}"
    )
