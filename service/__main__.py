"""Command line: ``coupon-gateway serve [--sandbox]`` and ``coupon-gateway sandbox``.

All configuration is read and checked before anything starts: a bad variable stops the process with one line
naming it, and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import signal
import sys
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Final

import structlog
from aiohttp import web

from service import __version__
from service.access.keys import ApiKey, KeyFileError, KeyRing, digest_of
from service.app import KEYS, LIFECYCLE, METRICS, OPS_APP, UPSTREAM_AUTH, create_app
from service.client import cli as operator_cli
from service.config import (
    CapillarySettings,
    ConfigError,
    Settings,
    capillary_from_env,
    gateway_from_env,
    sandbox_address,
    settle,
)
from service.observability import tracing
from service.observability.logging import configure_logging
from service.sandbox import DEMO, SandboxConfig, create_sandbox_app
from service.web.server import DoorLimits, serve

log = structlog.get_logger("service.main")


def _bound(runner: web.AppRunner) -> tuple[str, int]:
    """The host and port the socket is bound to, as they are (``0.0.0.0``: every interface)."""
    host, port = runner.addresses[0][:2]
    return str(host), int(port)


def _url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _listen_url(runner: web.AppRunner) -> str:
    return _url(*_bound(runner))


def _on_terminal() -> bool:
    return sys.stdout.isatty()


def _banner(*lines: str) -> None:
    """Readable lines for a person at a terminal; never mixed into a log stream that a machine reads."""
    if _on_terminal():
        print("\n".join(lines), flush=True)


async def _start(
    app: web.Application, host: str, port: int, shutdown_timeout: float, limits: DoorLimits | None = None
) -> web.AppRunner:
    """Serve ``app`` behind the door's limits (service/web/server.py); refusals at the door are counted in the
    app's metrics when it has them."""
    limits = limits or DoorLimits()
    return await serve(app, host, port, limits=limits, shutdown_timeout=shutdown_timeout, metrics=app.get(METRICS))


async def _until_signalled() -> signal.Signals:
    """Wait for SIGTERM (an orchestrator stopping the pod) or SIGINT (Ctrl-C); return which."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[signal.Signals] = loop.create_future()

    def received(sig: signal.Signals) -> None:
        if not stop.done():
            stop.set_result(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, received, sig)
    return await stop


#: ``serve --sandbox`` without a key file: two demo keys of the sandbox's first store (never for production).
SANDBOX_KEYS: Final = (
    ("sandbox-admin-key", ApiKey("sandbox-admin", "S001", None, frozenset({"redeem", "admin"}), b"")),
    ("sandbox-till-key", ApiKey("sandbox-till", "S001", "T1", frozenset({"redeem"}), b"")),
)


def _sandbox_keyring() -> KeyRing:
    return KeyRing.of(*(dataclasses.replace(key, digest=digest_of(secret)) for secret, key in SANDBOX_KEYS))


def _keyring(settings: Settings, sandbox: bool) -> KeyRing:
    path = settings.access.keys_file
    if path is None:
        if sandbox:
            return _sandbox_keyring()
        raise ConfigError("GATEWAY_API_KEYS_FILE", "is required")
    try:
        return KeyRing.load(path)
    except KeyFileError as exc:
        raise ConfigError("GATEWAY_API_KEYS_FILE", str(exc)) from None


@dataclasses.dataclass(frozen=True)
class SandboxPlan:
    config: SandboxConfig
    host: str
    port: int


def _sandbox_capillary(
    env: Mapping[str, str], sandbox: SandboxConfig, url: str, problems: list[ConfigError]
) -> CapillarySettings:
    """Capillary settings for the embedded sandbox: its address and its demo credentials.
    ``CAPILLARY_AUTH=basic`` switches to a demo till's Basic credentials."""
    auth = (env.get("CAPILLARY_AUTH") or "oauth").strip().lower()
    if auth not in ("oauth", "basic"):
        problems.append(ConfigError("CAPILLARY_AUTH", f"must be one of oauth, basic, got {auth!r}"))
    till = sandbox.tills[0]
    return CapillarySettings(
        api_url=url,
        upload_url=url,
        auth="basic" if auth == "basic" else "oauth",
        client_key=sandbox.client_key,
        client_secret=sandbox.client_secret,
        till_username=till.username,
        till_password=till.password,
    )


def _announce_sandbox(url: str) -> None:
    log.info("sandbox_started", listen=url, demo=f"{url}/__sandbox/demo")
    _banner(f"Capillary sandbox listening on {url}", DEMO.describe())


async def _serve(settings: Settings, sandbox: SandboxPlan | None, keys: KeyRing) -> None:
    """Run until SIGTERM or SIGINT, then drain: unready at once, keep accepting for ``shutdown_grace`` so load
    balancers move away, then stop listening, let requests in flight finish (up to ``shutdown_timeout``), stop
    the reconcilers and close the stores."""
    runners: list[web.AppRunner] = []
    if settings.otlp_endpoint:
        tracing.install_otlp()  # before the app and its Capillary client are built: they take its hooks
    try:
        if sandbox is not None:
            runner = await _start(create_sandbox_app(sandbox.config), sandbox.host, sandbox.port, 1.0)
            runners.append(runner)
            url = _listen_url(runner)
            settings = dataclasses.replace(
                settings, capillary=dataclasses.replace(settings.capillary, api_url=url, upload_url=url)
            )
        app = create_app(settings, keys=keys)
        limits = DoorLimits.of(settings.access)
        gateway = await _start(app, settings.host, settings.port, settings.shutdown_timeout, limits)
        runners.insert(0, gateway)
        metrics_url = None
        if OPS_APP in app:
            ops = await _start(app[OPS_APP], settings.host, settings.metrics_port or 0, 1.0, limits)
            runners.insert(1, ops)
            metrics_url = _listen_url(ops)
        gc.collect()
        gc.freeze()  # what startup built lives as long as the process: the collector never walks it again
        _announce(settings, keys, _bound(gateway), metrics_url, sandbox is not None)
        proof = asyncio.ensure_future(app[UPSTREAM_AUTH].verdict())  # proves the credentials now, logs a refusal
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, app[KEYS].reload)
        received = await _until_signalled()
        proof.cancel()
        app[LIFECYCLE].draining = True
        if received == signal.SIGTERM:  # Ctrl-C stops at once; an orchestrator gets its grace
            log.info("draining", unready=True, listening_seconds=settings.shutdown_grace)
            await asyncio.sleep(settings.shutdown_grace)
    finally:
        for runner in runners:  # the gateway first: it drains while the sandbox still answers
            await runner.cleanup()
        tracing.shutdown()  # the last spans go out


def _announce(
    settings: Settings, keys: KeyRing, bound: tuple[str, int], metrics_url: str | None, sandbox: bool
) -> None:
    """The start as one log event (the real bind address), and a readable banner when a person is watching."""
    demo_keys = sandbox and settings.access.keys_file is None
    host, port = bound
    url = _url(host, port)
    log.info(
        "gateway_started",
        version=__version__,
        host=host,
        port=port,
        listen=url,
        metrics_listen=metrics_url or url,
        capillary=settings.capillary.api_url,
        capillary_auth=settings.capillary.auth,
        sandbox=sandbox,
        sandbox_url=settings.capillary.api_url if sandbox else None,
        ledger="redis" if settings.state.redis_url else "memory",
        keys_loaded=len(keys),
        traces=settings.otlp_endpoint,
        # serve --sandbox's demo keys, valid only against its own fake Capillary: the newcomer needs them
        demo_keys=[{"key": secret, "scopes": sorted(k.scopes), "store": k.store} for secret, k in SANDBOX_KEYS]
        if demo_keys
        else None,
    )
    everywhere = url.startswith(("http://0.0.0.0:", "http://[::]:"))
    lines = [f"pos-coupon-gateway {__version__} listening on {url}" + (" (every interface)" if everywhere else "")]
    if metrics_url:
        lines.append(f"metrics and API description on {metrics_url}")
    if sandbox:
        lines += [
            f"Capillary sandbox listening on {settings.capillary.api_url}",
            DEMO.describe(),
            f"Gateway authenticates to the sandbox with {settings.capillary.auth}",
        ]
        if demo_keys:
            for secret, key in SANDBOX_KEYS:
                lines.append(f"Demo API key ({'+'.join(sorted(key.scopes))}, store {key.store}): {secret}")
    _banner(*lines)


async def _sandbox_only(plan: SandboxPlan) -> None:
    runner = await _start(create_sandbox_app(plan.config), plan.host, plan.port, 1.0)
    try:
        _announce_sandbox(_listen_url(runner))
        await _until_signalled()
    finally:
        await runner.cleanup()


def _run(job: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop's event loop when it is installed (less CPU per request), else on asyncio's own."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(job)
    else:
        uvloop.run(job)


def _sandbox_plan(env: Mapping[str, str], problems: list[ConfigError]) -> SandboxPlan:
    try:
        config = SandboxConfig.from_env(env)
    except ValueError as exc:  # the sandbox's own settings: "NAME must be ..." (or "NAME: ...")
        variable, _, problem = str(exc).partition(" ")
        problems.append(ConfigError(variable.rstrip(":"), problem))
        config = SandboxConfig()
    return SandboxPlan(config, *sandbox_address(env, problems))


def _configure(args: argparse.Namespace, env: Mapping[str, str]) -> Coroutine[Any, Any, None]:
    """Read and check every setting, then the job to run; :class:`ConfigError` lists every problem at once."""
    problems: list[ConfigError] = []
    sandbox = _sandbox_plan(env, problems) if args.command == "sandbox" or args.sandbox else None
    if args.command == "sandbox":
        assert sandbox is not None
        settle(problems)
        configure_logging("info")
        return _sandbox_only(sandbox)
    if sandbox is not None:
        capillary = _sandbox_capillary(env, sandbox.config, f"http://{sandbox.host}:{sandbox.port}", problems)
    else:
        capillary = capillary_from_env(env, problems)
    settings = gateway_from_env(
        env,
        capillary,
        keys_required=sandbox is None,
        default_host="127.0.0.1" if sandbox is not None else "0.0.0.0",  # the demo keys stay on this machine
        problems=problems,
    )
    keys = KeyRing({})
    if all(p.variable != "GATEWAY_API_KEYS_FILE" for p in problems):
        try:
            keys = _keyring(settings, sandbox is not None)
        except ConfigError as exc:
            problems.append(exc)
    settle(problems)
    console = {"json": False, "console": True}.get(settings.log_format)
    configure_logging(settings.log_level, console=console)
    return _serve(settings, sandbox, keys)


def build_parser() -> argparse.ArgumentParser:
    """The command line: serve, sandbox, and the operator's commands."""
    parser = argparse.ArgumentParser(
        prog="coupon-gateway",
        description="POS coupon redemption gateway for Capillary",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  coupon-gateway serve --sandbox        # the gateway and a fake Capillary, on 127.0.0.1"
        "\n  coupon-gateway coupons details ABS-ALICE-1 --api-key sandbox-admin-key"
        "\n  coupon-gateway series show 10003 --api-key sandbox-admin-key",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway; settings come from the environment (docs/configuration.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  coupon-gateway serve --sandbox                        # demo: http://127.0.0.1:8080"
        "\n  GATEWAY_HOST=0.0.0.0 coupon-gateway serve --sandbox   # the demo on every interface"
        "\n  CAPILLARY_AUTH=oauth CAPILLARY_API_URL=https://eu.api.capillarytech.com ... coupon-gateway serve",
    )
    serve.add_argument("--sandbox", action="store_true", help="also run a Capillary sandbox and use it as upstream")
    commands.add_parser(
        "sandbox",
        help="run the Capillary sandbox alone",
        description="Run the Capillary sandbox alone (SANDBOX_HOST, SANDBOX_PORT: 127.0.0.1:8081).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  coupon-gateway sandbox\n  curl -s localhost:8081/__sandbox/demo",
    )
    operator_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ
    if args.command in ("coupons", "series"):
        return operator_cli.run(args, env)
    try:
        job = _configure(args, env)
    except ConfigError as exc:  # every problem found, at once
        problems = str(exc).splitlines()
        if len(problems) == 1:
            print(f"coupon-gateway: configuration error: {problems[0]}", file=sys.stderr)
        else:
            listed = "".join(f"\n  {p}" for p in problems)
            print(f"coupon-gateway: configuration error: {len(problems)} settings to fix:{listed}", file=sys.stderr)
        return 2
    try:
        _run(job)
    except OSError as exc:
        print(f"coupon-gateway: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
