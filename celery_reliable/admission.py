"""A task's admission in one Redis round trip: the guards' scripts run as one composite script.

Every guard of a task whose state lives in the app's Redis (a completed-key lookup, the
rate-limit meter, the circuit breaker, the bulkhead slot, the retry budget's deposit, the
singleton lock and the idempotency claim) asks its question with its own Lua script. When
a task has two or more of them, the worker sends them together: one script whose body
calls each guard's script, in the guards' order, on its slice of the keys and arguments,
and stops at the first guard that does not grant (the later guards are not asked, so
nothing is taken that would have to be given back). The replies go back to the guards,
which act on them exactly as on their own call's reply.

A guard that was not answered (the script stopped before it, or the composite call
failed) asks on its own, with its own error policy, as it would without this module. A
grant nobody took (an exception between two guards) is given back when the execution
ends (:meth:`Admission.unused_grants` lists them).

Completion is one round trip too: a guard that took a grant on the app's Redis leaves
its give-back with the admission (:meth:`Admission.hold`); when the body has succeeded,
the claim's completion and every give-back (lock, bulkhead slot, the breaker's success)
go out in one pipeline (:meth:`Admission.finish`), the claim's first. A failure path
gives back one by one, as before.

Guards whose state is elsewhere stay outside: Redlock and PostgreSQL advisory locks,
and breakers or bulkheads built by the user on another Redis client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from .scripts import registered, script_for, script_source

if TYPE_CHECKING:
    from .runtime import Runtime

logger = logging.getLogger("celery_reliable")

#: The guards in admission order, with the Lua condition on a guard's reply ``r`` that
#: ends the admission there (the guard did not grant).
STOPS: dict[str, str] = {
    "done": "r ~= false",  # a completed key answers without a rate-limit slot
    "rate": "r[1] > 0",  # booked for a later instant
    "breaker": "r[1] == 0",  # open, or no probe slot left
    "bulkhead": "r[1] == 0",  # full
    "budget": "false",  # a deposit never refuses
    "lock": "type(r) ~= 'number' or r <= 0",  # busy, or a fencing range must be reserved first
    "claim": "false",  # the last guard
}
ORDER = tuple(STOPS)


@dataclass
class Ask:
    """One guard's question: its script, keys and arguments, and later its reply.

    Attributes:
        guard: one of :data:`ORDER`.
        script: the guard's script, ``lua/<script>.lua``.
        state: what the guard prepared with the question (owner tokens, its lock object),
            used when it acts on the reply.
        answered: whether :attr:`reply` holds the script's reply.
        used: set by the guard once it has acted on the reply (a grant taken).
    """

    guard: str
    script: str
    keys: list[str]
    args: list[Any]
    state: dict[str, Any] = field(default_factory=dict)
    reply: Any = None
    answered: bool = False
    used: bool = False

    def take(self) -> Any:
        """The reply, marking it acted on."""
        self.used = True
        return self.reply


@dataclass
class Release:
    """A grant's give-back, sent with the completion round trip.

    Attributes:
        guard: the guard that holds the grant (``"lock"``, ``"bulkhead"``, ``"breaker"``).
        script: the script that gives it back, ``lua/<script>.lua``.
        request: called when the give-back is sent; ends the hold on this side (stops its
            heartbeat) and returns the script's keys and arguments, or ``None`` when
            nothing needs sending.
        then: acts on the script's reply, or on the exception the call raised.
        sent: set once the give-back went out (or needed nothing).
    """

    guard: str
    script: str
    request: Callable[[], tuple[list[str], list[Any]] | None]
    then: Callable[[Any], None]
    sent: bool = False


@dataclass
class Admission:
    """The guards' questions for one execution, asked together by :meth:`ask`; their give-backs."""

    asks: dict[str, Ask] = field(default_factory=dict)
    epoch_key: str | None = None  # read along with the replies when the claim needs it
    epoch: bool = True
    releases: list[Release] = field(default_factory=list)

    def add(self, ask: Ask | None) -> None:
        """Add a guard's question (``None``: the guard has none, or asks on its own)."""
        if ask is not None:
            self.asks[ask.guard] = ask

    def get(self, guard: str) -> Ask | None:
        """The question a guard prepared, answered or not."""
        return self.asks.get(guard)

    def ask(self, rt: Runtime) -> None:
        """Ask every question in one round trip (two or more questions; one asks on its own).

        A failure is logged and leaves the questions unanswered: each guard then asks on
        its own, with its own error policy.
        """
        asks = [self.asks[g] for g in ORDER if g in self.asks]
        if len(asks) < 2:
            return
        script = composite_for(rt.redis, tuple(a.script for a in asks), tuple(a.guard for a in asks))
        keys: list[Any] = [k for a in asks for k in a.keys]
        args: list[Any] = [n for a in asks for n in (len(a.keys), len(a.args))]
        args += [v for a in asks for v in a.args]
        try:
            replies = self._call(rt, script, keys, args)
        except Exception as exc:  # the guards ask one by one, each with its own policy
            logger.warning("admission script failed (%r); the guards ask one by one", exc)
            return
        for one, reply in zip(asks, replies, strict=False):
            one.reply, one.answered = reply, True

    def _call(self, rt: Runtime, script: Any, keys: list[Any], args: list[Any]) -> list[Any]:
        if self.epoch_key is None:
            return list(script(keys=keys, args=args))
        # EVALSHA queued by hand: a Script object in a pipeline costs a SCRIPT EXISTS round
        # trip first. NOSCRIPT (a restarted Redis) falls back to loading it.
        pipe = rt.redis.pipeline(transaction=False)
        pipe.evalsha(script.sha, len(keys), *keys, *args)
        pipe.exists(self.epoch_key)
        reply, epoch = pipe.execute(raise_on_error=False)
        if isinstance(reply, NoScriptError):
            reply = script(keys=keys, args=args)
        elif isinstance(reply, Exception):
            raise reply
        if isinstance(epoch, Exception):
            raise epoch
        self.epoch = bool(epoch)
        return list(reply)

    def hold(self, release: Release | None) -> None:
        """Keep a grant's give-back for the completion round trip (``None``: nothing to keep)."""
        if release is not None:
            self.releases.append(release)

    def released(self, guard: str) -> bool:
        """Whether ``guard``'s give-back already went out with the completion."""
        return any(r.sent for r in self.releases if r.guard == guard)

    def finish(self, rt: Runtime, claim: tuple[str, list[Any], list[Any]] | None) -> Any:
        """Complete the claim (``(script, keys, args)``, or ``None``) and give every grant back: one round trip.

        The calls run in order: the claim's completion first, then the give-backs from the
        innermost grant out (lock, bulkhead slot, breaker). Each give-back acts on its own
        reply; a give-back that failed is logged by its guard (its lease frees it).

        Returns:
            The claim's reply (``None`` without a claim).

        Raises:
            Exception: what the claim's completion raised (after every give-back acted).
        """
        calls: list[tuple[Release | None, str, list[Any], list[Any]]] = []
        if claim is not None:
            calls.append((None, *claim))
        for release in reversed(self.releases):
            if release.sent:
                continue
            release.sent = True
            try:
                asked = release.request()
            except Exception as exc:  # its guard logs it; the others still go
                release.then(exc)
                continue
            if asked is not None:
                calls.append((release, release.script, *asked))
        if not calls:
            return None
        scripts = [(script, keys, args) for _, script, keys, args in calls]
        try:
            replies = self._send(rt, scripts)
        except Exception:  # the pipeline failed as a whole: each call on its own, as without it
            replies = [self._send(rt, [one])[0] for one in scripts]
        claim_reply: Any = None
        for (giving_back, _, _, _), reply in zip(calls, replies, strict=True):
            if giving_back is None:
                claim_reply = reply
            else:
                giving_back.then(reply)
        if isinstance(claim_reply, Exception):
            raise claim_reply
        return claim_reply

    @staticmethod
    def _send(rt: Runtime, calls: list[tuple[str, list[Any], list[Any]]]) -> list[Any]:
        """Send scripts in one pipeline; one reply (or exception) per script, in order."""
        if len(calls) == 1:
            script, keys, args = calls[0]
            try:
                return [script_for(rt.redis, script)(keys=keys, args=args)]
            except Exception as exc:
                return [exc]
        pipe = rt.redis.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script_for(rt.redis, script).sha, len(keys), *keys, *args)
        replies = list(pipe.execute(raise_on_error=False))
        for i, (script, keys, args) in enumerate(calls):
            if isinstance(replies[i], NoScriptError):  # a restarted Redis: load and send again
                try:
                    replies[i] = script_for(rt.redis, script)(keys=keys, args=args)
                except Exception as exc:
                    replies[i] = exc
        return replies

    def unused_grants(self) -> list[Ask]:
        """Answered questions that granted something no guard took."""
        return [a for a in self.asks.values() if a.answered and not a.used and granted(a)]


def granted(ask: Ask) -> bool:
    """Whether a guard's reply holds something that must be given back (a slot, lock or claim)."""
    r = ask.reply
    if ask.guard == "breaker":
        return bool(r) and int(r[0]) == 1 and int(r[1]) == 2  # a half-open probe slot
    if ask.guard == "bulkhead":
        return bool(r) and int(r[0]) == 1
    if ask.guard == "lock":
        return isinstance(r, int) and r > 0
    if ask.guard == "claim":
        status = r[0].decode() if r and isinstance(r[0], bytes) else (r[0] if r else "")
        return status == "claimed"
    return False


@cache
def composite_source(scripts: tuple[str, ...], guards: tuple[str, ...]) -> str:
    """The text of the composite script calling ``scripts`` in order (see the module's docstring).

    ARGV starts with each step's key count and argument count; then come the steps'
    arguments, in order. KEYS are the steps' keys, in order. Returns one reply per step
    asked (fewer when a step stopped the admission).
    """
    parts = ["-- Admission: the guards' scripts in order, stopping at the first that does not grant."]
    for i, (name, guard) in enumerate(zip(scripts, guards, strict=True), 1):
        parts.append(f"local function step{i}(KEYS, ARGV)\n{script_source(name).rstrip()}\nend")
        parts.append(f"local function stop{i}(r)\n  return {STOPS[guard]}\nend")
    n = len(scripts)
    steps = ", ".join(f"step{i}" for i in range(1, n + 1))
    stops = ", ".join(f"stop{i}" for i in range(1, n + 1))
    parts.append(
        f"local steps, stops = {{{steps}}}, {{{stops}}}\n"
        "local out = {}\n"
        "local ki, ai = 0, #steps * 2\n"
        "for i = 1, #steps do\n"
        "  local nk, na = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])\n"
        "  local k, a = {}, {}\n"
        "  for j = 1, nk do k[j] = KEYS[ki + j] end\n"
        "  for j = 1, na do a[j] = ARGV[ai + j] end\n"
        "  ki, ai = ki + nk, ai + na\n"
        "  local r = steps[i](k, a)\n"
        "  out[i] = r\n"
        "  if stops[i](r) then break end\n"
        "end\n"
        "return out"
    )
    return "\n".join(parts) + "\n"


def composite_for(client: Any, scripts: tuple[str, ...], guards: tuple[str, ...]) -> Any:
    """The composite script of these steps registered on ``client`` (a redis-py ``Script``)."""
    name = "admission:" + ",".join(f"{g}={s}" for g, s in zip(guards, scripts, strict=True))
    return registered(client, name, lambda _: composite_source(scripts, guards))
