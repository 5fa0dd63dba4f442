"""The demo's six phases: each submits work, injects its fault, waits, and audits what happened.

1. payments with double-clicks, re-sent messages and SIGKILLed workers (idempotency keys);
2. a singleton job triggered many times at once, its writes fenced, and the optional tier's
   bulkhead (locks, fencing tokens, bulkheads);
3. a dependency outage behind a shared circuit breaker;
4. one global rate limit over two task types on two workers;
5. tasks that keep failing, dead-lettered after their retries, then replayed;
6. the transactional outbox: committed orders publish, a rolled-back one never does.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from celery_reliable import CircuitBreaker, DeadLetterStore, StaleFencingToken, fenced_upsert
from celery_reliable.outbox import enqueue
from celery_reliable.outbox.admin import outbox_status

from .measure import Metrics, hash_counts, most_at_once, most_in_any_window, spans
from .procs import children
from .report import PhaseAudit, count_effects
from .workload import workload

if TYPE_CHECKING:
    from .run import Demo

#: The day whose report phase 2 rebuilds.
DAY = "2026-11-23"


def payments(demo: Demo) -> PhaseAudit:
    """Phase 1: every order 2-3 times, some re-sent with the same task id; SIGKILLs while it runs."""
    app = demo.app
    task = app.charge_unprotected if demo.args.unprotected else app.charge
    title = "payments (plain Celery task)" if demo.args.unprotected else "payments (idempotency keys)"
    audit = PhaseAudit(1, title, {task.name})
    demo.phase(audit, f"charge {demo.args.orders} orders, duplicated, while workers are SIGKILLed")
    rng = random.Random(demo.args.seed)
    messages, expected = workload(demo.run_id, demo.args.orders, rng)
    for msg in messages:
        task.apply_async(kwargs={"order_id": msg.order_id, "amount_cents": msg.amount_cents}, task_id=msg.task_id)
    kinds = Counter(m.kind for m in messages)
    demo.say(
        f"published {len(messages)} {task.name} messages for {len(expected)} orders "
        f"({kinds['double-click']} double-clicks, {kinds['re-sent']} re-sent with the same task id)"
    )
    results = {m.task_id: task.AsyncResult(m.task_id) for m in messages}
    demo.task_ids = set(results)
    kills = [
        (0.15, lambda n: kill_child(demo, audit, "critical-1", n)),
        (0.35, lambda n: kill_worker(demo, audit, "critical-2", "critical-3", n)),
        (0.6, lambda n: kill_child(demo, audit, "critical-1", n)),
    ]
    rows = select(func.count()).where(app.payments.c.run_id == demo.run_id)
    deadline = time.monotonic() + demo.args.timeout
    quiet, next_status = 0, time.monotonic() + 15
    while time.monotonic() < deadline:
        with demo.engine.connect() as conn:
            charged = conn.execute(rows).scalar() or 0
        while kills and charged >= kills[0][0] * demo.args.orders:
            kills.pop(0)[1](charged)
        if charged >= demo.args.orders and not kills:
            results = {tid: r for tid, r in results.items() if not r.ready()}
            quiet = quiet + 1 if not results and not any(demo.backlog().values()) else 0
            if quiet >= 3:
                break
        if time.monotonic() > next_status:
            next_status += 10
            demo.say(f"waiting: {charged}/{demo.args.orders} charged, backlog {demo.backlog()}")
        time.sleep(0.2)
    pending = {tid: r for tid, r in results.items() if not r.ready()}
    if demo.args.failpoint:
        tids = [m.task_id for m in messages]
        fired = sum(int(demo.ledger().exists(f"failpoint:{demo.args.failpoint}:{tid}")) for tid in tids)
        demo.failpoint_fired = fired
        if fired:
            demo.fault(
                audit,
                f"worker critical-3's pool processes SIGKILLed themselves {fired} times at failpoint "
                f"{demo.args.failpoint} (effect committed, result not stored, message not acked)",
            )
    deferred = demo.deferred(audit)
    answered = Metrics.by_reason(demo.metrics.totals(), "reliable_deduplicated_total", audit.tasks)
    if deferred["key-in-progress"] or answered:
        demo.fault(
            audit,
            f"duplicates caught by the guards: {sum(answered.values())} answered with the stored result, "
            f"{deferred['key-in-progress']} parked while their key ran elsewhere (worker counters)",
        )
    effects, duplicated, lost, unknown, cents = count_effects(demo.engine, app.payments, demo.run_id, expected)
    done = [task.AsyncResult(m.task_id) for m in {m.task_id: m for m in messages}.values() if m.task_id not in pending]
    failed = [r for r in done if r.state != "SUCCESS"]
    answered_none = sum(1 for r in done if r.state == "SUCCESS" and r.result is None)
    audit.submitted = len(messages)
    audit.effects = effects
    audit.suppressed = max(0, len(messages) - effects)
    audit.lost = lost
    audit.double = duplicated + unknown
    deliveries = demo.count("deliveries", task.name)
    audit.retried = demo.count("retried", task.name)
    audit.check(
        f"every order charged once: {effects} payment rows for {len(expected)} orders, {duplicated} twice, "
        f"{lost} missing; {cents / 100:,.2f} charged of {sum(expected.values()) / 100:,.2f}",
        effects == len(expected) and duplicated == 0 and lost == 0 and unknown == 0 and cents == sum(expected.values()),
    )
    audit.check(
        f"{len(messages)} messages, {deliveries} deliveries to workers, "
        f"{demo.count('bodies', task.name)} bodies started: every task result SUCCESS "
        f"({len(failed)} failed, {len(pending)} unfinished)",
        not failed and not pending,
    )
    if answered_none:
        demo.notes.append(
            f"{answered_none} duplicate(s) of payments returned None: the process that committed the "
            "payment was killed before storing its return value (the payment is there, once)"
        )
    return audit


def kill_child(demo: Demo, audit: PhaseAudit, worker: str, charged: int) -> None:
    """SIGKILL one pool process of ``worker`` (its parent forks a new one)."""
    pool = children(demo.procs.started[worker].pid)
    if not pool:
        return
    pid = random.choice(pool)
    os.kill(pid, signal.SIGKILL)
    demo.fault(audit, f"SIGKILL pool process {pid} of worker {worker} at {charged}/{demo.args.orders} charged")


def kill_worker(demo: Demo, audit: PhaseAudit, worker: str, replacement: str, charged: int) -> None:
    """SIGKILL a whole worker (parent and pool) and start a replacement on the same queue."""
    demo.metrics.scrape(worker)  # keep its counters: they die with it
    demo.procs.kill_group(worker)
    demo.dead.add(worker)
    demo.fault(
        audit,
        f"SIGKILL worker {worker} (parent and pool) at {charged}/{demo.args.orders} charged; "
        "its unacked messages come back after the visibility timeout",
    )
    env = {}
    if demo.args.failpoint:
        env = {
            "CELERY_RELIABLE_FAILPOINTS": demo.args.failpoint,
            "CELERY_RELIABLE_FAILPOINTS_URL": demo.env["DEMO_LEDGER"],
        }
    demo.start_worker(replacement, "critical", env, wait=False)
    demo.say(
        f"started replacement worker {replacement}"
        + (f" (crashes at failpoint {demo.args.failpoint} once per task)" if demo.args.failpoint else "")
    )


def singleton_and_bulkhead(demo: Demo) -> PhaseAudit:
    """Phase 2: one report build at a time with fenced writes; the optional tier one body at a time."""
    app = demo.app
    audit = PhaseAudit(2, "singleton lock + bulkhead", {app.rebuild_report.name, app.warm_cache.name})
    n_reports, n_warm = demo.args.reports, demo.args.reports
    demo.phase(
        audit,
        f"rebuild_report({DAY!r}) triggered {n_reports} times at once (lock_key report:{{day}}), "
        f"and {n_warm} warm_cache in the optional tier (bulkhead of {app.BULKHEADS['optional']})",
    )
    with ThreadPoolExecutor(max_workers=8) as pool:  # many callers at the same moment
        reports = list(pool.map(lambda _: app.rebuild_report.delay(DAY), range(n_reports)))
        warms = list(pool.map(app.warm_cache.delay, range(n_warm)))
    states = demo.wait_results(reports + warms, 60, "phase 2")
    built = spans(demo.ledger(), app.ledger_key("spans:rebuild_report"))
    warmed = spans(demo.ledger(), app.ledger_key("spans:warm_cache"))
    tokens = [int(s.detail) for s in built]
    overlap, warm_overlap = most_at_once(built), most_at_once(warmed)
    with demo.engine.connect() as conn:
        row = conn.execute(
            select(app.reports.c.builds, app.reports.c.fence_token).where(
                app.reports.c.run_id == demo.run_id, app.reports.c.day == DAY
            )
        ).one_or_none()
    builds, stored_token = (int(row[0]), int(row[1])) if row else (0, 0)
    deferred = demo.deferred(audit)
    if deferred["locked"]:
        demo.fault(
            audit,
            f"{deferred['locked']} deliveries of rebuild_report found the lock held and were parked "
            f"(fencing tokens {tokens[0] if tokens else '-'} .. {tokens[-1] if tokens else '-'})",
        )
    if deferred["bulkhead-full"]:
        demo.fault(
            audit,
            f"{deferred['bulkhead-full']} deliveries of warm_cache found the optional bulkhead full and were parked",
        )
    refused = stale_write(demo, tokens[0] if tokens else 0)
    if refused:
        demo.fault(
            audit,
            f"a late write carrying the first holder's token {tokens[0]} (a paused holder waking up) "
            f"was refused: {refused}",
        )
    audit.submitted = n_reports + n_warm
    audit.effects = builds + len(warmed)
    audit.lost = max(0, n_reports - builds) + max(0, n_warm - len(warmed))
    audit.double = max(0, builds - n_reports) + max(0, len(warmed) - n_warm)
    audit.retried = demo.count("retried", *audit.tasks)
    audit.check(
        f"report bodies never overlapped: {len(built)} builds, at most {overlap} at once; fencing tokens "
        f"strictly increasing; stored token {stored_token} is the newest",
        len(built) == n_reports
        and overlap == 1
        and tokens == sorted(set(tokens))
        and stored_token == max(tokens, default=-1)
        and builds == n_reports,
    )
    audit.check(
        f"optional tier held to {app.BULKHEADS['optional']} body at once: at most {warm_overlap} of "
        f"{len(warmed)} warm_cache bodies ran together",
        warm_overlap <= app.BULKHEADS["optional"],
    )
    audit.check("the stale-token write was refused by the fenced table", bool(refused))
    audit.check(f"every task succeeded ({dict(states)})", states == Counter({"SUCCESS": n_reports + n_warm}))
    return audit


def stale_write(demo: Demo, token: int) -> str:
    """Write the report with ``token`` as a paused holder would; the refusal's message, or '' if it landed."""
    app = demo.app
    try:
        with demo.engine.begin() as conn:
            fenced_upsert(
                conn,
                app.reports,
                {"run_id": demo.run_id, "day": DAY},
                {"builds": -1, "built_by": "stale holder"},
                token,
                resource=f"report {DAY}",
            )
    except StaleFencingToken as exc:
        return f"token {exc.token} < {exc.current}"
    return ""


def outage(demo: Demo) -> PhaseAudit:
    """Phase 3: the FX API goes down; its breaker opens; tasks wait parked, then all succeed."""
    app = demo.app
    audit = PhaseAudit(3, "dependency outage (breaker)", {app.fetch_rate.name})
    n = demo.args.rates
    led = demo.ledger()
    led.set(app.ledger_key("fx:up"), "0")
    demo.phase(
        audit,
        f"fx-api switched OFF; {n} fetch_rate tasks behind circuit breaker {app.BREAKER!r} ({app.BREAKER_OPTIONS})",
    )
    results = [app.fetch_rate.delay(i) for i in range(n)]
    breaker = CircuitBreaker(app.BREAKER, demo.reliable_redis(), prefix=app.PREFIX, **app.BREAKER_OPTIONS)
    seen_open = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not seen_open:
        seen_open = breaker.state().state.value == "open"
        time.sleep(0.1)
    if seen_open:
        fx = hash_counts(led, app.ledger_key("fx"))
        demo.fault(audit, f"breaker {app.BREAKER} OPEN after {fx.get('failed', 0)} failed calls to fx-api")
    time.sleep(app.BREAKER_OPTIONS["recovery_timeout"] + 1.5)  # stay down past a probe
    parked = demo.parked_reasons().get("circuit-open", 0)
    failed_so_far = sum(1 for r in results if r.state == "FAILURE")
    demo.say(
        f"fx-api still down: breaker {breaker.state().state.value}, {parked} fetch_rate tasks parked "
        f"(circuit-open), {failed_so_far} failed"
    )
    led.set(app.ledger_key("fx:up"), "1")
    demo.say("fx-api switched back ON")
    states = demo.wait_results(results, 60, "phase 3")
    final = breaker.state()
    fx = hash_counts(led, app.ledger_key("fx"))
    deferred = demo.deferred(audit)
    if deferred["circuit-open"]:
        demo.fault(
            audit,
            f"{deferred['circuit-open']} deliveries were parked while the breaker was open "
            "(no worker slot, no retry spent)",
        )
    letters = demo.letters(app.fetch_rate.name)
    audit.submitted = n
    audit.effects = states["SUCCESS"]
    audit.dead_lettered = sum(letters.values())
    audit.retried = demo.count("retried", app.fetch_rate.name)
    audit.lost = n - states["SUCCESS"] - audit.dead_lettered
    audit.check(
        f"breaker opened during the outage and closed after it (now {final.state.value}); fx-api saw "
        f"{fx.get('failed', 0)} failed calls while down",
        seen_open and final.state.value == "closed",
    )
    audit.check(
        f"tasks deferred, not failed: {states['SUCCESS']}/{n} succeeded, {audit.dead_lettered} dead-lettered",
        states == Counter({"SUCCESS": n}) and not letters,
    )
    return audit


def rate_limit(demo: Demo) -> PhaseAudit:
    """Phase 4: two task types on two workers share one ``10/s`` meter; measure what they did."""
    app = demo.app
    audit = PhaseAudit(4, "global rate limit", {app.push_to_partner.name, app.refresh_from_partner.name})
    n = demo.args.partner_calls
    demo.phase(
        audit,
        f"{n} partner-api calls at once: push_to_partner (critical worker) and refresh_from_partner "
        f"(standard worker), one global_rate_limit '{app.PARTNER_LIMIT}/s' (rate_limit_key partner-api)",
    )
    started = time.monotonic()
    results = [(app.push_to_partner if i % 2 else app.refresh_from_partner).delay(i) for i in range(n)]
    states = demo.wait_results(results, 30 + n / app.PARTNER_LIMIT * 2, "phase 4")
    calls = spans(demo.ledger(), app.ledger_key("spans:partner"))
    starts = [s.start for s in calls]
    admitted = [int(s.detail.split()[1]) for s in calls if len(s.detail.split()) > 1 and s.detail.split()[1] != "0"]
    by_type = Counter(s.detail.split()[0] for s in calls)
    busiest = most_in_any_window(admitted, 1_000_000)
    busiest_start = most_in_any_window(starts, 1_000_000)
    span_s = (max(starts) - min(starts)) / 1e6 if len(starts) > 1 else 0.0
    rate = (len(starts) - 1) / span_s if span_s else float("inf")
    deferred = demo.deferred(audit)
    if deferred["rate-limited"]:
        demo.fault(
            audit,
            f"{deferred['rate-limited']} deliveries were over the limit and parked until their "
            f"instant on the meter (measured {rate:.1f} calls/s over {span_s:.1f} s)",
        )
    demo.say(
        f"partner-api calls: {len(calls)} ({by_type['push']} push on critical, {by_type['refresh']} refresh on "
        f"standard) in {span_s:.1f} s = {rate:.1f}/s; busiest second: {busiest} admissions, "
        f"{busiest_start} body starts; phase took {time.monotonic() - started:.1f} s"
    )
    audit.submitted = n
    audit.effects = len(calls)
    audit.retried = demo.count("retried", *audit.tasks)
    audit.lost = max(0, n - len(calls))
    audit.double = max(0, len(calls) - n)
    audit.check(
        f"at most {app.PARTNER_LIMIT} admissions in any second over both workers (busiest {busiest}; "
        f"measured {rate:.1f}/s)",
        busiest <= app.PARTNER_LIMIT and len(admitted) == len(calls),
    )
    audit.check(
        f"both workers called it ({by_type['push']} + {by_type['refresh']}); every task succeeded, "
        f"no retry spent by waiting ({audit.retried} retries)",
        by_type["push"] > 0 and by_type["refresh"] > 0 and states == Counter({"SUCCESS": n}) and audit.retried == 0,
    )
    return audit


def dead_letters(demo: Demo) -> PhaseAudit:
    """Phase 5: statements that time out every time, and corrupt ones; dead letters; replay after a fix."""
    app = demo.app
    name = app.import_statement.name
    audit = PhaseAudit(5, "dead letters + replay", {name})
    flaky, corrupt = demo.args.failing, max(1, demo.args.failing // 2)
    demo.ledger().set(app.ledger_key("bank:up"), "0")
    demo.phase(
        audit,
        f"{flaky} import_statement tasks whose bank always times out (RetryPolicy max_attempts="
        f"{app.STATEMENT_ATTEMPTS}) and {corrupt} with a corrupt file (ValueError: permanent)",
    )
    results = [app.import_statement.delay(i, "flaky") for i in range(flaky)] + [
        app.import_statement.delay(flaky + i, "corrupt") for i in range(corrupt)
    ]
    states = demo.wait_results(results, 60, "phase 5")
    letters = demo.letters(name)
    attempts = hash_counts(demo.ledger(), app.ledger_key("attempts:import_statement"))
    flaky_ids = {r.id for r in results[:flaky]}
    if letters:
        by_reason = ", ".join(f"{r} {k}" for r, k in sorted(letters.items()))
        demo.fault(
            audit,
            f"{sum(letters.values())} tasks dead-lettered ({by_reason}); "
            f"attempts per exhausted task: {sorted({attempts.get(t, 0) for t in flaky_ids})}",
        )
    demo.ledger().set(app.ledger_key("bank:up"), "1")
    store = DeadLetterStore(demo.engine)
    exhausted = [letter.id for letter in demo.letter_rows(name) if letter.reason == "exhausted" and letter.id]
    replayed = [r for letter_id in exhausted for r in store.replay(app.app, id=letter_id)]
    again = [r for letter_id in exhausted for r in store.replay(app.app, id=letter_id)]
    replay_ids = [r.task_id for r in replayed if r.published and r.task_id]
    demo.say(
        f"bank fixed; replayed {len(replay_ids)} exhausted letters (a second replay published "
        f"{sum(r.published for r in again)})"
    )
    replay_states = demo.wait_results([app.import_statement.AsyncResult(t) for t in replay_ids], 30, "the replays")
    audit.submitted = flaky + corrupt
    audit.dead_lettered = sum(letters.values())
    audit.effects = replay_states["SUCCESS"]
    audit.retried = demo.count("retried", name)
    # Lost: a statement with neither a letter nor an import.
    audit.lost = max(0, flaky - replay_states["SUCCESS"]) + max(0, corrupt - letters.get("permanent", 0))
    audit.check(
        f"exhausted after exactly {app.STATEMENT_ATTEMPTS} attempts, permanent at once: "
        f"letters {dict(sorted(letters.items()))}, task states {dict(states)}",
        letters == Counter({"exhausted": flaky, "permanent": corrupt})
        and all(attempts.get(t) == app.STATEMENT_ATTEMPTS for t in flaky_ids)
        and states == Counter({"FAILURE": flaky + corrupt}),
    )
    audit.check(
        f"replay published each exhausted letter once ({len(replay_ids)}; again: "
        f"{sum(r.published for r in again)}) and all {replay_states['SUCCESS']} imported",
        len(replay_ids) == flaky
        and not any(r.published for r in again)
        and replay_states == Counter({"SUCCESS": flaky}),
    )
    return audit


def outbox(demo: Demo) -> PhaseAudit:
    """Phase 6: orders and their receipt messages in one transaction; rolled-back ones never publish."""
    app = demo.app
    audit = PhaseAudit(6, "transactional outbox", {app.send_receipt.name})
    n = demo.args.outbox
    rollback_every = 4
    demo.phase(
        audit,
        f"{n} orders written with enqueue(session, send_receipt.s(order)) in their transaction; "
        f"every {rollback_every}th transaction rolls back; beat's relay publishes",
    )
    committed: list[str] = []
    rolled_back: list[str] = []
    message_ids: dict[str, str] = {}
    for i in range(n):
        order_id = f"{demo.run_id}-receipt-{i:03d}"
        try:
            with Session(demo.engine) as session, session.begin():
                session.execute(insert(app.orders).values(run_id=demo.run_id, order_id=order_id))
                message_ids[order_id] = enqueue(session, app.send_receipt.s(order_id), app=app.app)
                if i % rollback_every == rollback_every - 1:
                    raise _Rollback(order_id)
            committed.append(order_id)
        except _Rollback:
            rolled_back.append(order_id)
    demo.fault(
        audit,
        f"{len(rolled_back)} business transactions rolled back after enqueue (their messages must never be published)",
    )
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and (
        demo.receipts()[0] < len(committed) or outbox_status(demo.engine)["pending"]
    ):
        time.sleep(0.3)
    # At-least-once relay: deliver a few committed messages again, as a relay killed before marking would.
    resent = committed[: max(1, len(committed) // 5)]
    again = [app.send_receipt.apply_async((o,), task_id=message_ids[o]) for o in resent]
    demo.wait_results(again, 30, "the re-sent receipts")
    time.sleep(2.5)  # two more relay runs: nothing rolled back may show up
    inbox = Metrics.by_reason(demo.metrics.totals(demo.live_workers()), "reliable_deduplicated_total", audit.tasks)
    demo.fault(
        audit,
        f"{len(resent)} committed messages delivered a second time with the same id (a relay's "
        f"at-least-once redelivery); {inbox['inbox']} answered by the inbox without a second receipt",
    )
    per_order = demo.receipts()[1]
    status = outbox_status(demo.engine)
    phantom = sum(per_order.get(o, 0) for o in rolled_back)
    twice = sum(k - 1 for o, k in per_order.items() if k > 1)
    missing = sum(1 for o in committed if not per_order.get(o))
    results = [app.send_receipt.AsyncResult(message_ids[o]) for o in committed]
    states = Counter(r.state for r in results)
    audit.submitted = n + len(resent)
    audit.effects = sum(per_order.values())
    audit.suppressed = max(0, len(committed) + len(resent) - audit.effects)
    audit.lost = missing
    audit.double = twice + phantom
    audit.retried = demo.count("retried", app.send_receipt.name)
    audit.check(
        f"one receipt per committed order ({len(committed)} committed, {audit.effects} receipts, "
        f"{twice} twice, {missing} missing; outbox pending {status['pending']}, dead {status['dead']})",
        missing == 0
        and twice == 0
        and status["pending"] == 0
        and status["dead"] == 0
        and states == Counter({"SUCCESS": len(committed)}),
    )
    audit.check(
        f"rolled-back orders never published: {phantom} receipts for {len(rolled_back)} rolled-back orders",
        phantom == 0,
    )
    return audit


class _Rollback(Exception):
    """Raised inside a business transaction to roll it back."""
