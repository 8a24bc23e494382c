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

from aiohttp import web

from service import __version__
from service.access.keys import ApiKey, KeyFileError, KeyRing, digest_of
from service.app import KEYS, LIFECYCLE, METRICS, OPS_APP, create_app
from service.client import cli as operator_cli
from service.config import (
    CapillarySettings,
    ConfigError,
    Settings,
    capillary_from_env,
    gateway_from_env,
    sandbox_address,
)
from service.observability.logging import configure_logging
from service.sandbox import DEMO, SandboxConfig, create_sandbox_app
from service.web.server import DoorLimits, serve


def _listen_url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


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


def _sandbox_capillary(env: Mapping[str, str], sandbox: SandboxConfig, url: str) -> CapillarySettings:
    """Capillary settings for the embedded sandbox: its address and its demo credentials.
    ``CAPILLARY_AUTH=basic`` switches to a demo till's Basic credentials."""
    auth = (env.get("CAPILLARY_AUTH") or "oauth").strip().lower()
    if auth not in ("oauth", "basic"):
        raise ConfigError("CAPILLARY_AUTH", f"must be one of oauth, basic, got {auth!r}")
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


def _print_demo(url: str) -> None:
    print(f"Capillary sandbox listening on {url}", flush=True)
    print(DEMO.describe(), flush=True)


async def _serve(settings: Settings, sandbox: SandboxPlan | None, keys: KeyRing) -> None:
    """Run until SIGTERM or SIGINT, then drain: unready at once, keep accepting for ``shutdown_grace`` so load
    balancers move away, then stop listening, let requests in flight finish (up to ``shutdown_timeout``), stop
    the reconcilers and close the stores."""
    runners: list[web.AppRunner] = []
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
        if OPS_APP in app:
            ops = await _start(app[OPS_APP], settings.host, settings.metrics_port or 0, 1.0, limits)
            runners.insert(1, ops)
            print(f"metrics and API description on {_listen_url(ops)}", flush=True)
        gc.collect()
        gc.freeze()  # what startup built lives as long as the process: the collector never walks it again
        print(f"pos-coupon-gateway {__version__} listening on {_listen_url(gateway)}", flush=True)
        if sandbox is not None:
            _print_demo(settings.capillary.api_url)
            print(f"Gateway authenticates to the sandbox with {settings.capillary.auth}", flush=True)
            if settings.access.keys_file is None:
                for secret, key in SANDBOX_KEYS:
                    scopes = "+".join(sorted(key.scopes))
                    print(f"Demo API key ({scopes}, store {key.store}): {secret}", flush=True)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, app[KEYS].reload)
        received = await _until_signalled()
        app[LIFECYCLE].draining = True
        if received == signal.SIGTERM:  # Ctrl-C stops at once; an orchestrator gets its grace
            print(f"draining: unready now, listening {settings.shutdown_grace:g} s more", flush=True)
            await asyncio.sleep(settings.shutdown_grace)
    finally:
        for runner in runners:  # the gateway first: it drains while the sandbox still answers
            await runner.cleanup()


async def _sandbox_only(plan: SandboxPlan) -> None:
    runner = await _start(create_sandbox_app(plan.config), plan.host, plan.port, 1.0)
    try:
        _print_demo(_listen_url(runner))
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coupon-gateway", description="POS coupon redemption gateway for Capillary")
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--sandbox", action="store_true", help="also run a Capillary sandbox and use it as upstream")
    commands.add_parser("sandbox", help="run the Capillary sandbox alone")
    operator_cli.add_parser(commands)
    args = parser.parse_args(argv)
    env = os.environ
    if args.command == "coupons":
        return operator_cli.run(args, env)
    try:
        sandbox: SandboxPlan | None = None
        if args.command == "sandbox" or args.sandbox:
            sandbox = SandboxPlan(SandboxConfig.from_env(env), *sandbox_address(env))
        if args.command == "sandbox":
            assert sandbox is not None
            configure_logging("info")
            job = _sandbox_only(sandbox)
        else:
            if sandbox is not None:
                url = f"http://{sandbox.host}:{sandbox.port}"
                capillary = _sandbox_capillary(env, sandbox.config, url)
            else:
                capillary = capillary_from_env(env)
            settings = gateway_from_env(env, capillary, keys_required=sandbox is None)
            keys = _keyring(settings, sandbox is not None)
            console = {"json": False, "console": True}.get(settings.log_format)
            configure_logging(settings.log_level, console=console)
            job = _serve(settings, sandbox, keys)
    except ValueError as exc:  # ConfigError, or the sandbox's own settings
        print(f"coupon-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        _run(job)
    except OSError as exc:
        print(f"coupon-gateway: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
