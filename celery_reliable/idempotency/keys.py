"""Build idempotency keys from a task call.

The rules, as documented in README.md:

* a key comes from a template over the call's arguments (``"charge:{order_id}"``,
  ``"{order[id]}"``), a callable taking the same arguments, or ``True`` (SHA-256 of the
  canonical JSON of args and kwargs); never from anything random;
* keys are scoped by task name and an optional namespace: ``<task>|<namespace>|<key>``;
* any unicode works. A scoped key longer than :data:`MAX_KEY_BYTES` UTF-8 bytes, or one
  holding NUL or lone surrogates, is stored as ``<task>|#<sha256 of the scoped key>``;
* keys are compared exactly: no case folding and no unicode normalisation.
"""

from __future__ import annotations

import inspect
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError, IdempotencyKeyError
from ..jsoncodec import dumps, sha256_hex

#: Longest scoped key (in UTF-8 bytes) stored as written; longer ones are hashed.
MAX_KEY_BYTES = 200

KeySource = str | Callable[..., Any] | bool


def _template_fields(template: str) -> list[str]:
    roots = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        root = field.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise ConfigurationError(
                "idempotency_key",
                f"template {template!r} must name arguments ({{order_id}}), not positions ({{{field}}})",
            )
        roots.append(root)
    return roots


@dataclass(frozen=True)
class KeyBuilder:
    """Turns one call's arguments into an idempotency key.

    Args:
        source: template string, callable, or ``True``.
        signature: the task function's signature (without ``self`` for bound tasks).
        option: the option name, for error messages.
    """

    source: KeySource
    signature: inspect.Signature | None
    option: str = "idempotency_key"

    def validate(self) -> None:
        """Check the source against the task's signature (at declaration).

        Raises:
            ConfigurationError: for a template naming an argument the task does not take.
        """
        src = self.source
        if src is True or callable(src):
            return
        if not isinstance(src, str) or not src:
            raise ConfigurationError(
                self.option, f"expected a template string, a callable or True, got {type(src).__name__} {src!r}"
            )
        fields = _template_fields(src)
        if self.signature is None:
            return
        params = self.signature.parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return
        for name in fields:
            if name not in params:
                raise ConfigurationError(
                    self.option,
                    f"template {src!r} names {name!r}, which the task does not take "
                    f"(its arguments: {', '.join(params) or 'none'})",
                )

    def _arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        if self.signature is None:
            return dict(kwargs)
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise IdempotencyKeyError(
                f"{self.option} {self.source!r}: the call does not fit the task's arguments: {exc}"
            ) from exc
        bound.apply_defaults()
        values = dict(bound.arguments)
        for name, param in self.signature.parameters.items():
            if param.kind is param.VAR_KEYWORD:
                values.update(values.pop(name, {}))
        return values

    def build(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        """Return the key for one call.

        Raises:
            IdempotencyKeyError: when the call lacks a named argument or the callable fails.
            SerializationError: for ``True`` with arguments that are not JSON.
        """
        src = self.source
        if src is True:
            return "sha256:" + sha256_hex(dumps({"args": list(args), "kwargs": dict(kwargs)}, where="arguments"))
        if callable(src):
            try:
                key = src(*args, **kwargs)
            except Exception as exc:
                raise IdempotencyKeyError(f"{self.option}: the key function raised {exc!r}") from exc
        else:
            assert isinstance(src, str)
            values = self._arguments(args, kwargs)
            try:
                key = src.format_map(values)
            except (KeyError, IndexError, AttributeError) as exc:
                raise IdempotencyKeyError(
                    f"{self.option}: template {src!r} needs {exc.args[0]!r}, which this call does not have "
                    f"(it has: {', '.join(values) or 'no arguments'})"
                ) from exc
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        if not isinstance(key, str) or not key:
            raise IdempotencyKeyError(f"{self.option}: the key must be a non-empty str, got {key!r}")
        return key


def scoped_key(task_name: str, key: str, namespace: str | None = None) -> str:
    """Scope ``key`` by task name and namespace, hashing what is too long to store.

    Returns:
        the key under which records are stored (at most ``MAX_KEY_BYTES`` + 80 bytes).
    """
    scoped = f"{task_name}|{namespace or ''}|{key}"
    try:
        raw = scoped.encode("utf-8")
        storable = "\x00" not in scoped and len(raw) <= MAX_KEY_BYTES
    except UnicodeEncodeError:
        storable = False
    if storable:
        return scoped
    return f"{task_name[:120]}|#{sha256_hex(scoped)}"
