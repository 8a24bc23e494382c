"""Command line: ``coupon-gateway serve [--sandbox]`` and ``coupon-gateway sandbox``.

All configuration is read and checked before anything starts: a bad variable stops the process with one line
naming it, and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Mapping, Sequence

from aiohttp import web

from service import __version__
from service.app import create_app
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


def _listen_url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


async def _start(app: web.Application, host: str, port: int, shutdown_timeout: float) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


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


async def _serve(settings: Settings, sandbox: SandboxPlan | None) -> None:
    runners: list[web.AppRunner] = []
    try:
        if sandbox is not None:
            runner = await _start(create_sandbox_app(sandbox.config), sandbox.host, sandbox.port, 1.0)
            runners.append(runner)
            url = _listen_url(runner)
            settings = dataclasses.replace(
                settings, capillary=dataclasses.replace(settings.capillary, api_url=url, upload_url=url)
            )
        gateway = await _start(create_app(settings), settings.host, settings.port, settings.shutdown_timeout)
        runners.insert(0, gateway)
        print(f"pos-coupon-gateway {__version__} listening on {_listen_url(gateway)}", flush=True)
        if sandbox is not None:
            _print_demo(settings.capillary.api_url)
            print(f"Gateway authenticates to the sandbox with {settings.capillary.auth}", flush=True)
        await _until_signalled()
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coupon-gateway", description="POS coupon redemption gateway for Capillary")
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--sandbox", action="store_true", help="also run a Capillary sandbox and use it as upstream")
    commands.add_parser("sandbox", help="run the Capillary sandbox alone")
    args = parser.parse_args(argv)
    env = os.environ
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
            settings = gateway_from_env(env, capillary)
            console = {"json": False, "console": True}.get(settings.log_format)
            configure_logging(settings.log_level, console=console)
            job = _serve(settings, sandbox)
    except ValueError as exc:  # ConfigError, or the sandbox's own settings
        print(f"coupon-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(job)
    except OSError as exc:
        print(f"coupon-gateway: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
