//! The likely fix of every refusal `reason`, for the console: README's
//! Troubleshooting table in code (its `fix` column word for word;
//! `tests/console.rs` compares the two, so they cannot drift apart).

/// (`reason` label, fix), in the README's order.
const FIXES: &[(&str, &str)] = &[
    (
        "not_found",
        "register the route's `path` with the platform, or add a route for the path it calls",
    ),
    (
        "method_not_allowed",
        "send only notify URLs to callgate; return URLs go to the shop",
    ),
    (
        "ip_denied",
        "compare the line's `client` with the platform's published list (Platforms above), update `allow` or the IP set; list your proxy in `trusted_proxies`",
    ),
    (
        "ip_denied_dry_run",
        "collect these addresses, confirm them, list them, then remove `allow_mode`",
    ),
    (
        "bad_forwarded_for",
        "fix the proxy's header (nginx: `proxy_set_header X-Forwarded-For $remote_addr`)",
    ),
    (
        "rate_limited",
        "raise `rate_limit` if it is the platform's own burst; otherwise nothing to do",
    ),
    (
        "too_large",
        "raise `max_body_bytes` if a genuine notification is refused (UnionPay 5.1.0 with its certificate is about 2-3 KB)",
    ),
    (
        "bad_content_length",
        "a broken client or an attack; nothing to fix on callgate",
    ),
    (
        "transfer_encoding",
        "a proxy in front re-chunks: make it buffer the body (nginx does by default)",
    ),
    (
        "body_timeout",
        "a slow or stalled client; raise `body_timeout` only if genuine notifications hit it",
    ),
    (
        "body_read",
        "network trouble between the platform and callgate; the platform retries",
    ),
    (
        "content_type",
        "the route's `provider` does not match the platform calling this path",
    ),
    ("empty_body", "a probe or a health check on the notify path"),
    ("bad_form", "corrupted in transit, or not the platform"),
    (
        "bad_xml",
        "not the platform, or a proxy that rewrites bodies",
    ),
    ("bad_json", "as `bad_xml`"),
    (
        "bad_envelope",
        "check the route's provider and JD's API version (V2.0 only)",
    ),
    ("doctype", "an attack or a test: nothing to fix"),
    ("duplicate_key", "an attack: nothing to fix"),
    (
        "signature_missing",
        "not the platform, or a proxy that strips headers (WeChat v3: `Wechatpay-*`)",
    ),
    (
        "signature_encoding",
        "not the platform, or a body re-encoded on the way",
    ),
    (
        "bad_digest",
        "fetch the key again from the console (Platforms above), `callgate check`, reload. Many at once: `CallgateSignatureFailuresSpiking`",
    ),
    (
        "probe_signature",
        "nothing: WeChat checks that bad signatures are refused",
    ),
    (
        "sign_type_unsupported",
        "switch the merchant account to a supported signing method",
    ),
    (
        "sign_type_not_allowed",
        "if the platform console shows the app signs with that type, list it in `keys.sign_types`; otherwise nothing to fix",
    ),
    (
        "scheme_unsupported",
        "use the platform's certificate (RSA) signing mode",
    ),
    (
        "merchant_mismatch",
        "check the id in `[route.keys]`; if it is right, someone replays another merchant's notification",
    ),
    (
        "unknown_merchant",
        "add the merchant, or send its notifications to its own route",
    ),
    (
        "merchant_unbound",
        "add the sub-merchant (`keys.sub_mch_id` / `keys.seller_id`, one `[[route.merchant]]` each); `accept_any_sub_merchant = true` only if every sub-merchant's notification may reach this shop",
    ),
    (
        "unknown_serial",
        "add the new certificate or public key (keep the old one listed) and reload",
    ),
    (
        "unknown_cert_id",
        "install UnionPay's current `acp_prod_verify_sign.cer`",
    ),
    (
        "cert_expired",
        "install the current platform certificate (or the public key)",
    ),
    (
        "cert_rejected",
        "install UnionPay's current middle and root certificates (production vs test environment)",
    ),
    (
        "decrypt_failed",
        "copy the key again (exactly 32 bytes for APIv3) and reload",
    ),
    (
        "missing_field",
        "not a notification of this type (a return URL hit, another API's callback)",
    ),
    (
        "bad_value",
        "not a notification of this provider's kind, or a platform change: report it with the line's `reason`",
    ),
    (
        "bad_header",
        "a proxy in front drops or rewrites these headers: pass them through",
    ),
    (
        "bad_time",
        "not the platform's format: check the route's provider",
    ),
    (
        "bad_event_id",
        "an attack: nothing to fix. A sandbox or test tool must send ids as the platform issues them (README *Security notes*, event identity table)",
    ),
    ("bad_merchant_id", "as `bad_event_id`"),
    (
        "ambiguous_fields",
        "an attack (a reshaped genuine notification): nothing to fix",
    ),
    (
        "combined_payment_unsupported",
        "send combined-payment notifications to a notify URL the shop handles itself, or do not use combined payments with callgate",
    ),
    (
        "charset_undecodable",
        "send the raw body through unchanged; nothing to fix on callgate for a forgery",
    ),
    (
        "charset_unsigned",
        "an attack (a field added to a genuine notification): nothing to fix",
    ),
    ("platform_failure", "nothing"),
    (
        "stale",
        "check the clock (`timedatectl`); `CallgateClockSkew`",
    ),
    (
        "future",
        "synchronise the clock (chrony or systemd-timesyncd)",
    ),
    (
        "replayed_nonce",
        "an attack or a misbehaving proxy that resends: nothing to fix",
    ),
    (
        "notify_verify_denied",
        "check `partner`; a forged notification otherwise",
    ),
    (
        "notify_verify_unavailable",
        "check outbound HTTPS to `notify_verify_url`; Alipay retries meanwhile",
    ),
    (
        "store_unavailable",
        "bring Redis back (`CallgateReplayStoreDown`); the platforms retry. During a failover nothing to do: callgate finds the new master (`CallgateReplayStoreFailover`); if it lasts, check that the sentinels (`SENTINEL CKQUORUM <name>`) or the cluster (`CLUSTER INFO`) can elect one",
    ),
    (
        "store_full",
        "raise `replay.max_entries` (restart) or the route's `replay_quota` (reload); `CallgateReplayStoreFull`",
    ),
    (
        "store_evicting",
        "`CONFIG SET maxmemory-policy noeviction` (and in redis.conf); `CallgateReplayStoreEvicting`",
    ),
    (
        "claim_lost",
        "nothing for this copy (the other one delivers); `CallgateClaimLost` says where time went",
    ),
    (
        "journal_unavailable",
        "free space in the journal's file system (`CallgateJournalWriteFailing`)",
    ),
    (
        "in_flight",
        "nothing: the platform retries into a `duplicate`",
    ),
    (
        "upstream_timeout",
        "make the shop's handler faster, or raise `upstream_timeout`; the platform retries",
    ),
    (
        "upstream_unreachable",
        "start the shop / fix `upstream` (and `upstream_ca` for a private CA)",
    ),
    (
        "upstream_status",
        "read the shop's log for that `X-Callgate-Request-Id`",
    ),
    (
        "upstream_unconfirmed",
        "make the handler print it when it recorded the payment, or fix `success_body`",
    ),
    ("upstream_reply", "fix the shop's handler"),
    (
        "upstream_request",
        "report it: should not happen with genuine notifications",
    ),
];

/// The likely fix for a refusal `reason` label, as README's Troubleshooting
/// table words it.
pub fn fix(reason: &str) -> Option<&'static str> {
    FIXES.iter().find(|(l, _)| *l == reason).map(|(_, f)| *f)
}

/// Every (`reason`, fix) pair, for the documentation test.
pub fn all() -> &'static [(&'static str, &'static str)] {
    FIXES
}
