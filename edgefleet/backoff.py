"""Jittered exponential backoff, and when a client asks again for a subscription the broker refused.

``Backoff`` is the one retry schedule of the MQTT clients on the device side: the agent's link
(``agent.link``: reconnecting, and subscribing again) and the simulator's light devices
(``simulation.lightdevice``). It is pure (the random source is injected), so its delays are
tested without sleeping.

``suback_backoff`` is the schedule for a refused SUBSCRIBE (SUBACK 0x80). A broker may refuse
a subscription and keep the connection: a NATS cluster's MQTT gateway does so when the
JetStream consumer behind the subscription takes longer than its ``js_api_timeout`` (5 s) in a
connect burst, and an ACL that denies the topic does so on Mosquitto. A client that does not
check its SUBACK then stays connected and deaf (docs/deployment.md "The consumer limit"). The
retries start at 5 s and grow to 60 s, each jittered to [0.5, 1) of its step, so the devices a
burst refused do not come back as one more burst. ``refused_topics`` pairs a SUBACK's return
codes with the topics of the SUBSCRIBE it answers.

This module does not talk to a broker and does not sleep: its callers do both.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

__all__ = ["SUBACK_RETRY_INITIAL_S", "SUBACK_RETRY_MAX_S", "Backoff", "refused_topics", "suback_backoff"]

SUBACK_RETRY_INITIAL_S = 5.0  # a NATS gateway refuses after js_api_timeout (5 s): do not ask sooner
SUBACK_RETRY_MAX_S = 60.0


class Backoff:
    """Exponential backoff with jitter: delays grow ``initial * factor**n`` up to ``maximum``,
    each scaled by a random factor in [0.5, 1) so a fleet that lost its broker does not
    reconnect in lockstep when it comes back."""

    def __init__(self, initial: float = 0.5, maximum: float = 60.0, factor: float = 2.0,
                 rand: Callable[[], float] = random.random) -> None:
        if not 0 < initial <= maximum or factor < 1:
            raise ValueError("backoff needs 0 < initial <= maximum and factor >= 1")
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self._rand = rand
        self.attempt = 0

    def next(self) -> float:
        base = min(self.maximum, self.initial * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return base * (0.5 + self._rand() / 2)

    def reset(self) -> None:
        self.attempt = 0


def suback_backoff(rand: Callable[[], float] = random.random) -> Backoff:
    """The schedule for subscribing again after a refused SUBACK: 5, 10, 20, 40, 60, 60... s, jittered."""
    return Backoff(SUBACK_RETRY_INITIAL_S, SUBACK_RETRY_MAX_S, 2.0, rand)


def refused_topics(requested: Sequence[str], failures: Sequence[bool]) -> tuple[str, ...]:
    """The topics of a SUBSCRIBE whose return code in the SUBACK is a failure (0x80), in order.

    ``failures`` holds one flag per return code (paho: ``reason_code.is_failure``). A SUBACK must
    carry one code per topic (MQTT 3.1.1 section 3.9.3); one that does not is treated as refusing
    every topic it leaves out, so the client asks again rather than stay deaf.
    """
    return tuple(topic for i, topic in enumerate(requested) if i >= len(failures) or failures[i])
