"""End-to-end confirmation of telemetry: which outbox rows the broker took but the server has not
yet confirmed storing, and when each is due to be sent again.

A broker's PUBACK says only that the broker has a message. A broker that crashes with it in
memory (a single Mosquitto killed with messages in flight), or a NATS cluster whose stream
leader dies while the MQTT gateway has already acknowledged (issue 13: the election takes
about 4.5 s), loses it after the device has let go. So once the server confirms what it
stored (the ``telemetry_ack`` command, docs/contracts.md), the agent keeps every row until its
seq is confirmed, and sends a row again when no confirmation came ``timeout_s`` after its
PUBACK. A resend is harmless: the server stores each (device, seq) once and confirms a
duplicate like a first copy.

Backoff: the n-th wait of a row is ``timeout_s * 2**(n-1)``, at most ``timeout_s * max_factor``,
so a row the server never confirms (a server that went back to a version without acks, a batch
it refuses) costs one message per long interval, not a storm, and is never dropped: only the
outbox's caps drop rows.

Pure: no clock, no outbox, no broker; the reporter owns those and a lock around this object.
It does not decide when confirmation starts (the first ``telemetry_ack`` the agent sees turns it
on, persisted in the outbox: ``Outbox.confirming``).
"""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_MAX_FACTOR = 16


class Confirmations:
    """Unconfirmed seqs with their resend deadline and attempt count."""

    def __init__(self, timeout_s: float, *, max_factor: int = DEFAULT_MAX_FACTOR) -> None:
        if timeout_s <= 0 or max_factor < 1:
            raise ValueError(f"timeout_s must be positive and max_factor at least 1 ({timeout_s}, {max_factor})")
        self.timeout_s = timeout_s
        self.max_factor = max_factor
        self._waiting: dict[int, tuple[float, int]] = {}  # seq -> (due at, PUBACKs seen)
        self._next_due = float("inf")  # a lower bound of the earliest due time

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, seq: object) -> bool:
        return seq in self._waiting

    def sent(self, seq: int, now: float) -> None:
        """The broker acknowledged ``seq`` (again): wait for the server's confirmation until a deadline."""
        attempts = self._waiting.get(seq, (0.0, 0))[1] + 1
        due = now + self.timeout_s * min(2 ** (attempts - 1), self.max_factor)
        self._waiting[seq] = (due, attempts)
        self._next_due = min(self._next_due, due)

    def confirm(self, seqs: Iterable[int]) -> int:
        """The server stored ``seqs``: forget them; how many were waiting."""
        return sum(self._waiting.pop(seq, None) is not None for seq in seqs)

    def forget(self, seqs: Iterable[int]) -> None:
        """Rows no longer in the outbox (dropped by its cap, or confirmed before their PUBACK came)."""
        for seq in seqs:
            self._waiting.pop(seq, None)

    def any_due(self, now: float) -> bool:
        """Cheap: whether ``due`` may return something (the link asks at every loop pass)."""
        return now >= self._next_due

    def due(self, now: float, limit: int, *, skip: Iterable[int] = ()) -> list[int]:
        """Up to ``limit`` seqs past their deadline, oldest seq first, leaving out ``skip`` (in flight).

        A seq stays due until its next ``sent`` (the PUBACK of the resend) or ``confirm``."""
        skipped = set(skip)
        late = sorted(s for s, (due, _) in self._waiting.items() if due <= now and s not in skipped)
        pending = [due for s, (due, _) in self._waiting.items() if due > now]
        self._next_due = min(pending, default=float("inf"))
        if late:
            self._next_due = now  # still due (until sent again) for whoever asks next
        return late[:limit] if limit > 0 else []
