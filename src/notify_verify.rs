//! notify_verify: a step of the flow for legacy Alipay routes with
//! `keys.notify_verify_url` (`provider::alipay_md5`), after the replay
//! claim and before the journal and the forward: the gateway asks Alipay
//! whether the verified `notify_id` is genuine, once per event (a duplicate
//! was answered from the replay store without asking: Alipay invalidates a
//! notify_id once it has seen `success`).
//!
//! `true` continues; any other answer is `BadSignature` (401,
//! `notify_verify_denied`); no answer within `limits.upstream_timeout`, a
//! refused connection or a non-2xx status is `UpstreamError` (502,
//! `notify_verify_unavailable`), so Alipay retries and nothing is lost. The
//! demo accepts any body ending in `true` (`/true$/i`); callgate wants
//! exactly `true`, as chloerei/alipay does.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};

use crate::ack::Outcome;
use crate::forward::{HttpClient, error_chain};
use crate::provider::Verified;
use crate::provider::alipay_md5::NotifyVerify;
use crate::secret::shown;

/// Why notify_verify did not confirm a notification.
#[derive(Debug, thiserror::Error)]
pub enum NotifyVerifyError {
    #[error("notify_verify answered {0:?}, not `true`: Alipay does not vouch for this notify_id")]
    Denied(String),
    #[error("notify_verify did not answer within {0:?}")]
    Timeout(Duration),
    #[error("notify_verify request failed: {0}")]
    Request(String),
    #[error("notify_verify answered HTTP {0}")]
    Status(u16),
    #[error("notify_verify reply could not be read: {0}")]
    Reply(String),
    #[error("cannot build the notify_verify request: {0}")]
    Build(String),
}

impl NotifyVerifyError {
    /// The `reason` label of `callgate_rejections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            NotifyVerifyError::Denied(_) => "notify_verify_denied",
            _ => "notify_verify_unavailable",
        }
    }

    /// A denial is a bad signature (401); not getting an answer is the
    /// gateway's problem (502), so Alipay retries.
    pub fn outcome(&self) -> Outcome {
        match self {
            NotifyVerifyError::Denied(_) => Outcome::BadSignature,
            _ => Outcome::UpstreamError,
        }
    }
}

/// Largest notify_verify reply read (the real one is `true` or `false`).
const MAX_ATN_REPLY: usize = 1024;

/// Asks Alipay at `endpoint` whether `verified`'s notify_id is genuine,
/// within `timeout`. `Ok` only for the answer `true`.
pub async fn ask(
    client: &HttpClient,
    endpoint: &NotifyVerify,
    verified: &Verified,
    timeout: Duration,
) -> Result<(), NotifyVerifyError> {
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.method_mut() = Method::GET;
    *request.uri_mut() = endpoint
        .uri(verified.event_id())
        .map_err(|e| NotifyVerifyError::Build(e.to_string()))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| NotifyVerifyError::Request(error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(NotifyVerifyError::Status(status.as_u16()));
        }
        let reply = match Limited::new(response.into_body(), MAX_ATN_REPLY)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            // An answer, just not `true`.
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(NotifyVerifyError::Denied(format!(
                    "a reply of more than {MAX_ATN_REPLY} bytes"
                )));
            }
            Err(e) => return Err(NotifyVerifyError::Reply(e.to_string())),
        };
        if reply.trim_ascii() == b"true" {
            Ok(())
        } else {
            Err(NotifyVerifyError::Denied(shown(reply.trim_ascii())))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| NotifyVerifyError::Timeout(timeout))?
}
