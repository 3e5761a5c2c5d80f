"""Each layer of the Call path on its own, against an in-memory ``next`` or transport
and fake time: what it adds, what it refuses, and what it records on the context."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.core.calls.context import CallContext, compose
from sidecar.core.calls.layers.breaker import BreakerLayer
from sidecar.core.calls.layers.bulkhead import BulkheadLayer
from sidecar.core.calls.layers.credentials import CredentialsLayer
from sidecar.core.calls.layers.deadline import DeadlineLayer
from sidecar.core.calls.layers.deprecation import DeprecationLayer
from sidecar.core.calls.layers.fallback import FallbackLayer, LastGoodCache
from sidecar.core.calls.layers.idempotency import IdempotencyLayer
from sidecar.core.calls.layers.rate_limit import RateLimitLayer
from sidecar.core.calls.layers.retry import RetryLayer
from sidecar.core.calls.layers.transport import TransportLayer
from sidecar.core.calls.models import CallRequest, TransportError, UpstreamResponse
from sidecar.core.calls.observer import NullObserver
from sidecar.core.calls.pipeline import CallPipeline
from sidecar.core.calls.policy import (
    ApiVersion,
    BreakerSettings,
    FallbackPolicy,
    IntegrationSpec,
    RouteSpec,
    Timeouts,
)
from sidecar.core.calls.stack import StackBuilder
from sidecar.core.resilience import BreakerOpenError, CircuitBreaker, RetryBudget
from sidecar.core.resilience.breaker import BreakerPolicy
from sidecar.core.resilience.bulkhead import Bulkhead, BulkheadFullError
from sidecar.core.resilience.rate_limit import RateLimitedError, RateLimitPolicy, TokenBucket
from sidecar.core.resilience.retry_budget import RetryBudgetPolicy
from sidecar.errors import (
    Aborted,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    UpstreamAuthFailed,
)
from tests.core.call_layers import (
    TIMEOUTS,
    MemoryIdempotency,
    RecordingObserver,
    ScriptedTransport,
    VirtualClock,
    answer,
    context,
    failure,
    handler_of,
    raising,
    retry_policy,
)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


def retry_layer(clock: VirtualClock, observer: RecordingObserver | None = None,
                budget: RetryBudget | None = None, **policy: object) -> RetryLayer:
    return RetryLayer(retry_policy(**policy), budget, clock, lambda: 0.5,  # type: ignore[arg-type]
                      observer or RecordingObserver(), "pay", "")


# ---------------------------------------------------------------- composition

async def test_compose_runs_layers_outermost_first(clock: VirtualClock) -> None:
    seen: list[str] = []

    class Mark:
        def __init__(self, name: str) -> None:
            self.name = name

        async def __call__(self, ctx: CallContext, next: object) -> UpstreamResponse:
            seen.append(self.name)
            return await next(ctx)  # type: ignore[operator, no-any-return]

    run = compose([Mark("a"), Mark("b"), Mark("c")], handler_of(answer(200)))
    assert (await run(context(clock))).status == 200
    assert seen == ["a", "b", "c"]


# ---------------------------------------------------------------- deadline

async def test_deadline_is_the_earlier_of_total_and_caller(clock: VirtualClock) -> None:
    ctx = context(clock)
    await DeadlineLayer(30.0, clock)(ctx, handler_of(answer(200)))
    assert ctx.deadline == ctx.start + 30.0
    ctx = context(clock)
    ctx.request = CallRequest("pay", deadline=ctx.start + 2.0)
    await DeadlineLayer(30.0, clock)(ctx, handler_of(answer(200)))
    assert ctx.deadline == ctx.start + 2.0


# ---------------------------------------------------------------- transport

async def test_transport_cuts_the_attempt_timeout_to_the_deadline(clock: VirtualClock) -> None:
    transport = ScriptedTransport([answer(200)])
    layer = TransportLayer(transport, TIMEOUTS, clock, NullObserver(), "pay", "")
    ctx = context(clock, deadline=2.0)
    await layer(ctx)
    sent = transport.requests[0]
    assert sent.timeout == 2.0 and sent.connect_timeout == 1.0
    assert any(k == "traceparent" and ctx.trace.trace_id in v for k, v in sent.headers)
    assert ctx.attempts == 1 and ctx.reached == "yes"


async def test_transport_refuses_after_the_deadline(clock: VirtualClock) -> None:
    transport = ScriptedTransport([answer(200)])
    ctx = context(clock, deadline=1.0)
    clock.advance(1.0)
    with pytest.raises(DeadlineExceeded):
        await TransportLayer(transport, TIMEOUTS, clock, NullObserver(), "pay", "")(ctx)
    assert transport.requests == [] and ctx.attempts == 0 and ctx.reached == "no"


@pytest.mark.parametrize(("kind", "reached"), [
    ("connect", "no"), ("tls", "no"), ("reset", "maybe"), ("timeout", "maybe"),
    ("protocol", "maybe"), ("too_large", "yes")])
async def test_transport_records_whether_the_upstream_may_have_the_request(
        clock: VirtualClock, kind: str, reached: str) -> None:
    observer = RecordingObserver()
    ctx = context(clock)
    layer = TransportLayer(ScriptedTransport([failure(kind)], clock, takes=0.25), TIMEOUTS,
                           clock, observer, "pay", "")
    with pytest.raises(TransportError):
        await layer(ctx)
    assert (ctx.attempts, ctx.reached, ctx.attempt_duration) == (1, reached, 0.25)
    assert observer.of("attempt") == [("attempt", kind)]


# ---------------------------------------------------------------- retry

async def test_retry_retries_a_listed_status_with_backoff(clock: VirtualClock) -> None:
    observer = RecordingObserver()
    ctx = context(clock)
    run = handler_of(answer(503), answer(503), answer(200))
    response = await retry_layer(clock, observer)(ctx, run)
    assert response.status == 200 and ctx.attempts == 3
    assert clock.sleeps == [0.1, 0.2]
    assert observer.of("retried") == [("retried", "status_503")] * 2


async def test_retry_honours_retry_after(clock: VirtualClock) -> None:
    ctx = context(clock)
    await retry_layer(clock)(ctx, handler_of(answer(429, ("Retry-After", "7")), answer(200)))
    assert clock.sleeps == [7.0]


async def test_retry_never_repeats_a_post_without_a_key(clock: VirtualClock) -> None:
    ctx = context(clock, method="POST")
    assert (await retry_layer(clock)(ctx, handler_of(answer(503), answer(200)))).status == 503
    ctx = context(clock, method="POST", key="k1")
    assert (await retry_layer(clock)(ctx, handler_of(answer(503), answer(200)))).status == 200


async def test_retry_stops_at_max_attempts_with_the_last_outcome(clock: VirtualClock) -> None:
    ctx = context(clock)
    with pytest.raises(TransportError) as caught:
        await retry_layer(clock, max_attempts=2)(ctx, handler_of(failure("reset")))
    assert caught.value.kind.value == "reset" and ctx.attempts == 2


async def test_retry_starts_no_attempt_whose_pause_passes_the_deadline(
        clock: VirtualClock) -> None:
    ctx = context(clock, deadline=5.0)
    response = await retry_layer(clock)(ctx, handler_of(answer(503, ("Retry-After", "6")),
                                                        answer(200)))
    assert response.status == 503 and ctx.attempts == 1 and clock.sleeps == []


async def test_retry_budget_exhausted_stops_retrying(clock: VirtualClock) -> None:
    observer = RecordingObserver()
    budget = RetryBudget(RetryBudgetPolicy(ratio=0.0, min_retries_per_second=0.1,
                                           window=10.0), clock)
    layer = retry_layer(clock, observer, budget)
    first = context(clock)
    assert (await layer(first, handler_of(answer(503), answer(200)))).status == 200
    second = context(clock)
    assert (await layer(second, handler_of(answer(503), answer(200)))).status == 503
    assert observer.of("budget_exhausted") == [("budget_exhausted",)]


async def test_a_refused_retry_after_an_answer_returns_that_answer(clock: VirtualClock) -> None:
    ctx = context(clock)
    calls: list[CallContext] = []
    first = handler_of(answer(503), calls=calls)

    async def then_open(c: CallContext) -> UpstreamResponse:
        if calls:
            raise BreakerOpenError("open", metadata={})
        return await first(c)

    response = await retry_layer(clock)(ctx, then_open)
    assert response.status == 503 and ctx.attempts == 1


async def test_a_refused_retry_after_a_reset_is_the_reset_not_circuit_open(
        clock: VirtualClock) -> None:
    ctx = context(clock)
    sent: list[CallContext] = []
    reset = handler_of(failure("reset"), calls=sent)

    async def then_open(c: CallContext) -> UpstreamResponse:
        if sent:
            raise BreakerOpenError("open", metadata={})
        return await reset(c)

    with pytest.raises(Exception) as caught:
        await retry_layer(clock)(ctx, then_open)
    error = caught.value
    assert getattr(error, "reason", "") == "UPSTREAM_UNREACHABLE"
    assert error.metadata["retry_stopped_by"] == "CIRCUIT_OPEN"  # type: ignore[attr-defined]
    assert ctx.reached == "maybe"


async def test_a_refused_first_attempt_propagates(clock: VirtualClock) -> None:
    with pytest.raises(BreakerOpenError):
        await retry_layer(clock)(context(clock), raising(BreakerOpenError("open", metadata={})))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(outcomes=st.lists(st.sampled_from(
           [200, 400, 429, 500, 503, "connect", "reset", "timeout", "tls"]),
           min_size=1, max_size=6),
       method=st.sampled_from(["GET", "POST", "PUT"]), key=st.booleans(),
       max_attempts=st.integers(1, 5), deadline=st.floats(0.05, 3.0))
def test_retry_properties(outcomes: list[int | str], method: str, key: bool,
                          max_attempts: int, deadline: float) -> None:
    """Whatever the upstream does: at most max_attempts, no sleep past the deadline, a
    POST without a key exactly once, and the answer is the last attempt's outcome."""
    clock = VirtualClock()
    script = [answer(o) if isinstance(o, int) else failure(o) for o in outcomes]
    ctx = context(clock, method=method, key="k" if key else "", deadline=deadline)
    seen: list[CallContext] = []
    layer = retry_layer(clock, max_attempts=max_attempts)

    async def run() -> UpstreamResponse | BaseException:
        try:
            return await layer(ctx, handler_of(*script, calls=seen))
        except TransportError as exc:
            return exc

    result = asyncio.run(run())
    assert 1 <= ctx.attempts <= max_attempts
    if method == "POST" and not key:
        assert ctx.attempts == 1
    assert clock.monotonic() - ctx.start < deadline
    last = script[min(ctx.attempts, len(script)) - 1]
    assert result is last


# ---------------------------------------------------------------- rate limit

async def test_rate_limit_waits_then_refuses(clock: VirtualClock) -> None:
    observer = RecordingObserver()
    bucket = TokenBucket(RateLimitPolicy(rate=1.0, burst=1), clock)
    layer = RateLimitLayer(bucket, clock, observer, "pay", "")
    await layer(context(clock), handler_of(answer(200)))
    assert (await layer(context(clock), handler_of(answer(200)))).status == 200
    assert clock.sleeps == [1.0]  # waited for the next token
    with pytest.raises(RateLimitedError):
        await layer(context(clock, deadline=0.5), handler_of(answer(200)))
    assert observer.of("rate_limited") == [("rate_limited", "waited"),
                                            ("rate_limited", "rejected")]


async def test_a_429_with_retry_after_pauses_the_bucket(clock: VirtualClock) -> None:
    bucket = TokenBucket(RateLimitPolicy(rate=100.0, burst=10), clock)
    layer = RateLimitLayer(bucket, clock, NullObserver(), "pay", "")
    await layer(context(clock), handler_of(answer(429, ("Retry-After", "5"))))
    assert bucket.paused_until == pytest.approx(clock.monotonic() + 5.0)


# ---------------------------------------------------------------- breaker

async def test_breaker_counts_failures_and_opens(clock: VirtualClock) -> None:
    breaker = CircuitBreaker(BreakerPolicy(consecutive_failures=2), clock, name="pay")
    layer = BreakerLayer(breaker, frozenset({503}))
    await layer(context(clock), handler_of(answer(503)))
    with pytest.raises(TransportError):
        await layer(context(clock), handler_of(failure("reset")))
    next_called: list[CallContext] = []
    with pytest.raises(BreakerOpenError):
        await layer(context(clock), handler_of(answer(200), calls=next_called))
    assert next_called == []


async def test_breaker_gives_no_verdict_for_an_exchange_that_never_happened(
        clock: VirtualClock) -> None:
    breaker = CircuitBreaker(BreakerPolicy(consecutive_failures=1), clock, name="pay")
    layer = BreakerLayer(breaker, frozenset({503}))
    with pytest.raises(BulkheadFullError):
        await layer(context(clock), raising(BulkheadFullError("full", metadata={})))
    assert (await layer(context(clock), handler_of(answer(200)))).status == 200


# ---------------------------------------------------------------- bulkhead

async def test_bulkhead_refuses_when_full_and_frees_its_slot(clock: VirtualClock) -> None:
    bulkhead = Bulkhead(1, clock, name="pay")
    layer = BulkheadLayer(bulkhead, 0.0, clock)
    gate = asyncio.Event()

    async def slow(ctx: CallContext) -> UpstreamResponse:
        await gate.wait()
        return answer(200)

    first = asyncio.ensure_future(layer(context(clock), slow))
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFullError):
        await layer(context(clock), handler_of(answer(200)))
    gate.set()
    await first
    assert bulkhead.in_use == 0


# ---------------------------------------------------------------- credentials

class Tokens:
    def __init__(self, *, fail_after: int = 99) -> None:
        self.issued = 0
        self.fail_after = fail_after
        self.invalidated: list[str] = []

    async def authorization(self, deadline: float, span: object = None) -> str:
        if self.issued >= self.fail_after:
            raise UpstreamAuthFailed("token endpoint refused", metadata={"cause": "denied"})
        self.issued += 1
        return f"Bearer t{self.issued}"

    def invalidate(self, value: str) -> bool:
        self.invalidated.append(value)
        return True

    async def close(self) -> None:
        pass


async def test_credentials_are_added_and_a_401_fetches_one_new_token(
        clock: VirtualClock) -> None:
    tokens = Tokens()
    layer = CredentialsLayer(tokens, "Authorization", "pay", "")
    seen: list[tuple[tuple[str, str], ...]] = []
    inner = handler_of(answer(401), answer(401), answer(200))

    async def record(ctx: CallContext) -> UpstreamResponse:
        seen.append(ctx.attempt_headers)
        return await inner(ctx)

    ctx = context(clock)
    assert (await layer(ctx, record)).status == 401  # once per call, no loop
    assert seen == [(("Authorization", "Bearer t1"),), (("Authorization", "Bearer t2"),)]
    assert tokens.invalidated == ["Bearer t1"] and ctx.attempts == 2


async def test_a_failed_refetch_leaves_the_upstreams_401(clock: VirtualClock) -> None:
    layer = CredentialsLayer(Tokens(fail_after=1), "Authorization", "pay", "")
    ctx = context(clock)
    assert (await layer(ctx, handler_of(answer(401), answer(200)))).status == 401
    assert ctx.attempts == 1


# ---------------------------------------------------------------- idempotency

def idem(clock: VirtualClock, store: MemoryIdempotency,
         observer: RecordingObserver | None = None) -> IdempotencyLayer:
    return IdempotencyLayer(store, clock, observer or RecordingObserver(), "pay",
                            total_timeout=30.0, retention=3600.0)


async def test_idempotency_replays_a_completed_key_without_sending(clock: VirtualClock) -> None:
    store, observer = MemoryIdempotency(), RecordingObserver()
    layer = idem(clock, store, observer)
    first = context(clock, method="POST", key="k1", body=b"{}")
    first.url = "https://pay.example/v1/charges"
    assert (await layer(first, handler_of(answer(201, body=b"done")))).status == 201
    again = context(clock, method="POST", key="k1", body=b"{}")
    again.url = first.url
    sent: list[CallContext] = []
    response = await layer(again, handler_of(answer(500), calls=sent))
    assert (response.status, response.body, again.served) == (201, b"done", "replayed")
    assert sent == [] and observer.of("replay") == [("replay",)]


async def test_idempotency_refuses_reuse_and_in_flight(clock: VirtualClock) -> None:
    store = MemoryIdempotency()
    layer = idem(clock, store)
    gate = asyncio.Event()

    async def slow(ctx: CallContext) -> UpstreamResponse:
        await gate.wait()
        return answer(200)

    a = context(clock, method="POST", key="k1", body=b"a")
    a.url = "https://pay.example/x"
    running = asyncio.ensure_future(layer(a, slow))
    await asyncio.sleep(0)
    same = context(clock, method="POST", key="k1", body=b"a")
    same.url = a.url
    with pytest.raises(Aborted):
        await layer(same, handler_of(answer(200)))
    other = context(clock, method="POST", key="k1", body=b"b")
    other.url = a.url
    with pytest.raises(FailedPrecondition):
        await layer(other, handler_of(answer(200)))
    gate.set()
    await running


@pytest.mark.parametrize("outcome", [answer(503), failure("reset")])
async def test_idempotency_releases_a_key_the_upstream_may_not_have_acted_on(
        clock: VirtualClock, outcome: UpstreamResponse | TransportError) -> None:
    store = MemoryIdempotency()
    with pytest.raises(TransportError) if isinstance(outcome, TransportError) else _nothing():
        await idem(clock, store)(context(clock, method="POST", key="k9"), handler_of(outcome))
    assert store.released == ["k9"] and store.records == {}


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# ---------------------------------------------------------------- fallback, deprecation

async def test_fallback_serves_the_last_good_get_while_the_breaker_is_open(
        clock: VirtualClock) -> None:
    layer = FallbackLayer(LastGoodCache(10, 60.0), clock)
    ctx = context(clock)
    await layer(ctx, handler_of(answer(200, body=b"fresh")))
    again = context(clock)
    again.url = ctx.url
    response = await layer(again, raising(BreakerOpenError("open", metadata={})))
    assert (response.body, again.served) == (b"fresh", "stale")
    clock.advance(61.0)
    late = context(clock)
    late.url = ctx.url
    with pytest.raises(BreakerOpenError):
        await layer(late, raising(BreakerOpenError("open", metadata={})))


async def test_deprecation_is_parsed_and_logged_once(clock: VirtualClock,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    layer = DeprecationLayer(NullObserver(), "pay", "", set())
    headers = (("Deprecation", "@1700000000"), ("Sunset", "Wed, 11 Nov 2026 11:11:11 GMT"))
    for _ in range(3):
        ctx = context(clock)
        await layer(ctx, handler_of(answer(200, *headers)))
        assert ctx.deprecation is not None and ctx.deprecation.deprecated
        assert ctx.deprecation.sunset_at is not None
    assert [r.message for r in caplog.records].count("upstream announced deprecation") == 1


# ---------------------------------------------------------------- the stacks built

def _spec(**overrides: object) -> IntegrationSpec:
    fields: dict[str, object] = dict(
        name="pay", base_url="https://pay.example", timeouts=TIMEOUTS, retry=retry_policy(),
        breaker=BreakerSettings(True, BreakerPolicy(), frozenset({503})),
        fallback=FallbackPolicy(False, 60.0, 10), api_version=ApiVersion("", "header", "V"))
    fields.update(overrides)
    return IntegrationSpec(**fields)  # type: ignore[arg-type]


def _builder(clock: VirtualClock) -> StackBuilder:
    return StackBuilder(MemoryIdempotency(), clock, NullObserver(), lambda: 0.5,
                        lambda name, policy: TokenBucket(policy, clock),
                        lambda spec: Tokens())


def test_every_layer_in_the_documented_order(clock: VirtualClock) -> None:
    spec = _spec(rate_limit=RateLimitPolicy(rate=10.0, burst=10), fetched_auth=True,
                 auth_header="Authorization", fallback=FallbackPolicy(True, 60.0, 10),
                 signing_secrets=("whsec_" + "a2V5LWJ5dGVzLWZvci1zaWduaW5n",))
    built = _builder(clock).integration(spec, ScriptedTransport([answer(200)]))
    assert built.default.layers == (
        "DeadlineLayer", "IdempotencyLayer", "FallbackLayer", "DeprecationLayer", "RetryLayer",
        "RateLimitLayer", "BreakerLayer", "CredentialsLayer", "BulkheadLayer", "SigningLayer",
        "TransportLayer")


def test_what_is_not_configured_is_not_in_the_stack(clock: VirtualClock) -> None:
    spec = _spec(breaker=BreakerSettings(False, BreakerPolicy(), frozenset()))
    built = _builder(clock).integration(spec, ScriptedTransport([answer(200)]))
    assert built.default.layers == ("DeadlineLayer", "IdempotencyLayer", "DeprecationLayer",
                                    "RetryLayer", "BulkheadLayer", "TransportLayer")
    assert built.default.breaker is None


def test_routes_share_what_they_do_not_override(clock: VirtualClock) -> None:
    own = RouteSpec("refunds", "POST", "/v1/refunds",
                    breaker=BreakerSettings(True, BreakerPolicy(), frozenset({500})))
    free = RouteSpec("health", "GET", "/health", unlimited=True)
    plain = RouteSpec("charges", "*", "/v1/charges/**")
    spec = _spec(rate_limit=RateLimitPolicy(rate=10.0, burst=10), routes=(own, free, plain))
    built = _builder(clock).integration(spec, ScriptedTransport([answer(200)]))
    routes = {r.name: r for _, r in built.routes}
    assert routes["charges"].breaker is built.default.breaker
    assert routes["refunds"].breaker is not built.default.breaker
    assert "RateLimitLayer" not in routes["health"].layers
    assert "RateLimitLayer" in routes["charges"].layers
    assert built.match("POST", "/v1/refunds") is routes["refunds"]
    assert built.match("GET", "/v1/charges/ch_1/capture") is routes["charges"]
    assert built.match("GET", "/v1/other") is built.default
    assert {b.name for b in built.breakers()} == {"pay", "pay/refunds"}


# ---------------------------------------------------------------- one queued attempt

def _pipeline(clock: VirtualClock, transport: ScriptedTransport, **overrides: object
              ) -> CallPipeline:
    return CallPipeline({"pay": _spec(**overrides)}, MemoryIdempotency(),
                        lambda spec: transport, clock, rand=lambda: 0.5)


async def test_a_queued_attempt_is_one_attempt(clock: VirtualClock) -> None:
    transport = ScriptedTransport([answer(503)])
    pipeline = _pipeline(clock, transport)
    assert (await pipeline.attempt(CallRequest("pay", path="/x"))).attempts == 1
    assert (await pipeline.call(CallRequest("pay", path="/x"))).attempts == 3


async def test_a_queued_attempt_waits_out_the_rate_limit(clock: VirtualClock) -> None:
    transport = ScriptedTransport([answer(200)])
    pipeline = _pipeline(clock, transport, rate_limit=RateLimitPolicy(rate=0.5, burst=1),
                         timeouts=Timeouts(connect=0.5, attempt=0.5, total=0.5))
    await pipeline.attempt(CallRequest("pay"))
    with pytest.raises(RateLimitedError):
        await pipeline.call(CallRequest("pay"))  # would wait 2 s, over the 0.5 s total
    assert (await pipeline.attempt(CallRequest("pay"))).status == 200
    assert clock.sleeps == [2.0] and len(transport.requests) == 2


async def test_check_refuses_what_call_would(clock: VirtualClock) -> None:
    pipeline = _pipeline(clock, ScriptedTransport([answer(200)]))
    with pytest.raises(NotFound):
        pipeline.check(CallRequest("nope"))
    with pytest.raises(InvalidArgument) as caught:
        pipeline.check(CallRequest("pay", path="https://elsewhere.example/x"))
    assert caught.value.metadata["upstream_reached"] == "no"
    pipeline.check(CallRequest("pay", method="post", path="/v1/charges"))
