"""Publish durability on SQLite: no fsync by default, yet nothing answered is lost in a crash.

A live ``Publish`` commits with ``synchronous=NORMAL`` (WAL: atomic, survives the
process dying, not a power loss) and, when the database is idle, on the caller's
thread instead of the database thread's; webhook ingests and other durable
writes still commit with ``synchronous=FULL`` on the database thread.
``realtime.durable_publish: true`` makes Publish durable too.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import grpc
import pytest
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.clock import SystemClock
from sidecar.config import parse_config
from sidecar.core.events.live import LiveBus, LivePolicy
from sidecar.core.events.models import NewEvent
from sidecar.metrics import LiveMetrics, Metrics
from sidecar.storage import SqliteStorage
from sidecar.storage import sqlite as sqlite_module
from tests.test_webhooks_crash import WAIT, Start, start  # noqa: F401  (fixture)

TOPIC = "orders"


class Statements:
    """Every statement the store's connection runs, with the thread that ran it."""

    def __init__(self, store: SqliteStorage, conn: sqlite3.Connection | None = None) -> None:
        self.seen: list[tuple[int, str]] = []
        (conn or store.db.conn).set_trace_callback(
            lambda sql: self.seen.append((threading.get_ident(), sql.strip())))

    def take(self) -> list[tuple[int, str]]:
        out, self.seen = self.seen, []
        return out

    def texts(self) -> list[str]:
        return [sql.split(" ", 1)[0] if sql.startswith("INSERT") else sql
                for _, sql in self.take()]


async def db_thread(store: SqliteStorage) -> int:
    return await store._run(threading.get_ident)


async def hold_database_thread(store: SqliteStorage
                               ) -> tuple[asyncio.Future[bool], threading.Event]:
    """Keep the database thread busy until the returned event is set."""
    entered, release = threading.Event(), threading.Event()

    def block() -> bool:
        entered.set()
        return release.wait(WAIT)

    busy = asyncio.ensure_future(store._run(block))
    assert await asyncio.to_thread(entered.wait, WAIT)
    return busy, release


async def synchronous(store: SqliteStorage) -> int:
    return int(await store._run(lambda: store.db.execute("PRAGMA synchronous").fetchone()[0]))


async def test_idle_publish_commits_on_the_callers_thread_without_fsync(
        store: SqliteStorage) -> None:
    statements = Statements(store)
    here = threading.get_ident()
    stored = await store.append_event(NewEvent("evt_1", TOPIC, data=b"{}"), now=1.0,
                                      durable=False)
    ran = statements.take()
    assert {thread for thread, _ in ran} == {here}
    texts = [sql.split(" ", 1)[0] if sql.startswith("INSERT") else sql for _, sql in ran]
    assert texts == ["PRAGMA synchronous=NORMAL", "PRAGMA wal_autocheckpoint=0",
                     "PRAGMA busy_timeout=0", "BEGIN IMMEDIATE", "SAVEPOINT batch_item",
                     "INSERT", "INSERT", "RELEASE batch_item", "COMMIT"]
    assert stored.offset == 1
    # The next one needs no change of settings; the database thread's work gets
    # the connection's own (FULL) back.
    await store.append_event(NewEvent("evt_2", TOPIC), now=1.0, durable=False)
    assert not any("PRAGMA" in sql for _, sql in statements.take())
    assert await synchronous(store) == 2
    assert [sql for _, sql in statements.take()][:3] == [
        "PRAGMA synchronous=FULL", "PRAGMA wal_autocheckpoint=1000",
        "PRAGMA busy_timeout=10000"]


async def test_publishes_in_one_turn_share_a_transaction_and_fail_alone(
        store: SqliteStorage) -> None:
    await store.append_event(NewEvent("evt_taken", TOPIC), now=1.0, durable=False)
    statements = Statements(store)
    first, taken, last = await asyncio.gather(
        *(store.append_event(NewEvent(event_id, TOPIC), now=1.0, durable=False)
          for event_id in ("evt_a", "evt_taken", "evt_b")), return_exceptions=True)
    assert isinstance(taken, sqlite3.IntegrityError)  # the id is taken: this one only
    assert not isinstance(first, BaseException) and not isinstance(last, BaseException)
    assert [first.offset, last.offset] == [2, 3]
    texts = statements.texts()
    assert texts.count("BEGIN IMMEDIATE") == 1 and texts.count("COMMIT") == 1
    assert texts.count("ROLLBACK TO batch_item") == 1
    ids = await store._run(lambda: [r[0] for r in store.db.execute(
        "SELECT id FROM events ORDER BY seq")])
    assert ids == ["evt_taken", "evt_a", "evt_b"]


async def test_a_lock_held_elsewhere_never_blocks_the_event_loop(store: SqliteStorage) -> None:
    """Another process writing to the file: the publish waits on the database thread,
    not on the loop's (which stays free), and commits once the lock is released."""
    worker = await db_thread(store)
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        statements = Statements(store)
        loop = asyncio.get_running_loop()
        started = loop.time()
        append = asyncio.ensure_future(store.append_event(NewEvent("evt_1", TOPIC), now=1.0,
                                                          durable=False))
        await asyncio.sleep(0)  # gathered
        await asyncio.sleep(0)  # the inline commit was tried (and found the lock taken)
        assert loop.time() - started < 1.0  # not the 10 s busy timeout on this thread
        assert not append.done()
        assert (threading.get_ident(), "BEGIN IMMEDIATE") in statements.seen
        other.execute("ROLLBACK")
        assert (await asyncio.wait_for(append, WAIT)).offset == 1
        assert (worker, "COMMIT") in statements.take()
    finally:
        other.close()


async def test_durable_writes_still_fsync_on_the_database_thread(store: SqliteStorage) -> None:
    worker = await db_thread(store)
    statements = Statements(store)
    await store.ingest_webhook(NewEvent("evt_w", "webhooks.stripe", data=b"{}"),
                               source="stripe", dedup_key="k1", audit_headers={}, now=1.0,
                               dedup_ttl=60.0)
    await store.append_event(NewEvent("evt_d", TOPIC), now=1.0)  # durable by default
    ran = statements.take()
    assert {thread for thread, _ in ran} == {worker}
    assert not any("synchronous" in sql for _, sql in ran)
    assert [sql for _, sql in ran].count("COMMIT") == 2


async def test_publish_while_the_database_is_busy_queues_in_order(
        store: SqliteStorage) -> None:
    """Busy thread: the write waits in the group commit (no fsync for a batch of such
    writes) and every offset follows call order."""
    worker = await db_thread(store)
    busy, release = await hold_database_thread(store)
    first = asyncio.ensure_future(store.append_event(NewEvent("evt_a", TOPIC), now=1.0,
                                                     durable=False))
    statements = Statements(store)
    await asyncio.sleep(0)  # gathered for an inline commit
    await asyncio.sleep(0)  # which found the thread's lock taken: queued for the thread
    # The batch is in flight before the thread is let go (else the first write could
    # find the lock free again and commit here).
    assert store._writing
    second = asyncio.ensure_future(store.append_event(NewEvent("evt_b", TOPIC), now=1.0,
                                                      durable=False))
    release.set()
    assert await busy
    a, b = await asyncio.gather(first, second)
    assert (a.offset, b.offset) == (1, 2)
    ran = statements.take()
    assert {thread for thread, _ in ran} == {worker}
    assert ran[0][1] == "PRAGMA synchronous=NORMAL"
    # The write that came while a batch was in flight went after it, not inline.
    third = await store.append_event(NewEvent("evt_c", TOPIC), now=1.0, durable=False)
    assert third.offset == 3


async def test_a_batch_with_one_durable_write_is_fsynced(store: SqliteStorage) -> None:
    busy, release = await hold_database_thread(store)
    # The durable write takes the one gathered before it along into its batch (commits
    # follow call order); the third, not durable, goes in the next batch.
    writes = [asyncio.ensure_future(store.append_event(NewEvent(f"evt_{i}", TOPIC), now=1.0,
                                                       durable=i == 1)) for i in range(3)]
    await asyncio.sleep(0)
    statements = Statements(store)
    release.set()
    assert await busy
    assert [w.offset for w in await asyncio.gather(*writes)] == [1, 2, 3]
    texts = statements.texts()
    relaxed = texts.index("PRAGMA synchronous=NORMAL")
    first, second = texts[:relaxed], texts[relaxed:]
    assert first.count("COMMIT") == 1 and first.count("INSERT") == 4
    assert not any("synchronous" in sql for sql in first)  # fsynced
    assert second.count("COMMIT") == 1 and second.count("INSERT") == 2


async def test_inline_writes_have_the_log_checkpointed_on_the_database_thread(
        store: SqliteStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_PAGES", 10)
    worker = await db_thread(store)
    assert store._checkpointer is not None
    statements = Statements(store, store._checkpointer)
    for i in range(3):  # about 3 pages each: not yet
        await store.append_event(NewEvent(f"evt_{i}", TOPIC), now=1.0, durable=False)
    await db_thread(store)  # anything submitted before this has run
    assert statements.take() == []
    await store.append_event(NewEvent("evt_big", TOPIC, data=b"x" * 20_000), now=1.0,
                             durable=False)
    await db_thread(store)
    assert statements.take() == [(worker, "PRAGMA wal_checkpoint(PASSIVE)")]


async def test_a_checkpoint_runs_beside_writes(store: SqliteStorage) -> None:
    """The checkpoint has a connection of its own: it needs nothing the writes hold (its
    two fsyncs never keep a publish waiting)."""
    await store.append_event(NewEvent("evt_1", TOPIC), now=1.0, durable=False)
    assert store._executor is not None and store._checkpointer is not None
    log = store.path.with_name(store.path.name + "-wal")
    with store._lock:  # as a write in progress on the main connection holds it
        await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
            store._executor, store._checkpoint), WAIT)
        frames = store._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert frames[0] == 0 and frames[1] == frames[2] > 0  # every frame copied back
    assert log.exists()


async def test_durable_publish_setting_reaches_the_bus(store: SqliteStorage) -> None:
    assert parse_config({}, {}).realtime.durable_publish is False
    assert parse_config({"realtime": {"durable_publish": True}}, {}).realtime.durable_publish
    worker = await db_thread(store)
    for durable, thread in ((True, worker), (False, threading.get_ident())):
        bus = LiveBus(store, SystemClock(), LivePolicy(durable_publish=durable),
                      LiveMetrics(Metrics()), lambda topic: None)
        statements = Statements(store)
        await bus.publish(TOPIC, "t", b"{}")
        ran = statements.take()
        assert {t for t, _ in ran} == {thread}, durable
        assert any("synchronous=NORMAL" in sql for _, sql in ran) is not durable


@pytest.mark.slow
async def test_every_publish_answered_before_a_sigkill_survives(start: Start) -> None:  # noqa: F811
    first = await start()
    answered: dict[int, str] = {}
    async with grpc.aio.insecure_channel(first.grpc) as channel:
        stub = pb_grpc.SidecarServiceStub(channel)

        async def publish(i: int) -> None:
            reply = await stub.Publish(pb.PublishRequest(
                topic=TOPIC, type="created", data=f'{{"n":{i}}}'.encode(),
                content_type="application/json"), timeout=WAIT)
            answered[reply.offset] = reply.event_id

        # Sequential ones (inline commits) and a concurrent burst (group commits).
        for i in range(20):
            await publish(i)
        await asyncio.gather(*(publish(i) for i in range(20, 200)))
    await first.child.sigkill()
    assert sorted(answered) == list(range(1, 201))

    second = await start()
    async with grpc.aio.insecure_channel(second.grpc) as channel:
        stream = pb_grpc.SidecarServiceStub(channel).Subscribe(pb.SubscribeRequest(
            topics=[TOPIC], start=pb.START_POSITION_EARLIEST))
        replayed: dict[int, str] = {}

        async def read() -> None:
            while len(replayed) < len(answered):
                msg = await stream.read()
                assert msg is not grpc.aio.EOF
                if msg.HasField("event"):
                    replayed[msg.event.offset] = msg.event.id

        try:
            await asyncio.wait_for(read(), WAIT)
        finally:
            stream.cancel()
    assert replayed == answered
