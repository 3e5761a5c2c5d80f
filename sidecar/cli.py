"""The ``integration-sidecar`` command: serve, config show/check, version."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from sidecar import __version__
from sidecar.config import Config, ConfigError, dump_redacted, load_config
from sidecar.logs import configure_logging

EXIT_CONFIG_ERROR = 2


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (SIDECAR_NO_UVLOOP=1 turns it off)."""
    if not os.environ.get("SIDECAR_NO_UVLOOP"):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro)
    return asyncio.run(coro)


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _cmd_serve(args: argparse.Namespace) -> int:
    from sidecar.app import serve

    config = _load(args)
    configure_logging(config.logging.level, config.logging.format,
                      [s.value for s in config.secrets()])
    return _run(serve(config))


def _cmd_config_show(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_redacted(_load(args)))
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    config = _load(args)
    print(f"configuration OK: {len(config.integrations)} integration(s), "
          f"{len(config.routes)} route(s)")
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"integration-sidecar {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="integration-sidecar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", default=os.environ.get("SIDECAR_CONFIG"),
                       help="YAML config file (default: $SIDECAR_CONFIG, else built-in "
                            "defaults)")
        return p

    with_config(sub.add_parser("serve", help="run the sidecar")).set_defaults(fn=_cmd_serve)
    cfg = sub.add_parser("config", help="inspect the configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    with_config(cfg_sub.add_parser(
        "show", help="print the effective config, secrets redacted")).set_defaults(
        fn=_cmd_config_show)
    with_config(cfg_sub.add_parser(
        "check", help="validate the config and exit")).set_defaults(fn=_cmd_config_check)
    sub.add_parser("version", help="print the version").set_defaults(fn=_cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return code


if __name__ == "__main__":
    sys.exit(main())
