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
chmod 600 alipay_private.pem server.key upstream.secret

# WeChat Pay v2 API key (32 characters, as the merchant platform issues it).
openssl rand -hex 16 > wechat_v2_api.key
# WeChat Pay APIv3 key: exactly 32 bytes.
openssl rand -hex 16 > wechat_v3_api_v3.key
# Stand-in for WeChat Pay's platform certificate (certificate mode): the
# serial is what notifications carry in Wechatpay-Serial.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out wechatpay_platform_private.pem
openssl req -x509 -key wechatpay_platform_private.pem -sha256 -days 3650 \
  -set_serial 0x5157F09EFDC096DE15EBE81A47057A7232F1B8E1 \
  -subj "/CN=1900000109/O=callgate demo WeChat Pay platform (not for production)" \
  -out wechatpay_platform_cert.pem
# Stand-in for the WeChat Pay public key (public-key mode, id PUB_KEY_ID_...).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out wechatpay_pub_private.pem
openssl pkey -in wechatpay_pub_private.pem -pubout -out wechatpay_pub_public.pem
chmod 600 wechat_v2_api.key wechat_v3_api_v3.key wechatpay_platform_private.pem wechatpay_pub_private.pem

# Stand-in for a legacy Alipay MD5 partner key (32 characters, like Alipay's).
openssl rand -hex 16 > alipay_md5.key
chmod 600 alipay_private.pem server.key upstream.secret alipay_md5.key
