# Installs the third-party Standard Webhooks libraries the webhook tests verify Herald's
# deliveries with (dispatcher/tests/standard_webhooks.rs): `standardwebhooks` from PyPI
# into dispatcher/tests/verifiers/.venv and from npm into its node_modules, at the
# versions pinned there. Idempotent; sourced by scripts/test.sh.
verifiers=dispatcher/tests/verifiers
if [ ! -x "$verifiers/.venv/bin/python" ] ||
  ! "$verifiers/.venv/bin/python" -c "import standardwebhooks, cryptography" 2>/dev/null; then
  python3 -m venv "$verifiers/.venv"
  "$verifiers/.venv/bin/pip" install -q -r "$verifiers/requirements.txt"
fi
if [ ! -d "$verifiers/node_modules/standardwebhooks" ]; then
  (cd "$verifiers" && npm ci --silent --no-audit --no-fund)
fi
