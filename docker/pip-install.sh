#!/bin/sh
# pip install "$@" with $PYTHON (default python3), trusting the PEM file named by CA_BUNDLE
# as well as the system's CAs when it is set. Used by the Dockerfile during builds only.
set -eu
python=${PYTHON:-python3}
if [ -n "${CA_BUNDLE:-}" ]; then
    if [ ! -f "$CA_BUNDLE" ]; then
        echo "CA_BUNDLE=$CA_BUNDLE: no such file in the build (put it under docker/certs/" \
            "or bind-mount it)" >&2
        exit 1
    fi
    bundle=$(mktemp)
    trap 'rm -f "$bundle"' EXIT
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        cat /etc/ssl/certs/ca-certificates.crt >"$bundle"
    fi
    cat "$CA_BUNDLE" >>"$bundle"
    "$python" -m pip install --cert "$bundle" "$@"
else
    "$python" -m pip install "$@"
fi
