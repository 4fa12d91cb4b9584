//! A stand-in shop for the quick start: listens on 127.0.0.1:8080 (or the
//! address given as the first argument), prints every request it receives,
//! checks `X-Callgate-Signature` with the demo upstream secret the way a shop
//! should, and answers `success`.
//!
//!     cargo run --release --example demo_upstream [ADDR] [SECRET_FILE]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("127.0.0.1:8080")
        .parse()?;
    let secret_file = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "certs/dev/upstream.secret".to_owned());
    let secret = callgate::secret::Secret::from_file(std::path::Path::new(&secret_file))
        .map_err(|e| format!("{secret_file}: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("demo upstream listening on http://{addr}, answering `success`");
    loop {
        let (tcp, _) = listener.accept().await?;
        let secret = secret.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let secret = secret.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    println!("\n--> {} {}", parts.method, parts.uri);
                    for (k, v) in &parts.headers {
                        println!("    {k}: {}", v.to_str().unwrap_or("<binary>"));
                    }
                    println!(
                        "    body ({} bytes): {}",
                        body.len(),
                        String::from_utf8_lossy(&body)
                    );
                    let verdict = match parts
                        .headers
                        .get("x-callgate-signature")
                        .and_then(|v| v.to_str().ok())
                    {
                        Some(header) => {
                            let t = header
                                .split(',')
                                .find_map(|p| p.strip_prefix("t="))
                                .and_then(|t| t.parse::<i64>().ok())
                                .unwrap_or_default();
                            let expected = callgate::forward::signature(&secret, t, &body);
                            if callgate::secret::ct_eq(expected.as_bytes(), header.as_bytes()) {
                                "valid"
                            } else {
                                "INVALID"
                            }
                        }
                        None => "missing",
                    };
                    println!("    X-Callgate-Signature: {verdict}");
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"success"))))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
