#!/bin/sh
# Run a command that downloads (pip, uv) trusting the CA bundle passed as the build secret
# `ca` (`--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt`), as the host does behind a
# TLS-intercepting proxy. Without the secret, the image's own trust store is used.
set -eu
if [ -s /run/secrets/ca ]; then
  SSL_CERT_FILE=/run/secrets/ca PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca
  export SSL_CERT_FILE PIP_CERT REQUESTS_CA_BUNDLE
fi
exec "$@"
