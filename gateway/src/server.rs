//! The HTTP/1.1 server in front of the S3 service: one task per
//! connection, TCP_NODELAY on, a bounded header block (431 beyond
//! `header_bytes_max`), a request id per request (in the
//! `x-amz-request-id` header of every answer and in the log span), and a
//! graceful stop that lets requests in flight finish for a while.
//!
//! A malformed request or a client that vanishes only ends its own
//! connection; the accept loop keeps serving.

use std::sync::Arc;
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

use crate::intake::Intake;

/// How long a stopping server waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The id of one request: `x-amz-request-id`.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

fn new_request_id() -> String {
    format!("{:016X}", rand::random::<u64>())
}

/// Serves `service` on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, service: S3Service, intake: Intake, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let intake = Arc::new(intake);
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
        let for_connection = intake.clone();
        let handler =
            hyper::service::service_fn(move |request| handle(service.clone(), for_connection.clone(), request));
        let connection = http1::Builder::new()
            .max_buf_size(intake.header_bytes_max)
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

async fn handle(
    service: S3Service,
    intake: Arc<Intake>,
    mut request: http::Request<Incoming>,
) -> Result<s3s::HttpResponse, s3s::HttpError> {
    let id = new_request_id();
    request.extensions_mut().insert(RequestId(id.clone()));
    let close_after = answer_may_desync_client(&request);
    let span = tracing::info_span!("http", request_id = %id, method = %request.method());
    let response = async {
        match crate::intake::admit(request, &intake).await {
            Ok(request) => service.call(request).await,
            Err(refusal) => {
                tracing::info!(code = refusal.code, message = %refusal.message, "request refused");
                Ok(refusal.into_response(&id))
            }
        }
    }
    .instrument(span)
    .await;
    response.map(|mut response| {
        if let Ok(value) = HeaderValue::from_str(&id) {
            response.headers_mut().insert("x-amz-request-id", value);
        }
        if response.status().is_client_error() || response.status().is_server_error() {
            name_request_in_error(&mut response, &id);
        }
        if close_after(response.status()) {
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        metrics::counter!("s3_http_responses_total", "status" => response.status().as_u16().to_string()).increment(1);
        response
    })
}

/// Whether the connection should close after answering `request` with a
/// given status. A request with `Expect: 100-continue` that is answered
/// without `100 Continue` (an empty body, or a refusal before the body is
/// read) leaves botocore's pooled connection out of step: it parses the
/// next answer against the stale status line and stalls until its read
/// timeout (boto/botocore#3755). Closing such a connection costs the
/// client one reconnect and spares it the stall.
fn answer_may_desync_client(request: &http::Request<Incoming>) -> impl Fn(http::StatusCode) -> bool {
    let headers = request.headers();
    let expects_continue = headers
        .get(http::header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let body_empty = headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|value| value.as_bytes() == b"0");
    move |status| expects_continue && (body_empty || !status.is_success())
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
