//! The HTTP/1.1 server in front of the S3 service: one task per
//! connection, TCP_NODELAY on, a bounded header block (431 beyond
//! `header_bytes_max`), a request id per request (in the
//! `x-amz-request-id` header of every answer and in the log span), and a
//! graceful stop that lets requests in flight finish for a while.
//!
//! A malformed request or a client that vanishes only ends its own
//! connection; the accept loop keeps serving.

use std::time::Duration;

use http::HeaderValue;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::service::S3Service;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

/// How long a stopping server waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The id of one request: `x-amz-request-id`.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

fn new_request_id() -> String {
    format!("{:016X}", rand::random::<u64>())
}

/// Serves `service` on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    service: S3Service,
    header_bytes_max: usize,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an S3 connection failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let service = service.clone();
        let handler = hyper::service::service_fn(move |request| handle(service.clone(), request));
        let connection = http1::Builder::new()
            .max_buf_size(header_bytes_max)
            .serve_connection(TokioIo::new(stream), handler);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "S3 connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("S3 connections still open after the shutdown grace period");
    }
}

async fn handle(service: S3Service, mut request: http::Request<Incoming>) -> Result<s3s::HttpResponse, s3s::HttpError> {
    let id = new_request_id();
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("http", request_id = %id, method = %request.method());
    let response = hyper::service::Service::call(&service, request).instrument(span).await;
    response.map(|mut response| {
        if let Ok(value) = HeaderValue::from_str(&id) {
            response.headers_mut().insert("x-amz-request-id", value);
        }
        if response.status().is_client_error() || response.status().is_server_error() {
            name_request_in_error(&mut response, &id);
        }
        metrics::counter!("s3_http_responses_total", "status" => response.status().as_u16().to_string()).increment(1);
        response
    })
}

/// Adds `<RequestId>` to an S3 error body that lacks it: errors raised
/// inside `s3s` (signatures, parsing, access checks) are serialized
/// without one.
fn name_request_in_error(response: &mut s3s::HttpResponse, id: &str) {
    let Some(body) = response.body().bytes() else { return };
    let Ok(text) = std::str::from_utf8(&body) else { return };
    if text.contains("<RequestId>") {
        return;
    }
    let Some(at) = text.rfind("</Error>") else { return };
    let named = format!("{}<RequestId>{id}</RequestId>{}", &text[..at], &text[at..]);
    if let Ok(length) = HeaderValue::from_str(&named.len().to_string()) {
        response.headers_mut().insert(http::header::CONTENT_LENGTH, length);
    }
    *response.body_mut() = s3s::Body::from(named);
}
