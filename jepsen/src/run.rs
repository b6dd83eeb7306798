//! One fault-test scenario from start to verdict: a fresh bucket, the
//! workload on every gateway while the nemesis runs, every fault healed, a
//! recovery wait, final reads, the checkers, the garbage check once the
//! cluster is quiet, and a results directory (histories, faults, verdict,
//! plot).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use aws_sdk_s3::Client;
use serde::{Deserialize, Serialize};

use crate::checker::set::{check_set, SetReport};
use crate::checker::{check_events, CheckOptions, CheckResult};
use crate::control::Control;
use crate::history::{pair, write_jsonl, Event, Outcome};
use crate::nemesis::{self, FaultInterval, NemesisKind, Schedule};
use crate::workload::{list_objects, Workload, WorkloadConfig};
use crate::Register;

/// What `deploy/cluster.sh up` writes to `deploy/.cluster/credentials.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Credentials {
    pub s3_endpoints: Vec<String>,
    pub access_key: String,
    pub secret_key: String,
    #[serde(default = "default_region")]
    pub region: String,
}

fn default_region() -> String {
    "us-east-1".into()
}

impl Credentials {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// One client per gateway: short timeouts and no retries, since a
    /// retried conditional write would corrupt the history.
    pub fn clients(&self) -> Vec<Client> {
        let options = tessera_cli::bench_s3::S3ClientOptions {
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(10),
            max_attempts: 1,
        };
        self.s3_endpoints
            .iter()
            .map(|endpoint| {
                tessera_cli::bench_s3::s3_client_with(
                    endpoint,
                    &self.access_key,
                    &self.secret_key,
                    &self.region,
                    options,
                )
            })
            .collect()
    }
}

/// One scenario to run.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub nemesis: NemesisKind,
    pub duration: Duration,
    pub schedule: Schedule,
    pub workload: WorkloadConfig,
    /// How long to wait for the GC and delete queues to drain afterwards.
    pub quiesce_max: Duration,
}

/// The garbage check after quiescence (DESIGN §8).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GarbageReport {
    pub valid: bool,
    pub gc_entries: u64,
    /// Live guard entries over every name server (`ns_guard_entries`).
    pub guard_entries: u64,
    pub reserved_bytes: u64,
    pub live_bytes: u64,
    /// Sizes of every object every bucket lists.
    pub expected_live_bytes: u64,
    pub waited_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Register verdict and operation counts.
#[derive(Clone, Debug, Serialize)]
pub struct RegisterReport {
    pub valid: bool,
    /// `linearizable`, or what was wrong.
    pub result: String,
    pub keys: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct IntegrityReport {
    pub valid: bool,
    pub violations: Vec<String>,
    pub large_objects: usize,
    pub large_acknowledged: usize,
}

/// Everything a scenario concluded.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub scenario: NemesisKind,
    pub valid: bool,
    pub duration_s: f64,
    pub register: RegisterReport,
    pub set: SetReport,
    pub integrity: IntegrityReport,
    pub garbage: GarbageReport,
    pub faults: Vec<FaultInterval>,
    /// Whether the faults took effect (see [`faults_felt`]).
    pub faults_felt: FaultsFelt,
    /// What the cluster itself counted during the run ([`OBSERVED_COUNTERS`],
    /// summed over nodes; a restarted node's count starts again at zero).
    pub cluster_counters: std::collections::BTreeMap<String, f64>,
    pub results_dir: PathBuf,
}

/// Counters that show the faults were felt: corrupt blocks the chunk
/// servers found, reads decoded from parity, fragments rebuilt.
pub const OBSERVED_COUNTERS: &[&str] = &[
    "chunk_corrupt_blocks_total",
    "os_degraded_reads_total",
    "os_repaired_fragments_total",
];

/// Whether a scenario's faults took effect: a run whose faults all failed
/// to be inflicted, or whose chunk damage no server ever noticed, proved
/// nothing and is not valid.
#[derive(Clone, Debug, Serialize)]
pub struct FaultsFelt {
    pub valid: bool,
    pub why: String,
}

/// Judges `faults` of a `kind` scenario and what the cluster counted.
pub fn faults_felt(
    kind: NemesisKind,
    faults: &[FaultInterval],
    counters: &std::collections::BTreeMap<String, f64>,
) -> FaultsFelt {
    let inflicted = faults.iter().filter(|f| f.error.is_none()).count();
    let felt = |valid: bool, why: String| FaultsFelt { valid, why };
    if kind == NemesisKind::None {
        return felt(true, "no faults by design".into());
    }
    if inflicted == 0 {
        return felt(false, format!("none of {} faults was inflicted cleanly", faults.len()));
    }
    let corrupt_blocks = counters.get("chunk_corrupt_blocks_total").copied().unwrap_or(0.0);
    if kind == NemesisKind::Corrupt && corrupt_blocks < 1.0 {
        return felt(
            false,
            "chunk files were damaged but no server found a corrupt block".into(),
        );
    }
    felt(
        true,
        format!("{inflicted} of {} faults inflicted cleanly", faults.len()),
    )
}

/// Runs `scenario` against the cluster and writes its results under
/// `results_root`.
pub async fn run_scenario(
    control: Arc<dyn Control>,
    credentials: &Credentials,
    scenario: &Scenario,
    results_root: &Path,
) -> anyhow::Result<Verdict> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = format!("{stamp}-{:?}", scenario.nemesis).to_lowercase();
    let dir = results_root.join(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let clients = credentials.clients();
    anyhow::ensure!(!clients.is_empty(), "the credentials name no S3 endpoint");
    let bucket = format!("jepsen-{name}");
    create_bucket(&clients[0], &bucket, &credentials.region).await?;

    let counting = Arc::clone(&control);
    let counters_before = tokio::task::spawn_blocking(move || counting.counter_totals(OBSERVED_COUNTERS))
        .await
        .context("reading the cluster's counters")?;
    let workload = Workload::new(scenario.workload, clients.clone(), bucket);
    let base = workload.register.started();
    let deadline = Instant::now() + scenario.duration;
    let nemesis = tokio::spawn(nemesis::run(
        Arc::clone(&control),
        scenario.nemesis,
        scenario.schedule,
        base,
        deadline,
        scenario.workload.seed,
    ));
    workload.run(deadline).await;
    let faults = nemesis.await.context("joining the nemesis")?;
    nemesis::heal_all(Arc::clone(&control))
        .await
        .context("healing every fault")?;
    let duration_s = base.elapsed().as_secs_f64();

    wait_until_serving(&clients, Duration::from_secs(90)).await;
    workload.final_register_reads().await;
    workload.final_set_read(Duration::from_secs(60)).await;
    let (large_objects, large_acknowledged) = workload.check_large_objects().await;

    let register_events = workload.register.events();
    let set_events = workload.set.events();
    let register = check_register(&register_events)?;
    let set = check_set(&pair(&set_events).context("pairing the set history")?);
    let violations = workload.integrity_violations();
    let integrity = IntegrityReport {
        valid: violations.is_empty(),
        violations,
        large_objects,
        large_acknowledged,
    };
    let garbage = check_garbage(&*control, &clients[0], scenario.quiesce_max).await;
    let counting = Arc::clone(&control);
    let mut cluster_counters = tokio::task::spawn_blocking(move || counting.counter_totals(OBSERVED_COUNTERS))
        .await
        .context("reading the cluster's counters")?;
    for (name, total) in &mut cluster_counters {
        // A node restarted during the run counts from zero again.
        *total = (*total - counters_before.get(name).copied().unwrap_or(0.0)).max(0.0);
    }
    let faults_felt = faults_felt(scenario.nemesis, &faults, &cluster_counters);
    let verdict = Verdict {
        scenario: scenario.nemesis,
        valid: register.valid && set.valid && integrity.valid && garbage.valid && faults_felt.valid,
        duration_s,
        register,
        set,
        integrity,
        garbage,
        faults,
        faults_felt,
        cluster_counters,
        results_dir: dir.clone(),
    };
    write_results(&dir, &verdict, &register_events, &set_events)?;
    Ok(verdict)
}

async fn create_bucket(client: &Client, bucket: &str, region: &str) -> anyhow::Result<()> {
    let mut request = client.create_bucket().bucket(bucket);
    if region != "us-east-1" {
        let location = aws_sdk_s3::types::BucketLocationConstraint::from(region);
        let config = aws_sdk_s3::types::CreateBucketConfiguration::builder()
            .location_constraint(location)
            .build();
        request = request.create_bucket_configuration(config);
    }
    request
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("creating bucket {bucket}: {}", crate::s3ops::describe(&e)))?;
    Ok(())
}

/// Waits until every gateway lists buckets again (or `patience` ends).
async fn wait_until_serving(clients: &[Client], patience: Duration) {
    let until = Instant::now() + patience;
    for client in clients {
        while client.list_buckets().send().await.is_err() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn check_register(events: &[Event]) -> anyhow::Result<RegisterReport> {
    let report = check_events(&Register, events, &CheckOptions::default()).context("checking the register history")?;
    let ops = pair(events).context("pairing the register history")?;
    let count = |outcome: Outcome| ops.iter().filter(|op| op.outcome == outcome).count();
    Ok(RegisterReport {
        valid: report.result.is_linearizable(),
        result: match &report.result {
            CheckResult::Linearizable => "linearizable".into(),
            other => other.to_string(),
        },
        keys: report.keys.len(),
        ok: count(Outcome::Ok),
        fail: count(Outcome::Fail),
        info: count(Outcome::Info),
    })
}

/// Aborts incomplete multipart uploads (they hold space by design), then
/// polls `tessera admin status` until no GC entry or reservation remains and
/// the live bytes equal the listed objects' sizes, or `patience` ends.
async fn check_garbage(control: &dyn Control, client: &Client, patience: Duration) -> GarbageReport {
    let started = Instant::now();
    let mut report = GarbageReport::default();
    if let Err(e) = abort_incomplete_uploads(client).await {
        report.error = Some(e);
        return report;
    }
    loop {
        match accounting(control, client).await {
            Ok(now) => report = now,
            Err(e) => report.error = Some(format!("{e:#}")),
        }
        report.waited_s = started.elapsed().as_secs_f64();
        report.valid = report.error.is_none()
            && report.gc_entries == 0
            && report.guard_entries == 0
            && report.reserved_bytes == 0
            && report.live_bytes == report.expected_live_bytes;
        if report.valid || started.elapsed() > patience {
            return report;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

async fn accounting(control: &dyn Control, client: &Client) -> anyhow::Result<GarbageReport> {
    let expected_live_bytes = listed_bytes(client).await?;
    let (status, guards) = tokio::task::block_in_place(|| {
        let guards = control.counter_totals(&["ns_guard_entries"]);
        control.admin(&["status"]).map(|status| (status, guards))
    })?;
    let status: serde_json::Value = serde_json::from_str(status.trim()).context("parsing admin status")?;
    let partitions = status["partitions"]
        .as_array()
        .context("admin status lists no partitions")?;
    let mut report = GarbageReport {
        expected_live_bytes,
        guard_entries: guards.get("ns_guard_entries").copied().unwrap_or(0.0) as u64,
        ..GarbageReport::default()
    };
    for p in partitions {
        if let Some(error) = p.get("error") {
            anyhow::bail!("partition {} is unavailable: {error}", p["partition"]);
        }
        report.gc_entries += p["gc_entries"].as_u64().unwrap_or(0);
        report.reserved_bytes += p["reserved_bytes"].as_u64().unwrap_or(0);
        report.live_bytes += p["live_bytes"].as_u64().unwrap_or(0);
    }
    Ok(report)
}

async fn listed_bytes(client: &Client) -> anyhow::Result<u64> {
    let buckets = client
        .list_buckets()
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("listing buckets: {}", crate::s3ops::describe(&e)))?;
    let mut total = 0;
    for bucket in buckets.buckets() {
        let name = bucket.name().unwrap_or_default();
        let objects = list_objects(client, name, "").await.map_err(anyhow::Error::msg)?;
        total += objects.iter().map(|(_, size)| size).sum::<u64>();
    }
    Ok(total)
}

async fn abort_incomplete_uploads(client: &Client) -> Result<(), String> {
    let buckets = client
        .list_buckets()
        .send()
        .await
        .map_err(|e| crate::s3ops::describe(&e))?;
    for bucket in buckets.buckets() {
        let name = bucket.name().unwrap_or_default();
        let uploads = client
            .list_multipart_uploads()
            .bucket(name)
            .send()
            .await
            .map_err(|e| crate::s3ops::describe(&e))?;
        for upload in uploads.uploads() {
            client
                .abort_multipart_upload()
                .bucket(name)
                .key(upload.key().unwrap_or_default())
                .upload_id(upload.upload_id().unwrap_or_default())
                .send()
                .await
                .map_err(|e| crate::s3ops::describe(&e))?;
        }
    }
    Ok(())
}

fn write_results(dir: &Path, verdict: &Verdict, register: &[Event], set: &[Event]) -> anyhow::Result<()> {
    let create = |name: &str| {
        let path = dir.join(name);
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
    };
    write_jsonl(register, std::io::BufWriter::new(create("register.jsonl")?))
        .context("writing the register history")?;
    write_jsonl(set, std::io::BufWriter::new(create("set.jsonl")?)).context("writing the set history")?;
    let json = serde_json::to_string_pretty(verdict).context("encoding the verdict")?;
    std::fs::write(dir.join("verdict.json"), json + "\n").context("writing verdict.json")?;
    let title = format!(
        "tessera jepsen: {:?}, {}",
        verdict.scenario,
        if verdict.valid { "valid" } else { "INVALID" }
    );
    let svg = crate::plot::render(&title, &[register, set], &verdict.faults, verdict.duration_s);
    std::fs::write(dir.join("latency.svg"), svg).context("writing latency.svg")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn interval(error: Option<&str>) -> FaultInterval {
        FaultInterval {
            kind: NemesisKind::Corrupt,
            target: "corrupt 3 chunk files of cs1".into(),
            start_s: 5.0,
            end_s: 15.0,
            error: error.map(String::from),
        }
    }

    #[test]
    fn faults_that_were_never_inflicted_or_never_noticed_prove_nothing() {
        let found = BTreeMap::from([("chunk_corrupt_blocks_total".to_string(), 3.0)]);
        let nothing_found = BTreeMap::from([("chunk_corrupt_blocks_total".to_string(), 0.0)]);
        let clean = [interval(None), interval(Some("inflicting: docker failed"))];
        let failed = [interval(Some("inflicting: docker failed"))];
        assert!(faults_felt(NemesisKind::Corrupt, &clean, &found).valid);
        assert!(!faults_felt(NemesisKind::Corrupt, &clean, &nothing_found).valid);
        assert!(!faults_felt(NemesisKind::Kill, &failed, &found).valid);
        assert!(!faults_felt(NemesisKind::Kill, &[], &found).valid);
        assert!(faults_felt(NemesisKind::Kill, &clean, &nothing_found).valid);
        assert!(faults_felt(NemesisKind::None, &[], &nothing_found).valid);
    }
}
