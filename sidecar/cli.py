"""The ``integration-sidecar`` command: serve, config show/check/schema, webhooks, calls,
version."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from sidecar import __version__
from sidecar.config import Config, ConfigError, dump_redacted, load_config
from sidecar.lazy_modules import defer_unused_modules
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
    defer_unused_modules()
    from sidecar.app import serve

    config = _load(args)
    scrubber = configure_logging(config.logging.level, config.logging.format,
                                 [s.value for s in config.secrets()])
    # SIGHUP re-reads the same file (and the environment).
    return _run(serve(config, config_path=args.config, log_scrubber=scrubber))


def _cmd_config_show(args: argparse.Namespace) -> int:
    # The environment too: it marks the fields that environment overrides set.
    sys.stdout.write(dump_redacted(_load(args), os.environ))
    return 0


def _cmd_config_schema(args: argparse.Namespace) -> int:
    from sidecar.config.reference import render_schema  # not needed to serve

    sys.stdout.write(render_schema())
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    config = _load(args)
    print(f"configuration OK: {len(config.integrations)} integration(s), "
          f"{len(config.routes)} route(s)")
    return 0


async def _with_storage(config: Config, fn: Any) -> int:
    from sidecar.storage import make_storage

    storage = make_storage(config.storage)
    await storage.open()
    try:
        return int(await fn(storage))
    finally:
        await storage.close()


def _cmd_webhooks_list(args: argparse.Namespace) -> int:
    import json
    import time

    from sidecar.core.events.models import DeliveryStatus

    config = _load(args)
    status = DeliveryStatus(args.status) if args.status else None
    topic = f"webhooks.{args.source}" if args.source else args.topic

    async def run(storage: Any) -> int:
        records = await storage.list_deliveries(group=args.group, topic=topic, status=status,
                                                limit=args.limit)
        if args.json:
            print(json.dumps([{"group": r.group, "event_id": r.event_id, "topic": r.topic,
                               "offset": r.offset, "type": r.type, "status": r.status.value,
                               "attempts": r.attempts, "last_error": r.last_error}
                              for r in records], indent=2))
            return 0
        print(f"{'GROUP':16} {'EVENT ID':40} {'TOPIC':24} {'STATUS':10} {'TRIES':>5} "
              f"RECEIVED             LAST ERROR")
        for r in records:
            received = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.received_at))
            print(f"{r.group:16} {r.event_id:40} {r.topic:24} {r.status.value:10} "
                  f"{r.attempts:>5} {received} {r.last_error}")
        return 0

    return _run(_with_storage(config, run))


def _cmd_webhooks_replay(args: argparse.Namespace) -> int:
    import time

    from sidecar.core.events.models import DeliveryStatus

    config = _load(args)
    statuses = [DeliveryStatus(s) for s in args.status]

    async def run(storage: Any) -> int:
        n = await storage.requeue(args.group, event_ids=args.event_id, statuses=statuses,
                                  now=time.time())
        print(f"requeued {n} event(s) for group {args.group!r}")
        return 0

    return _run(_with_storage(config, run))


def _cmd_calls(args: argparse.Namespace) -> int:
    """``calls list|show|replay|cancel`` on the store. A running sidecar sees a replay
    within a minute (its queue looks at the store at least that often); its admin
    listener's ``/calls`` endpoints act at once."""
    import json
    import time

    from sidecar.core.calls.queue.models import QueuedState
    from sidecar.rpc.queued_calls import queued_call_json

    config = _load(args)

    async def run(storage: Any) -> int:
        if args.calls_command == "list":
            state = QueuedState(args.state) if args.state else None
            calls = await storage.queue_list(state=state, integration=args.integration,
                                             limit=args.limit)
        else:
            now = time.time()
            calls = []
            for call_id in args.id:
                if args.calls_command == "show":
                    call = await storage.queue_get(call_id)
                elif args.calls_command == "replay":
                    call = await storage.queue_replay(call_id, now=now)
                else:
                    call = await storage.queue_cancel(call_id, now=now)
                if call is None:
                    print(f"no queued call {call_id!r}", file=sys.stderr)
                    return 1
                calls.append(call)
        if args.json or args.calls_command == "show":
            print(json.dumps([queued_call_json(c) for c in calls], indent=2))
            return 0
        print(f"{'ID':28} {'INTEGRATION':16} {'STATE':10} {'TRIES':>5} {'LAST':>5} "
              "NEXT ATTEMPT          LAST ERROR")
        for c in calls:
            due = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c.next_attempt_at))
                   if c.next_attempt_at is not None else "-")
            print(f"{c.id:28} {c.integration:16} {c.state.value:10} {c.attempts:>5} "
                  f"{c.last_status or '-':>5} {due:21} {c.last_error}")
        return 0

    return _run(_with_storage(config, run))


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
    cfg_sub.add_parser("schema", help="print the config file's JSON Schema").set_defaults(
        fn=_cmd_config_schema)
    wh = sub.add_parser("webhooks", help="list and replay received webhooks")
    wh_sub = wh.add_subparsers(dest="webhooks_command", required=True)
    lst = with_config(wh_sub.add_parser("list", help="events and their delivery status"))
    lst.add_argument("--group", help="durable consumer group")
    lst.add_argument("--source", help="webhook source (topic webhooks.<source>)")
    lst.add_argument("--topic", help="any topic")
    lst.add_argument("--status", choices=["pending", "delivered", "failed", "completed",
                                          "dead"])
    lst.add_argument("--limit", type=int, default=100)
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(fn=_cmd_webhooks_list)
    rep = with_config(wh_sub.add_parser("replay", help="deliver dead or failed events again"))
    rep.add_argument("--group", required=True)
    rep.add_argument("--event-id", action="append", default=[],
                     help="only these events (repeatable); default: all with --status")
    rep.add_argument("--status", action="append", choices=["dead", "failed"],
                     help="which events (repeatable; default dead)")
    rep.set_defaults(fn=_cmd_webhooks_replay)
    calls = sub.add_parser("calls", help="list, show, replay and cancel queued calls")
    calls_sub = calls.add_subparsers(dest="calls_command", required=True)
    lst = with_config(calls_sub.add_parser("list", help="queued calls and their state"))
    lst.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "dead",
                                         "cancelled"])
    lst.add_argument("--integration")
    lst.add_argument("--limit", type=int, default=100)
    lst.add_argument("--json", action="store_true", help="print JSON")
    for name, what in (("show", "print calls as JSON"),
                       ("replay", "queue failed, dead or cancelled calls again, due now"),
                       ("cancel", "cancel calls that have not finished")):
        one = with_config(calls_sub.add_parser(name, help=what))
        one.add_argument("id", nargs="+", help="queued call id (qc_...)")
        one.add_argument("--json", action="store_true", help="print JSON")
    calls.set_defaults(fn=_cmd_calls)
    sub.add_parser("version", help="print the version").set_defaults(fn=_cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "webhooks_command", None) == "replay" and not args.status:
        args.status = ["dead"]
    try:
        code: int = args.fn(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return code


if __name__ == "__main__":
    sys.exit(main())
