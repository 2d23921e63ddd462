"""How task data travels through Redis: the `Serializer` protocol and the JSON default."""

from __future__ import annotations

import json
from typing import Any, Protocol, runtime_checkable

from .._log import safe_repr

__all__ = ["JSONSerializer", "Serializer", "decode", "encode"]


@runtime_checkable
class Serializer(Protocol):
    """Turns task data into bytes (or str) for Redis, and back."""

    def dumps(self, data: Any) -> bytes | str:
        """Encode `data`; raise TypeError or ValueError if it cannot be encoded."""
        ...

    def loads(self, raw: bytes | str) -> Any:
        """Decode what `dumps` made."""
        ...


class JSONSerializer:
    """The default serializer: strict JSON (no NaN/inf; tuples come back as lists)."""

    __slots__ = ()

    def dumps(self, data: Any) -> str:
        return json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)

    def loads(self, raw: bytes | str) -> Any:
        return json.loads(raw)

    def __repr__(self) -> str:
        return "JSONSerializer()"


def encode(serializer: Serializer, task_id: str, data: Any) -> bytes | str:
    """`data` as `serializer` encodes it.

    Raises:
        TypeError, ValueError: the serializer refused the data (the message
            names the task), or returned neither bytes nor str.
    """
    try:
        payload = serializer.dumps(data)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        kind = ValueError if isinstance(exc, ValueError) else TypeError
        raise kind(
            f"data of task {safe_repr(task_id)} cannot be serialized with {serializer!r}: {exc}"
        ) from exc
    if not isinstance(payload, (bytes, str)):
        raise TypeError(
            f"serializer {serializer!r} returned {type(payload).__name__}, not bytes or str"
        )
    return payload


def decode(
    serializer: Serializer, task_id: str, payload: bytes | str
) -> tuple[Any, Exception | None]:
    """The data `payload` holds, or (None, the ValueError to fail the task with)."""
    try:
        return serializer.loads(payload), None
    except Exception as exc:
        return None, ValueError(
            f"data of task {safe_repr(task_id)} cannot be decoded with {serializer!r}: {exc}"
        )
