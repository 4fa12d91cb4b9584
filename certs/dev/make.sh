#!/usr/bin/env bash
# Regenerates the DEMO key material in this folder with the openssl CLI.
# Never use any of these files in production.
set -euo pipefail
cd "$(dirname "$0")"

# Stand-in for Alipay's key pair: the gateway verifies with the public half;
# `callgate sign` signs demo notifications with the private half.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out alipay_private.pem
openssl pkey -in alipay_private.pem -pubout -out alipay_public.pem

# Self-signed TLS pair for the notification listener (localhost, 127.0.0.1, ::1).
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
  -subj "/CN=callgate demo (not for production)" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -addext "extendedKeyUsage=serverAuth" \
  -keyout server.key -out server.crt

# HMAC key for X-Callgate-Signature (raw bytes; one trailing newline is ignored).
openssl rand -hex 32 > upstream.secret

# Stand-in for a legacy Alipay MD5 partner key (32 characters, like Alipay's).
openssl rand -hex 16 > alipay_md5.key
chmod 600 alipay_private.pem server.key upstream.secret alipay_md5.key
