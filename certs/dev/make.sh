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

# Stand-in for UnionPay's certificates: a root and a middle CA (their keys are
# thrown away) and a signing certificate with UnionPay's CN, for 5.1.0
# (signPubKeyCert) and 5.0.0 (certId = its serial, 268435457).
ca_tmp=$(mktemp -d)
trap 'rm -rf "$ca_tmp"' EXIT
printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n' > "$ca_tmp/ca.ext"
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,nonRepudiation\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n' > "$ca_tmp/leaf.ext"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$ca_tmp/root.key"
openssl req -x509 -new -key "$ca_tmp/root.key" -sha256 -days 3650 -set_serial 1 \
  -subj "/C=CN/O=callgate demo (not for production)/CN=callgate demo UnionPay root" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out unionpay_root.pem
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$ca_tmp/middle.key"
openssl req -new -key "$ca_tmp/middle.key" -out "$ca_tmp/middle.csr" \
  -subj "/C=CN/O=callgate demo (not for production)/CN=callgate demo UnionPay middle"
openssl x509 -req -in "$ca_tmp/middle.csr" -CA unionpay_root.pem -CAkey "$ca_tmp/root.key" \
  -set_serial 2 -days 3650 -sha256 -extfile "$ca_tmp/ca.ext" -out unionpay_middle.pem
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out unionpay_sign_key.pem
openssl req -new -utf8 -key unionpay_sign_key.pem -out "$ca_tmp/sign.csr" \
  -subj "/C=cn/O=callgate demo (not for production)/OU=Enterprises/CN=041@8310000000083040@中国银联股份有限公司@00000001"
openssl x509 -req -in "$ca_tmp/sign.csr" -CA unionpay_middle.pem -CAkey "$ca_tmp/middle.key" \
  -set_serial 0x10000001 -days 3650 -sha256 -extfile "$ca_tmp/leaf.ext" -out unionpay_sign.pem

# Stand-in for JD's RSA key pair, and the merchant's 3DES key (Base64 of 24 bytes).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out jdpay_private.pem
openssl pkey -in jdpay_private.pem -pubout -out jdpay_public.pem
openssl rand -base64 24 > jdpay_des.key

# HMAC key for X-Callgate-Signature (raw bytes; one trailing newline is ignored).
openssl rand -hex 32 > upstream.secret
chmod 600 alipay_private.pem server.key upstream.secret unionpay_sign_key.pem jdpay_private.pem jdpay_des.key

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
