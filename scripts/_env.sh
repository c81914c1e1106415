# Shared set-up for scripts/*: find Python 3.11+, create or reuse .venv, install extras once.
# Sourced, not run. Idempotent: a stamp of pyproject.toml + extras skips pip when nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

find_python() {
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    echo "edgefleet needs Python 3.11 or newer; install it (e.g. 'apt-get install python3.11 python3.11-venv') or set PYTHON=/path/to/python3.11" >&2
    return 1
}

# ensure_venv DIR EXTRAS [FILES...]: make DIR a venv with edgefleet[EXTRAS] installed (editable).
# The stamp keeps the hash of pyproject.toml (and FILES) and the extras installed so far, so
# `scripts/demo` after `scripts/test` (or the reverse) installs nothing new.
ensure_venv() {
    local venv="$1" extras="$2"
    shift 2
    local stamp="$venv/.edgefleet-stamp"
    local hash have_hash have_extras
    hash="$(cat pyproject.toml "$@" 2>/dev/null | sha256sum | cut -c1-16)"
    have_hash="$(cut -d' ' -f1 "$stamp" 2>/dev/null || true)"
    have_extras="$(cut -s -d' ' -f2 "$stamp" 2>/dev/null || true)"
    if [ ! -x "$venv/bin/python" ]; then
        echo "==> creating $venv" >&2
        "$(find_python)" -m venv "$venv"
        have_hash=""
    fi
    local missing="" e
    for e in ${extras//,/ }; do
        case ",$have_extras," in *",$e,"*) ;; *) missing="$missing $e" ;; esac
    done
    if [ "$have_hash" != "$hash" ] || [ -n "$missing" ]; then
        local union
        if [ "$have_hash" = "$hash" ] && [ -n "$have_extras" ]; then union="$have_extras,$extras"; else union="$extras"; fi
        union="$(echo "$union" | tr ',' '\n' | sort -u | paste -sd, -)"
        echo "==> installing edgefleet[$union] into $venv (first run only; later runs reuse it)" >&2
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -U pip setuptools wheel
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[$union]"
        echo "$hash $union" >"$stamp"
    fi
}

# require_services: the test suite uses a real Mosquitto and a real PostgreSQL.
require_services() {
    if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "==> installing mosquitto with apt-get" >&2
            apt-get install -y -q mosquitto mosquitto-clients >&2 || { apt-get update -q >&2 && apt-get install -y -q mosquitto mosquitto-clients >&2; }
        else
            echo "the tests need the mosquitto broker binary; install it with: sudo apt-get install -y mosquitto (or: brew install mosquitto)" >&2
            exit 1
        fi
    fi
    export PATH="$PATH:/usr/sbin"
    # The edgefleet Mosquitto plugin (broker_accounts = "mosquitto-http") is compiled by its tests:
    # a C compiler, Mosquitto's plugin headers and libcurl's (tests/integration/broker/test_mosquitto_http.py).
    local curl_h=""
    for header in /usr/include/curl/curl.h /usr/include/*-linux-gnu/curl/curl.h; do if [ -e "$header" ]; then curl_h="$header"; fi; done
    if ! command -v gcc >/dev/null 2>&1 || [ ! -e /usr/include/mosquitto_plugin.h ] || [ ! -e /usr/include/mosquitto.h ] \
            || [ -z "$curl_h" ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "==> installing gcc, mosquitto-dev, libmosquitto-dev and libcurl4-openssl-dev with apt-get (the Mosquitto plugin's tests)" >&2
            apt-get install -y -q gcc mosquitto-dev libmosquitto-dev libcurl4-openssl-dev >&2 \
                || { apt-get update -q >&2 && apt-get install -y -q gcc mosquitto-dev libmosquitto-dev libcurl4-openssl-dev >&2; } \
                || echo "could not install the plugin's build packages; its tests will be skipped" >&2
        else
            echo "the Mosquitto plugin's tests need: sudo apt-get install -y gcc mosquitto-dev libmosquitto-dev libcurl4-openssl-dev (skipped without)" >&2
        fi
    fi
    # The console's browser tests (tests/e2e/console) drive Debian's chromium through chromium-driver.
    if [ ! -x /usr/bin/chromium ] || [ ! -e /usr/bin/chromedriver ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "==> installing chromium and chromium-driver with apt-get (the console's browser tests)" >&2
            apt-get install -y -q chromium chromium-driver >&2 || { apt-get update -q >&2 && apt-get install -y -q chromium chromium-driver >&2; }
        else
            echo "the console's browser tests need Debian's chromium; install it with: sudo apt-get install -y chromium chromium-driver" >&2
            exit 1
        fi
    fi
    # The Prometheus rules in docker/monitoring are run by promtool beside the built-in alert rules.
    if ! command -v promtool >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "==> installing prometheus (for promtool) with apt-get (the alert rules' tests)" >&2
            apt-get install -y -q --no-install-recommends prometheus >&2 || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends prometheus >&2; }
        else
            echo "the alert rules' tests need promtool; install it with: sudo apt-get install -y --no-install-recommends prometheus (or: brew install prometheus)" >&2
            exit 1
        fi
    fi
    if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v pg_ctlcluster >/dev/null 2>&1; then
            echo "==> starting PostgreSQL" >&2
            pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start >&2 || true
        elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "==> installing PostgreSQL with apt-get" >&2
            apt-get install -y -q postgresql >&2 && pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start >&2
        fi
        if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
            echo "the PostgreSQL tests need a server on 127.0.0.1:5432 (user postgres, trust auth, database 'test');" >&2
            echo "install and start one with: sudo apt-get install -y postgresql && sudo pg_ctlcluster 15 main start, or set EDGEFLEET_TEST_PG=skip to skip them" >&2
            [ "${EDGEFLEET_TEST_PG:-}" = "skip" ] || exit 1
        fi
    fi
}
