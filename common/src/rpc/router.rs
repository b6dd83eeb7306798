//! Server-side dispatch of calls to typed handlers, independent of the
//! transport that delivered them. Records per-method metrics and a tracing
//! span carrying the request id.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::Instrument;

use super::Method;
use crate::wire::{CallStatus, Wire};

/// What a handler knows about the call besides its request.
#[derive(Clone, Debug)]
pub struct RequestCtx {
    pub request_id: u64,
    pub peer: SocketAddr,
    /// Common name of the peer's certificate, when authenticated by mTLS.
    pub peer_name: Option<String>,
}

/// Encoded response: status, body archive, raw bulk.
pub struct Reply {
    pub status: CallStatus,
    pub body: Bytes,
    pub bulk: Bytes,
}

type BoxFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;
type ErasedHandler = Arc<dyn Fn(RequestCtx, Bytes, Bytes) -> BoxFuture + Send + Sync>;

/// Method name → handler. Cheap to clone.
#[derive(Clone, Default)]
pub struct Router {
    handlers: HashMap<&'static str, ErasedHandler>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the handler of `M`. Panics if `M` is registered twice
    /// (a programming error at startup, never on input).
    #[allow(clippy::should_implement_trait)] // builder method, not `std::ops::Add`
    pub fn add<M, F, Fut>(mut self, handler: F) -> Self
    where
        M: Method,
        F: Fn(RequestCtx, M::Request, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = (M::Response, Bytes)> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: ErasedHandler = Arc::new(move |ctx: RequestCtx, body: Bytes, bulk: Bytes| {
            let handler = handler.clone();
            Box::pin(async move {
                let request = match M::Request::from_wire(&body) {
                    Ok(r) => r,
                    Err(e) => return error_reply(CallStatus::BadRequest(e.to_string())),
                };
                let (response, bulk) = handler(ctx, request, bulk).await;
                match response.to_wire() {
                    Ok(body) => Reply {
                        status: CallStatus::Ok,
                        body: Bytes::from(body.into_vec()),
                        bulk,
                    },
                    Err(e) => error_reply(CallStatus::Internal(e.to_string())),
                }
            }) as BoxFuture
        });
        let previous = self.handlers.insert(M::NAME, erased);
        assert!(previous.is_none(), "method {} registered twice", M::NAME);
        self
    }

    /// Runs the handler of `method`. Never panics on unknown methods or
    /// undecodable bodies: those become error statuses.
    pub async fn dispatch(&self, method: &str, ctx: RequestCtx, body: Bytes, bulk: Bytes) -> Reply {
        let Some((name, handler)) = self.handlers.get_key_value(method) else {
            metrics::counter!("rpc_server_unknown_method_total").increment(1);
            return error_reply(CallStatus::UnknownMethod);
        };
        let name: &'static str = name;
        let span = tracing::info_span!("rpc", method = name, request_id = ctx.request_id, peer = %ctx.peer);
        let started = Instant::now();
        let reply = handler(ctx, body, bulk).instrument(span).await;
        let outcome = if reply.status == CallStatus::Ok { "ok" } else { "error" };
        metrics::counter!("rpc_server_calls_total", "method" => name, "outcome" => outcome).increment(1);
        metrics::histogram!("rpc_server_seconds", "method" => name).record(started.elapsed().as_secs_f64());
        reply
    }
}

pub(crate) fn error_reply(status: CallStatus) -> Reply {
    Reply {
        status,
        body: Bytes::new(),
        bulk: Bytes::new(),
    }
}
