//! Logging and metrics setup shared by every role: `tracing` to stderr
//! (filter from `RUST_LOG`, default `info`) and a Prometheus exporter serving
//! `/metrics` over HTTP.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::OnceLock;

use anyhow::Context;

/// Installs the global tracing subscriber once; later calls are no-ops.
pub fn init_tracing() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init();
    });
}

/// Installs the global metrics recorder and serves it as Prometheus text on
/// `http://{addr}/metrics`. Must run inside a tokio runtime. Call at most
/// once per process.
pub fn serve_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .context("configuring histogram buckets")?
        .install()
        .with_context(|| format!("starting the metrics endpoint on {addr}"))?;
    tracing::info!(%addr, "serving /metrics");
    Ok(())
}
