//! `tessera bench s3`: what an S3 endpoint delivers to an ordinary client.
//! It owns the client ([`s3_client`], the official AWS SDK with path-style
//! addressing, so it measures our gateway and a peer server the same way)
//! and the measurements: 4 KiB PUT and GET rates with 1 and 16 clients,
//! the small-GET latency, and single-stream PUT and GET of one large
//! object, against the reference measured in the same run: one core's MD5
//! rate over the same bytes (the ETag a single-stream PUT must compute
//! serially, DESIGN §10). Every GET is checked byte for byte, the objects
//! written are deleted at the end, and any failed operation fails the run.
//!
//! Prints one line per measurement and a JSON summary with ratios.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls;
use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

const SMALL_SIZE_BYTES: usize = 4096;
const MANY_CLIENTS: usize = 16;
const MIB: usize = 1 << 20;
const MB: f64 = 1e6;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// From sending a request to its response head, so it covers a large
/// PUT's upload.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const MD5_MIN_DURATION: Duration = Duration::from_millis(500);

#[derive(clap::Args, Debug)]
pub struct S3BenchArgs {
    /// The S3 endpoint, e.g. http://127.0.0.1:9000 (path-style addressing).
    #[arg(long)]
    endpoint: String,
    /// Access key id the requests are signed with.
    #[arg(long)]
    access_key: String,
    /// Secret access key the requests are signed with.
    #[arg(long)]
    secret_key: String,
    /// Bucket the objects go to (created if missing).
    #[arg(long, default_value = "tessera-bench")]
    bucket: String,
    /// Region the requests are signed for.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Seconds per small-object workload.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Size of the large object in MiB.
    #[arg(long, default_value_t = 64)]
    large_mib: usize,
    /// A directory on the disk the endpoint stores to (for `tessera dev`,
    /// its --data): measures that disk's sequential write of the bytes a
    /// large PUT stores, as a second reference.
    #[arg(long)]
    disk_dir: Option<std::path::PathBuf>,
    /// Bytes stored per byte of object: (k+m)/k of the bucket's EC policy.
    #[arg(long, default_value_t = 1.5)]
    disk_amplification: f64,
}

/// How patient an [`s3_client_with`] client is.
#[derive(Clone, Copy, Debug)]
pub struct S3ClientOptions {
    /// To establish a connection.
    pub connect_timeout: Duration,
    /// From sending a request to its response head.
    pub read_timeout: Duration,
    /// Attempts per request, the first included (1: never retry).
    pub max_attempts: u32,
}

impl Default for S3ClientOptions {
    /// The benchmark's: generous timeouts, the SDK's default 3 attempts.
    fn default() -> Self {
        S3ClientOptions {
            connect_timeout: CONNECT_TIMEOUT,
            read_timeout: READ_TIMEOUT,
            max_attempts: 3,
        }
    }
}

/// An S3 client for `endpoint` (http or https) with path-style addressing,
/// static credentials, SigV4 for `region`, the SDK's default retries, and
/// checksums only where an operation requires them (not every S3 server
/// accepts the SDK's default CRC32 trailers).
pub fn s3_client(endpoint: &str, access_key: &str, secret_key: &str, region: &str) -> Client {
    s3_client_with(endpoint, access_key, secret_key, region, S3ClientOptions::default())
}

/// [`s3_client`] with explicit timeouts and retries.
pub fn s3_client_with(
    endpoint: &str,
    access_key: &str,
    secret_key: &str,
    region: &str,
    options: S3ClientOptions,
) -> Client {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(options.connect_timeout)
        .read_timeout(options.read_timeout)
        .build();
    let credentials = Credentials::new(access_key, secret_key, None, None, "tessera-static");
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(region.to_owned()))
        .credentials_provider(credentials)
        .force_path_style(true)
        .http_client(http_client)
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard().with_max_attempts(options.max_attempts))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(config)
}

pub async fn run(args: S3BenchArgs) -> anyhow::Result<()> {
    let client = s3_client(&args.endpoint, &args.access_key, &args.secret_key, &args.region);
    ensure_bucket(&client, &args.bucket, &args.region).await?;
    let bench = Arc::new(Bench::new(client, args.bucket));
    let duration = Duration::from_secs(args.seconds.max(1));
    let small = small_objects(&bench, duration).await;
    let disk = args
        .disk_dir
        .as_deref()
        .map(|dir| (dir, args.disk_amplification.max(1.0)));
    let large = large_object(&bench, args.large_mib.max(1) * MIB, disk).await;
    let cleanup = bench.delete_created().await;
    println!(
        "{:<40} {:>12} objects, {} failed",
        "deleted", cleanup.ops, cleanup.errors
    );
    let failures = Failures::of(&small, &large, &cleanup);
    let large = large.as_ref().ok();
    println!("{}", summary(&args.endpoint, &small, large, &cleanup, &failures));
    failures.into_result()
}

/// Creates `bucket` unless it exists and is ours.
async fn ensure_bucket(client: &Client, bucket: &str, region: &str) -> anyhow::Result<()> {
    if client.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(());
    }
    let mut create = client.create_bucket().bucket(bucket);
    if region != "us-east-1" {
        let location = CreateBucketConfiguration::builder()
            .location_constraint(BucketLocationConstraint::from(region))
            .build();
        create = create.create_bucket_configuration(location);
    }
    match create.send().await {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|e| e.is_bucket_already_owned_by_you()) => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("creating bucket {bucket}"))),
    }
}

/// One run's client and its objects: small objects are `prefix/small/N`
/// with a body derived from `seed` and N, so GETs are verified without
/// keeping every body.
struct Bench {
    client: Client,
    bucket: String,
    prefix: String,
    seed: u64,
    /// Small-object indexes handed out so far (each PUT takes the next).
    next_index: AtomicU64,
    /// Small-object indexes whose PUT succeeded.
    written: Mutex<Vec<u64>>,
}

/// A GET returned bytes other than the ones PUT under that key.
#[derive(Debug, thiserror::Error)]
#[error("GET {key} returned {got_bytes} bytes that differ from the {expected_bytes} bytes PUT")]
struct BodyMismatch {
    key: String,
    got_bytes: usize,
    expected_bytes: usize,
}

impl Bench {
    fn new(client: Client, bucket: String) -> Self {
        let seed = rand::random::<u64>();
        Self {
            client,
            bucket,
            prefix: format!("bench-{seed:016x}"),
            seed,
            next_index: AtomicU64::new(0),
            written: Mutex::new(Vec::new()),
        }
    }

    fn small_key(&self, index: u64) -> String {
        format!("{}/small/{index:010}", self.prefix)
    }

    fn large_key(&self) -> String {
        format!("{}/large", self.prefix)
    }

    /// PUTs the next small object.
    async fn put_small(&self) -> anyhow::Result<()> {
        let index = self.next_index.fetch_add(1, Ordering::Relaxed);
        self.put(&self.small_key(index), small_body(self.seed, index)).await?;
        self.written.lock().unwrap_or_else(PoisonError::into_inner).push(index);
        Ok(())
    }

    /// GETs small object `index` and checks its bytes.
    async fn get_small(&self, index: u64) -> anyhow::Result<()> {
        let key = self.small_key(index);
        let got = self.get(&key).await?;
        verify(key, &got, &small_body(self.seed, index))
    }

    /// PUTs one object; returns its ETag as the server sent it.
    async fn put(&self, key: &str, body: Bytes) -> anyhow::Result<Option<String>> {
        let output = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .with_context(|| format!("putting object {key}"))?;
        Ok(output.e_tag)
    }

    async fn get(&self, key: &str) -> anyhow::Result<Bytes> {
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .with_context(|| format!("getting object {key}"))?;
        let body = output
            .body
            .collect()
            .await
            .with_context(|| format!("reading the body of object {key}"))?;
        Ok(body.into_bytes())
    }

    async fn delete(&self, key: String) -> anyhow::Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .with_context(|| format!("deleting object {key}"))?;
        Ok(())
    }

    /// Deletes every object this run tried to PUT, `MANY_CLIENTS` at a time.
    async fn delete_created(&self) -> RunStats {
        let started = Instant::now();
        let count = self.next_index.load(Ordering::Relaxed);
        let keys = (0..count).map(|index| self.small_key(index)).chain([self.large_key()]);
        let mut results = futures::stream::iter(keys)
            .map(|key| async move {
                let started = Instant::now();
                (started, self.delete(key).await)
            })
            .buffer_unordered(MANY_CLIENTS);
        let mut stats = RunStats::default();
        while let Some((op_started, result)) = results.next().await {
            stats.record(op_started.elapsed(), result);
        }
        stats.elapsed = started.elapsed();
        stats
    }

    /// The small objects PUT so far, in index order.
    fn written(&self) -> Vec<u64> {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner).clone();
        written.sort_unstable();
        written
    }
}

fn verify(key: String, got: &[u8], expected: &[u8]) -> anyhow::Result<()> {
    if got == expected {
        return Ok(());
    }
    Err(BodyMismatch {
        key,
        got_bytes: got.len(),
        expected_bytes: expected.len(),
    }
    .into())
}

/// The body of small object `index`: pseudo-random bytes fixed by `seed`
/// and `index`.
fn small_body(seed: u64, index: u64) -> Bytes {
    let mut rng = SmallRng::seed_from_u64(seed ^ index);
    let mut body = vec![0; SMALL_SIZE_BYTES];
    rng.fill_bytes(&mut body);
    Bytes::from(body)
}

/// Counts and timings of one workload (all its clients together).
#[derive(Default)]
struct RunStats {
    /// Operations that succeeded.
    ops: u64,
    errors: u64,
    /// Errors that were GETs returning the wrong bytes.
    mismatches: u64,
    first_error: Option<String>,
    elapsed: Duration,
    /// One per successful operation, in completion order.
    latencies: Vec<Duration>,
}

impl RunStats {
    fn record(&mut self, latency: Duration, result: anyhow::Result<()>) {
        match result {
            Ok(()) => {
                self.ops += 1;
                self.latencies.push(latency);
            }
            Err(e) => {
                self.mismatches += u64::from(e.is::<BodyMismatch>());
                self.note_error(format!("{e:#}"));
            }
        }
    }

    fn note_error(&mut self, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert(message);
    }

    fn merge(&mut self, other: RunStats) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.mismatches += other.mismatches;
        if let Some(message) = other.first_error {
            self.first_error.get_or_insert(message);
        }
        self.latencies.extend(other.latencies);
    }

    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`th percentile latency in milliseconds (0 without samples).
    fn latency_ms(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        percentile(&sorted, p).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }
}

/// Nearest-rank percentile of ascending `sorted` (`p` in 0..=100).
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len().max(1)) - 1;
    sorted.get(index).copied()
}

/// Runs `op` back to back from `clients` tokio tasks until `duration` has
/// passed (an operation started before then finishes and counts).
async fn timed_run<F, Fut>(clients: usize, duration: Duration, op: F) -> RunStats
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + duration;
    let tasks = (0..clients).map(|_| tokio::spawn(client_loop(op.clone(), deadline)));
    let mut stats = RunStats::default();
    for joined in futures::future::join_all(tasks).await {
        match joined {
            Ok(client) => stats.merge(client),
            Err(e) => stats.note_error(format!("joining a client task: {e}")),
        }
    }
    stats.elapsed = started.elapsed();
    stats
}

async fn client_loop<F, Fut>(op: F, deadline: Instant) -> RunStats
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut stats = RunStats::default();
    while Instant::now() < deadline {
        let started = Instant::now();
        let result = op().await;
        stats.record(started.elapsed(), result);
    }
    stats
}

/// The four small-object workloads.
struct SmallResults {
    put_1: RunStats,
    put_many: RunStats,
    get_1: RunStats,
    get_many: RunStats,
}

impl SmallResults {
    fn runs(&self) -> [&RunStats; 4] {
        [&self.put_1, &self.put_many, &self.get_1, &self.get_many]
    }
}

async fn small_objects(bench: &Arc<Bench>, duration: Duration) -> SmallResults {
    let put_1 = small_puts(bench, 1, duration).await;
    report("PUT 4 KiB, 1 client", put_1.ops_per_s(), "ops/s");
    let put_many = small_puts(bench, MANY_CLIENTS, duration).await;
    report("PUT 4 KiB, 16 clients", put_many.ops_per_s(), "ops/s");
    let keys = Arc::new(bench.written());
    let get_1 = small_gets(bench, &keys, 1, duration).await;
    report("GET 4 KiB, 1 client", get_1.ops_per_s(), "ops/s");
    report("GET 4 KiB latency p50, 1 client", get_1.latency_ms(50.0), "ms");
    report("GET 4 KiB latency p99, 1 client", get_1.latency_ms(99.0), "ms");
    let get_many = small_gets(bench, &keys, MANY_CLIENTS, duration).await;
    report("GET 4 KiB, 16 clients", get_many.ops_per_s(), "ops/s");
    SmallResults {
        put_1,
        put_many,
        get_1,
        get_many,
    }
}

async fn small_puts(bench: &Arc<Bench>, clients: usize, duration: Duration) -> RunStats {
    let bench = Arc::clone(bench);
    timed_run(clients, duration, move || {
        let bench = Arc::clone(&bench);
        async move { bench.put_small().await }
    })
    .await
}

/// GETs `keys` round robin (shared by all clients), each checked.
async fn small_gets(bench: &Arc<Bench>, keys: &Arc<Vec<u64>>, clients: usize, duration: Duration) -> RunStats {
    if keys.is_empty() {
        let mut stats = RunStats::default();
        stats.note_error("no small object was written, so none can be read".to_owned());
        return stats;
    }
    let (bench, keys) = (Arc::clone(bench), Arc::clone(keys));
    let cursor = Arc::new(AtomicU64::new(0));
    timed_run(clients, duration, move || {
        let (bench, keys) = (Arc::clone(&bench), Arc::clone(&keys));
        let at = cursor.fetch_add(1, Ordering::Relaxed) as usize % keys.len();
        async move { bench.get_small(keys[at]).await }
    })
    .await
}

/// The single-stream large-object workload and its MD5 reference.
struct LargeResults {
    size_bytes: usize,
    put_mb_s: f64,
    get_mb_s: f64,
    /// The reference disk's write rate of the stored bytes, if measured.
    disk_mb_s: Option<f64>,
    md5_mb_s: f64,
    etag_is_md5: bool,
}

async fn large_object(
    bench: &Bench,
    size_bytes: usize,
    disk: Option<(&std::path::Path, f64)>,
) -> anyhow::Result<LargeResults> {
    let data = random_bytes(size_bytes);
    let reference = data.clone();
    let (md5_mb_s, md5_hex) = tokio::task::spawn_blocking(move || md5_rate(&reference))
        .await
        .context("measuring the MD5 rate")?;
    let mib = size_bytes / MIB;
    report(&format!("MD5 of {mib} MiB, 1 core"), md5_mb_s, "MB/s");
    let key = bench.large_key();
    let started = Instant::now();
    let etag = bench.put(&key, data.clone()).await?;
    let put_mb_s = mb_s(size_bytes, started.elapsed());
    report(&format!("PUT {mib} MiB, 1 stream"), put_mb_s, "MB/s");
    println!("{:<40} {:>12.2}", "PUT 1 stream / MD5 1 core", put_mb_s / md5_mb_s);
    let mut disk_mb_s = None;
    if let Some((dir, amplification)) = disk {
        let stored_bytes = (size_bytes as f64 * amplification) as usize;
        let rate = disk_write_rate(dir, &data, stored_bytes)
            .with_context(|| format!("measuring the disk under {}", dir.display()))?;
        report(
            &format!("disk write {} MiB + fdatasync", stored_bytes / MIB),
            rate,
            "MB/s",
        );
        // The object rate that disk allows when it stores `amplification` bytes per byte.
        println!(
            "{:<40} {:>12.2}",
            "PUT 1 stream / (disk / amplification)",
            put_mb_s * amplification / rate
        );
        disk_mb_s = Some(rate);
    }
    let started = Instant::now();
    let got = bench.get(&key).await?;
    let get_mb_s = mb_s(size_bytes, started.elapsed());
    verify(key, &got, &data)?;
    report(&format!("GET {mib} MiB, 1 stream"), get_mb_s, "MB/s");
    Ok(LargeResults {
        size_bytes,
        put_mb_s,
        get_mb_s,
        md5_mb_s,
        disk_mb_s,
        etag_is_md5: etag.is_some_and(|etag| etag.trim_matches('"') == md5_hex),
    })
}

/// Sequential write of `stored_bytes` (repeating `data`) to a new file in
/// `dir`, with one fdatasync at the end, in MB/s.
fn disk_write_rate(dir: &std::path::Path, data: &[u8], stored_bytes: usize) -> anyhow::Result<f64> {
    use std::io::Write;
    let file = tempfile::NamedTempFile::new_in(dir).context("creating a scratch file")?;
    let mut writer = file.as_file();
    let started = Instant::now();
    let mut written = 0;
    while written < stored_bytes {
        let n = (stored_bytes - written).min(data.len());
        writer.write_all(&data[..n]).context("writing")?;
        written += n;
    }
    writer.sync_data().context("fdatasync")?;
    Ok(mb_s(stored_bytes, started.elapsed()))
}

fn random_bytes(size_bytes: usize) -> Bytes {
    let mut data = vec![0; size_bytes];
    rand::rng().fill_bytes(&mut data);
    Bytes::from(data)
}

/// One core's MD5 rate over `data` in MB/s (whole passes for at least
/// `MD5_MIN_DURATION`), and the digest in hex.
fn md5_rate(data: &[u8]) -> (f64, String) {
    let started = Instant::now();
    let mut passes = 0;
    let digest = loop {
        let digest = Md5::digest(data);
        passes += 1;
        if started.elapsed() >= MD5_MIN_DURATION {
            break digest;
        }
    };
    let rate = mb_s(passes * data.len(), started.elapsed());
    (rate, digest.iter().map(|byte| format!("{byte:02x}")).collect())
}

fn mb_s(size_bytes: usize, elapsed: Duration) -> f64 {
    size_bytes as f64 / MB / elapsed.as_secs_f64().max(1e-9)
}

fn report(name: &str, value: f64, unit: &str) {
    println!("{name:<40} {value:>12.1} {unit}");
}

/// Every failed operation of the run.
#[derive(Default)]
struct Failures {
    errors: u64,
    mismatches: u64,
    first_errors: Vec<String>,
}

impl Failures {
    fn of(small: &SmallResults, large: &anyhow::Result<LargeResults>, cleanup: &RunStats) -> Self {
        let mut failures = Self::default();
        for run in small.runs().into_iter().chain([cleanup]) {
            failures.errors += run.errors;
            failures.mismatches += run.mismatches;
            failures.first_errors.extend(run.first_error.clone());
        }
        if let Err(e) = large {
            failures.errors += 1;
            failures.mismatches += u64::from(e.is::<BodyMismatch>());
            failures.first_errors.push(format!("large object: {e:#}"));
        }
        failures
    }

    fn into_result(self) -> anyhow::Result<()> {
        if self.errors == 0 {
            return Ok(());
        }
        anyhow::bail!(
            "{} operations failed ({} returned wrong bytes); first errors: {}",
            self.errors,
            self.mismatches,
            self.first_errors.join("; ")
        )
    }
}

fn summary(
    endpoint: &str,
    small: &SmallResults,
    large: Option<&LargeResults>,
    cleanup: &RunStats,
    failures: &Failures,
) -> serde_json::Value {
    serde_json::json!({
        "endpoint": endpoint,
        "small_size_bytes": SMALL_SIZE_BYTES,
        "put_4kib_1_per_s": small.put_1.ops_per_s(),
        "put_4kib_16_per_s": small.put_many.ops_per_s(),
        "get_4kib_1_per_s": small.get_1.ops_per_s(),
        "get_4kib_16_per_s": small.get_many.ops_per_s(),
        "get_4kib_1_p50_ms": small.get_1.latency_ms(50.0),
        "get_4kib_1_p99_ms": small.get_1.latency_ms(99.0),
        "put_4kib_1_p50_ms": small.put_1.latency_ms(50.0),
        "put_4kib_1_p99_ms": small.put_1.latency_ms(99.0),
        "ratio_put_16_vs_1": small.put_many.ops_per_s() / small.put_1.ops_per_s().max(1e-9),
        "ratio_get_16_vs_1": small.get_many.ops_per_s() / small.get_1.ops_per_s().max(1e-9),
        "large_size_bytes": large.map(|l| l.size_bytes),
        "large_put_mb_s": large.map(|l| l.put_mb_s),
        "large_get_mb_s": large.map(|l| l.get_mb_s),
        "md5_mb_s": large.map(|l| l.md5_mb_s),
        "ratio_large_put_vs_md5": large.map(|l| l.put_mb_s / l.md5_mb_s),
        "ratio_large_get_vs_md5": large.map(|l| l.get_mb_s / l.md5_mb_s),
        "disk_write_mb_s": large.and_then(|l| l.disk_mb_s),
        "large_etag_is_md5": large.map(|l| l.etag_is_md5),
        "objects_deleted": cleanup.ops,
        "delete_errors": cleanup.errors,
        "errors": failures.errors,
        "mismatches": failures.mismatches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: impl IntoIterator<Item = u64>) -> Vec<Duration> {
        values.into_iter().map(Duration::from_millis).collect()
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let sorted = ms(1..=100);
        assert_eq!(percentile(&sorted, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&sorted, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&sorted, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&sorted, 0.0), Some(Duration::from_millis(1)));
        let few = ms([3, 7, 9]);
        assert_eq!(percentile(&few, 50.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&few, 99.0), Some(Duration::from_millis(9)));
    }

    #[test]
    fn percentile_of_nothing_is_none() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&ms([4]), 99.0), Some(Duration::from_millis(4)));
    }

    #[test]
    fn small_bodies_are_fixed_by_seed_and_index() {
        assert_eq!(small_body(7, 1), small_body(7, 1));
        assert_ne!(small_body(7, 1), small_body(7, 2));
        assert_ne!(small_body(7, 1), small_body(8, 1));
        assert_eq!(small_body(7, 1).len(), SMALL_SIZE_BYTES);
    }

    #[test]
    fn mismatches_are_counted_as_errors() {
        let mut stats = RunStats::default();
        stats.record(Duration::from_millis(1), verify("k".to_owned(), b"ab", b"ab"));
        stats.record(Duration::from_millis(1), verify("k".to_owned(), b"ab", b"ac"));
        stats.record(Duration::from_millis(1), Err(anyhow::anyhow!("connection refused")));
        assert_eq!((stats.ops, stats.errors, stats.mismatches), (1, 2, 1));
        assert_eq!(
            stats.first_error.as_deref(),
            Some("GET k returned 2 bytes that differ from the 2 bytes PUT")
        );
    }
}
