#!/bin/sh
# Enroll on first start, then run the agent. The state directory is the container's volume,
# so a restarted container keeps its identity and models and does not enroll again.
#   EDGEFLEET_SERVER            fleet server URL (required), e.g. http://server:8080
#   EDGEFLEET_ENROLL_TOKEN      a one-time token from `edgefleet devices enroll` (production), or
#   EDGEFLEET_ADMIN_TOKEN_FILE  the server's admin token, to make a token per replica (compose demo only)
#   EDGEFLEET_PROFILE           firmware profile for a token made here (default rpi4-64)
#   EDGEFLEET_LABELS            labels for a token made here, e.g. "site=lab,ring=canary"
#   EDGEFLEET_HTTP_PORT         local API port (default 8765, which the image's HEALTHCHECK asks)
set -eu
state="${EDGEFLEET_STATE_DIR:-/var/lib/edgefleet}"
: "${EDGEFLEET_SERVER:?set EDGEFLEET_SERVER, e.g. http://server:8080}"

if [ ! -f "$state/identity.json" ]; then
    token="${EDGEFLEET_ENROLL_TOKEN:-}"
    if [ -z "$token" ] && [ -n "${EDGEFLEET_ADMIN_TOKEN_FILE:-}" ]; then
        # The agent image has no server CLI: ask the REST API (POST /api/v1/devices/enrollment-tokens).
        token=$(python - <<'PY'
import json, os, urllib.request
labels = dict(kv.split("=", 1) for kv in filter(None, os.environ.get("EDGEFLEET_LABELS", "").split(",")))
body = {"profile": os.environ.get("EDGEFLEET_PROFILE", "rpi4-64"), "labels": labels, "ttl_seconds": 900}
admin = open(os.environ["EDGEFLEET_ADMIN_TOKEN_FILE"]).read().strip()
request = urllib.request.Request(os.environ["EDGEFLEET_SERVER"].rstrip("/") + "/api/v1/devices/enrollment-tokens",
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": "Bearer " + admin, "Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(request, timeout=30))["token"])
PY
)
    fi
    if [ -z "$token" ]; then
        echo "edgefleet-agent: not enrolled and no EDGEFLEET_ENROLL_TOKEN given (make one with: edgefleet devices enroll --profile PROFILE)" >&2
        exit 2
    fi
    edgefleet agent enroll --server "$EDGEFLEET_SERVER" --token="$token" --state-dir "$state" --hostname "$(hostname)"
fi
exec edgefleet agent run --state-dir "$state" --http-host 127.0.0.1 --http-port "${EDGEFLEET_HTTP_PORT:-8765}" "$@"
