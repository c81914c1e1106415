"""VerneMQ's webhooks answered from the broker-auth decisions (``fleet_server.broker.auth_api``).

VerneMQ (``vmq_webhooks``) posts one JSON body per hook to an endpoint, naming the hook in the
``vernemq-hook`` header, and reads ``{"result": "ok"}`` or ``{"result": {"error": "..."}}``
back (docs.vernemq.com, "Webhooks"). The hooks we answer, MQTT 3.1.1 and 5 alike:

    auth_on_register(_m5)   username, password, client_id, mountpoint -> may it connect
    auth_on_publish(_m5)    username, client_id, mountpoint, topic     -> may it publish there
    auth_on_subscribe(_m5)  username, client_id, mountpoint, topics[]  -> may it subscribe to all of them

Mountpoints are not part of edgefleet's topic tree: a non-empty one is refused. Any other hook
name is refused too (register only the three above). Pure: the decisions come from ``BrokerAuth``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleet_server.broker.auth_api import Answer, BrokerAuth

HOOKS = ("auth_on_register", "auth_on_publish", "auth_on_subscribe")


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    return value if isinstance(value, str) else ""


def _reply(answer: Answer) -> dict[str, Any]:
    return {"result": "ok"} if answer.grant is not None else {"result": {"error": answer.why or "not_allowed"}}


def answer(auth: BrokerAuth, hook: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """VerneMQ's reply to ``hook`` with ``body``, and why it was refused ('' when not)."""
    from fleet_server.broker.auth_api import Answer

    base = hook.removesuffix("_m5")
    if base not in HOOKS:
        why = f"hook {hook!r} is not served here (register {', '.join(HOOKS)})"
        return {"result": {"error": why}}, why
    if _text(body, "mountpoint"):
        why = "mountpoints are not supported"
        return {"result": {"error": why}}, why
    username, client_id = _text(body, "username"), _text(body, "client_id")
    if base == "auth_on_register":
        decided = auth.authenticate(username, _text(body, "password"), client_id)
    elif base == "auth_on_publish":
        decided = auth.authorize(username, client_id, _text(body, "topic"), "write")
    else:
        wanted = body.get("topics")
        entries = wanted if isinstance(wanted, list) else []
        filters = [t["topic"] for t in entries if isinstance(t, Mapping) and isinstance(t.get("topic"), str)]
        if not filters or len(filters) != len(entries):
            decided = Answer(None, "no topics, or a topic that is not a string")
        else:
            refused = [a for a in (auth.authorize(username, client_id, f, "subscribe") for f in filters)
                       if a.grant is None]
            decided = refused[0] if refused else Answer(auth.user_grant(username))
    return _reply(decided), decided.why
