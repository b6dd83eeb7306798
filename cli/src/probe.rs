//! `tessera admin probe --url http://HOST:PORT/PATH [--timeout-ms N]`: one
//! HTTP/1.1 GET over a plain TCP socket that succeeds on a 2xx status. It is
//! the health check of the `FROM scratch` image (no shell, no curl): every
//! role serves `/metrics` on its `metrics_listen` address once it runs.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(clap::Args)]
pub struct ProbeArgs {
    /// `http://HOST:PORT/PATH` (plain HTTP; HOST an IP address or a name).
    #[arg(long)]
    url: String,
    /// Connect, send and read the status line within this time.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

pub async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let (authority, path) = split_url(&args.url)?;
    let status = tokio::time::timeout(Duration::from_millis(args.timeout_ms), get(&authority, path))
        .await
        .map_err(|_| anyhow::anyhow!("GET {}: no status within {} ms", args.url, args.timeout_ms))?
        .with_context(|| format!("GET {}", args.url))?;
    if !(200..300).contains(&status) {
        bail!("GET {}: status {status}", args.url);
    }
    println!("GET {}: {status}", args.url);
    Ok(())
}

/// `("host:port", "/path")`; the port defaults to 80, the path to `/`.
fn split_url(url: &str) -> anyhow::Result<(String, &str)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?}: only http:// URLs can be probed"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() {
        bail!("{url:?}: no host");
    }
    let has_port = authority.rsplit_once(':').is_some_and(|(_, port)| !port.contains(']'));
    let authority = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, if path.is_empty() { "/" } else { path }))
}

async fn get(authority: &str, path: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .context("sending the request")?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf).await.context("reading the response")?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status(&head)
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status(head: &[u8]) -> anyhow::Result<u16> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    match (words.next(), words.next().and_then(|code| code.parse().ok())) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => Ok(code),
        _ => bail!("not an HTTP status line: {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_status_lines_parse() {
        let split = |url| split_url(url).map(|(a, p)| (a, p.to_string())).ok();
        assert_eq!(
            split("http://127.0.0.1:9100/metrics"),
            Some(("127.0.0.1:9100".into(), "/metrics".into()))
        );
        assert_eq!(split("http://[::1]/"), Some(("[::1]:80".into(), "/".into())));
        assert_eq!(split("http://host"), Some(("host:80".into(), "/".into())));
        assert_eq!(split("https://host/"), None);
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n").ok(), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Busy\r\n").ok(), Some(503));
        assert!(parse_status(b"SSH-2.0-x\r\n").is_err());
    }
}
