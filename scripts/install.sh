#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the pinned runtime requirements (reused
# while the requirement files are unchanged); with --test also the test tools (requirements-test.txt)
# and Debian's chromium for the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
reqs=requirements.txt
[ "${1:-}" = "--test" ] && reqs=requirements-test.txt
stamp=$(cat requirements.txt "$reqs" | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.requirements 2>/dev/null)" != "$stamp" ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$reqs"
  echo "$stamp" > .venv/.requirements
fi
if [ "${1:-}" = "--test" ]; then
  # Debian's chromium for the browser tests and PostgreSQL's server programs (initdb, pg_ctl) for the store
  # tests, which start a throwaway server themselves (tests/pg_server.py).
  missing=""
  command -v chromium >/dev/null 2>&1 || missing="chromium chromium-driver"
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $missing >/dev/null
  fi
fi
