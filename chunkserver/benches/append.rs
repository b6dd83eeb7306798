//! Append throughput of `FileChunkStore` against a plain file, in one run and
//! one temp directory on a real disk (`$TESSERA_BENCH_DIR`, default
//! `/var/tmp`), plus crc32c vs blake3. A custom harness printing a table:
//! criterion's per-iteration model does not fit 32 concurrent appenders
//! sharing fsyncs.
//!
//! `cargo bench -p tessera-chunkserver --bench append` runs the measurement
//! (~2 minutes); without `--bench` (as `cargo test --all-targets` runs it)
//! it only smoke-tests each case briefly. `TESSERA_BENCH_CASES=a,c` picks
//! cases (`a,b,c` by default; `scaling` adds 1..32 appenders per sync mode).
//!
//! Goals: sequential 1 MiB appends >= 0.8x the plain file; 32 concurrent
//! 4 KiB appenders >= 5x one appender.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_chunkserver::file_store::{FileChunkStore, FileStoreConfig, SyncMode};
use tessera_chunkserver::store::ChunkStore;
use tessera_common::ids::{ChunkId, Epoch};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const EPOCH: Epoch = Epoch(1);
/// Bytes per plain file or chunk before moving to the next (the default
/// sealed chunk size).
const ROLL_BYTES: u64 = 256 * MIB as u64;

/// How long each case runs: `slices` time slices of `slice_time` per
/// contender, alternating between contenders.
struct Plan {
    slice_time: Duration,
    slices: u32,
    checksum_time: Duration,
}

impl Plan {
    fn new(measure: bool) -> Self {
        if measure {
            Plan {
                slice_time: Duration::from_millis(500),
                slices: 12,
                checksum_time: Duration::from_millis(500),
            }
        } else {
            Plan {
                slice_time: Duration::from_millis(20),
                slices: 2,
                checksum_time: Duration::from_millis(10),
            }
        }
    }
}

/// Operations completed in a time span.
#[derive(Clone, Copy, Default)]
struct Rate {
    ops: u64,
    bytes: u64,
    elapsed: Duration,
}

impl Rate {
    fn add(&mut self, other: Rate) {
        self.ops += other.ops;
        self.bytes += other.bytes;
        self.elapsed += other.elapsed;
    }

    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

fn main() {
    let measure = std::env::args().any(|arg| arg == "--bench");
    let plan = Plan::new(measure);
    let base = std::env::var_os("TESSERA_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/tmp".into());
    let dir = tempfile::tempdir_in(&base).expect("bench temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "append bench in {} ({} mode)",
        dir.path().display(),
        if measure { "measure" } else { "smoke" }
    );

    checksums(&plan);
    let data = dir.path().to_path_buf();
    let cases = std::env::var("TESSERA_BENCH_CASES").unwrap_or_else(|_| "a,b,c".into());
    let wanted = |case: &str| cases.split(',').any(|wanted| wanted.trim() == case);
    runtime.block_on(async move {
        if wanted("a") {
            sequential(&plan, &data).await;
        }
        if wanted("b") {
            small_single(&plan, &data).await;
        }
        if wanted("c") {
            small_concurrent(&plan, &data).await;
        }
        if wanted("scaling") {
            scaling(&plan, &data).await;
        }
    });
}

fn checksums(plan: &Plan) {
    println!("\n## checksums, one core");
    for size in [4 * KIB, MIB] {
        let data = vec![0x5au8; size];
        let crc = throughput(plan.checksum_time, size, || {
            std::hint::black_box(crc32c::crc32c(std::hint::black_box(&data)));
        });
        let blake = throughput(plan.checksum_time, size, || {
            std::hint::black_box(blake3::hash(std::hint::black_box(&data)));
        });
        println!("{:>8}: crc32c {crc:6.2} GB/s   blake3 {blake:6.2} GB/s", human(size));
    }
}

/// GB/s of `work` over `size`-byte inputs.
fn throughput(time: Duration, size: usize, mut work: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < time {
        for _ in 0..64 {
            work();
        }
        count += 64;
    }
    count as f64 * size as f64 / 1e9 / started.elapsed().as_secs_f64()
}

fn human(size: usize) -> String {
    if size >= MIB {
        format!("{} MiB", size / MIB)
    } else {
        format!("{} KiB", size / KIB)
    }
}

async fn sequential(plan: &Plan, dir: &Path) {
    println!("\n## (a) sequential 1 MiB appends, one appender, each durable before the next");
    let (plain, store) = plain_vs_store(plan, dir, MIB).await;
    println!("plain file write+fdatasync: {:7.1} MB/s", plain.mb_per_sec());
    println!("chunk store append:        {:7.1} MB/s", store.mb_per_sec());
    let ratio = store.mb_per_sec() / plain.mb_per_sec();
    println!("ratio store/plain: {ratio:.2}x (goal >= 0.80x)");
}

async fn small_single(plan: &Plan, dir: &Path) {
    println!("\n## (b) 4 KiB appends, one appender");
    let (plain, store) = plain_vs_store(plan, dir, 4 * KIB).await;
    println!("plain file write+fdatasync: {:7.0} ops/s", plain.ops_per_sec());
    println!("chunk store append:        {:7.0} ops/s", store.ops_per_sec());
    println!("ratio store/plain: {:.2}x", store.ops_per_sec() / plain.ops_per_sec());
}

/// Plain file and store appending `size` bytes at a time, in alternating
/// time slices so both see the same device state (its write cache fills).
async fn plain_vs_store(plan: &Plan, dir: &Path, size: usize) -> (Rate, Rate) {
    let mut plain = PlainAppender::new(&dir.join(format!("plain-{size}")), size);
    let mut store = StoreAppender::new(&dir.join(format!("store-{size}")), size).await;
    let (mut plain_rate, mut store_rate) = (Rate::default(), Rate::default());
    for slice in 0..plan.slices {
        if slice % 2 == 0 {
            plain_rate.add(plain.run_for(plan.slice_time));
            store_rate.add(store.run_for(plan.slice_time).await);
        } else {
            store_rate.add(store.run_for(plan.slice_time).await);
            plain_rate.add(plain.run_for(plan.slice_time));
        }
    }
    plain.remove();
    store.remove();
    (plain_rate, store_rate)
}

async fn small_concurrent(plan: &Plan, dir: &Path) {
    println!("\n## (c) 4 KiB appenders on their own chunks, per sync mode");
    for mode in [SyncMode::Fdatasync, SyncMode::Syncfs] {
        let mut one = ConcurrentAppenders::new(&dir.join(format!("one-{mode:?}")), mode, 1).await;
        let mut many = ConcurrentAppenders::new(&dir.join(format!("many-{mode:?}")), mode, 32).await;
        let (mut one_rate, mut many_rate) = (Rate::default(), Rate::default());
        for _ in 0..plan.slices {
            one_rate.add(one.run_for(plan.slice_time).await);
            many_rate.add(many.run_for(plan.slice_time).await);
        }
        one.remove();
        many.remove();
        println!(
            "{mode:?}: 1 appender {:6.0} ops/s, 32 appenders {:6.0} ops/s, ratio {:.2}x (goal >= 5x)",
            one_rate.ops_per_sec(),
            many_rate.ops_per_sec(),
            many_rate.ops_per_sec() / one_rate.ops_per_sec()
        );
    }
}

/// Ops/s of 4 KiB appenders on their own chunks, 1 to 32 of them.
async fn scaling(plan: &Plan, dir: &Path) {
    println!("\n## scaling: 4 KiB appends/s by appenders on their own chunks");
    let counts = [1u64, 2, 4, 8, 16, 32];
    println!("{:>10} {}", "mode", counts.map(|count| format!("{count:>7}")).join(""));
    for mode in [SyncMode::Fdatasync, SyncMode::Syncfs] {
        let mut row = format!("{:>10} ", format!("{mode:?}"));
        for count in counts {
            let mut appenders =
                ConcurrentAppenders::new(&dir.join(format!("scaling-{mode:?}-{count}")), mode, count).await;
            let rate = appenders.run_for(plan.slice_time * 4).await;
            appenders.remove();
            row.push_str(&format!("{:>7.0}", rate.ops_per_sec()));
        }
        println!("{row}");
    }
}

/// `pwrite` + `fdatasync` of `size` bytes at a time into files of
/// [`ROLL_BYTES`].
struct PlainAppender {
    dir: PathBuf,
    block: Vec<u8>,
    file: Option<File>,
    ops: u64,
}

impl PlainAppender {
    fn new(dir: &Path, size: usize) -> Self {
        std::fs::create_dir(dir).expect("plain file dir");
        PlainAppender {
            dir: dir.to_path_buf(),
            block: vec![0xa5u8; size],
            file: None,
            ops: 0,
        }
    }

    fn run_for(&mut self, time: Duration) -> Rate {
        let size = self.block.len() as u64;
        let appends_per_file = ROLL_BYTES / size;
        let (started, ops_before) = (Instant::now(), self.ops);
        while started.elapsed() < time {
            let index = self.ops % appends_per_file;
            if index == 0 {
                let path = self.dir.join(format!("{}", self.ops / appends_per_file));
                self.file = Some(
                    File::options()
                        .write(true)
                        .create_new(true)
                        .open(path)
                        .expect("plain file"),
                );
            }
            let file = self.file.as_ref().expect("opened above");
            file.write_all_at(&self.block, index * size).expect("pwrite");
            file.sync_data().expect("fdatasync");
            self.ops += 1;
        }
        let ops = self.ops - ops_before;
        Rate {
            ops,
            bytes: ops * size,
            elapsed: started.elapsed(),
        }
    }

    fn remove(self) {
        std::fs::remove_dir_all(&self.dir).expect("remove plain files");
    }
}

async fn open_store(path: &Path, mode: SyncMode) -> FileChunkStore {
    let mut config = FileStoreConfig::with_disks([path.to_path_buf()]);
    config.sync_mode = mode;
    FileChunkStore::open(config).await.expect("open store")
}

/// One appender of `size` bytes at a time; a full chunk (at [`ROLL_BYTES`])
/// is sealed and the next one created.
struct StoreAppender {
    path: PathBuf,
    store: FileChunkStore,
    block: Bytes,
    ops: u64,
}

impl StoreAppender {
    async fn new(path: &Path, size: usize) -> Self {
        let store = open_store(path, SyncMode::Fdatasync).await;
        StoreAppender {
            path: path.to_path_buf(),
            store,
            block: Bytes::from(vec![0xa5u8; size]),
            ops: 0,
        }
    }

    async fn run_for(&mut self, time: Duration) -> Rate {
        let size = self.block.len() as u64;
        let appends_per_chunk = ROLL_BYTES / size;
        let (started, ops_before) = (Instant::now(), self.ops);
        while started.elapsed() < time {
            let (chunk, index) = (ChunkId(self.ops / appends_per_chunk), self.ops % appends_per_chunk);
            if index == 0 {
                self.store.create(chunk, EPOCH).await.expect("create");
            }
            self.store
                .append(chunk, index * size, EPOCH, self.block.clone())
                .await
                .expect("append");
            if index + 1 == appends_per_chunk {
                self.store.seal(chunk, EPOCH, None).await.expect("seal");
            }
            self.ops += 1;
        }
        let ops = self.ops - ops_before;
        Rate {
            ops,
            bytes: ops * size,
            elapsed: started.elapsed(),
        }
    }

    fn remove(self) {
        drop(self.store);
        std::fs::remove_dir_all(&self.path).expect("remove store dir");
    }
}

/// Tasks appending 4 KiB at a time, each to its own chunk.
struct ConcurrentAppenders {
    path: PathBuf,
    store: Arc<FileChunkStore>,
    /// Next offset of each appender's chunk.
    offsets: Vec<u64>,
}

impl ConcurrentAppenders {
    async fn new(path: &Path, mode: SyncMode, appenders: u64) -> Self {
        let store = Arc::new(open_store(path, mode).await);
        for appender in 0..appenders {
            store.create(ChunkId(appender), EPOCH).await.expect("create");
        }
        ConcurrentAppenders {
            path: path.to_path_buf(),
            store,
            offsets: vec![0; appenders as usize],
        }
    }

    async fn run_for(&mut self, time: Duration) -> Rate {
        let block = Bytes::from(vec![0xa5u8; 4 * KIB]);
        let started = Instant::now();
        let tasks: Vec<_> = self
            .offsets
            .iter()
            .enumerate()
            .map(|(appender, &offset)| {
                let (store, block) = (self.store.clone(), block.clone());
                tokio::spawn(async move {
                    let mut offset = offset;
                    while started.elapsed() < time {
                        let chunk = ChunkId(appender as u64);
                        store.append(chunk, offset, EPOCH, block.clone()).await.expect("append");
                        offset += block.len() as u64;
                    }
                    offset
                })
            })
            .collect();
        let mut ops = 0;
        for (task, offset) in tasks.into_iter().zip(self.offsets.iter_mut()) {
            let end = task.await.expect("appender task");
            ops += (end - *offset) / block.len() as u64;
            *offset = end;
        }
        Rate {
            ops,
            bytes: ops * block.len() as u64,
            elapsed: started.elapsed(),
        }
    }

    fn remove(self) {
        drop(self.store);
        std::fs::remove_dir_all(&self.path).expect("remove store dir");
    }
}
