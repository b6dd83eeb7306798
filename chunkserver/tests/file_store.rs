//! `FileChunkStore` on real files in temp directories: the `ChunkStore`
//! contract, crash recovery (torn tails, flipped bits, hostile files), group
//! commit under concurrency, and full disks (tmpfs, needs root).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_chunkserver::file_store::format::{self, RecordHeader, FILE_HEADER_BYTES, RECORD_HEADER_BYTES};
use tessera_chunkserver::file_store::{DiskConfig, FileChunkStore, FileStoreConfig, SyncMode};
use tessera_chunkserver::store::ChunkStore;
use tessera_common::chunk_api::ChunkError;
use tessera_common::ids::{ChunkId, Epoch};

const C1: ChunkId = ChunkId(0xc1);
const C2: ChunkId = ChunkId(0xc2);
const E1: Epoch = Epoch(1);

fn config(dir: &Path) -> FileStoreConfig {
    FileStoreConfig::with_disks([dir.to_path_buf()])
}

async fn open(config: &FileStoreConfig) -> FileChunkStore {
    FileChunkStore::open(config.clone()).await.expect("open store")
}

/// Deterministic, distinct-per-seed bytes.
fn pattern(seed: u64, len: usize) -> Bytes {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes[..]);
    Bytes::from(bytes)
}

fn chunk_file(dir: &Path, chunk: ChunkId) -> PathBuf {
    dir.join("chunks").join(format!("{:016x}.chunk", chunk.0))
}

fn append_raw(path: &Path, bytes: &[u8]) {
    let mut file = OpenOptions::new().append(true).open(path).expect("open chunk file");
    file.write_all(bytes).expect("append raw bytes");
}

fn flip_bit(path: &Path, pos: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open chunk file");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, pos).expect("read byte");
    byte[0] ^= 0x08;
    file.write_all_at(&byte, pos).expect("write byte");
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat chunk file").len()
}

/// File position of the data bytes of a record whose header is at
/// `record_pos` and which holds `len` bytes.
fn data_pos(record_pos: u64, len: u64) -> u64 {
    record_pos + RECORD_HEADER_BYTES + format::block_count(len) * format::BLOCK_CRC_BYTES
}

fn record_bytes(len: u64) -> u64 {
    data_pos(0, len) + len
}

/// Appends each piece in order, checking the returned length.
async fn append_all(store: &FileChunkStore, chunk: ChunkId, epoch: Epoch, pieces: &[Bytes]) -> Vec<u8> {
    let mut all = Vec::new();
    for piece in pieces {
        let info = store
            .append(chunk, all.len() as u64, epoch, piece.clone())
            .await
            .expect("append");
        all.extend_from_slice(piece);
        assert_eq!(info.length, all.len() as u64);
    }
    all
}

#[tokio::test]
async fn round_trip_create_append_read_stat_seal_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.append_bytes_max = 64 * 1024;
    config.chunk_bytes_max = 80 * 1024;
    let store = open(&config).await;

    let info = store.create(C1, E1).await.expect("create");
    assert_eq!((info.length, info.epoch, info.sealed), (0, E1, false));
    assert_eq!(store.create(C1, E1).await, Err(ChunkError::AlreadyExists(C1)));

    let pieces = [pattern(1, 5000), pattern(2, 4096), pattern(3, 10_000), pattern(4, 1)];
    let all = append_all(&store, C1, E1, &pieces).await;
    assert_eq!(store.stat(C1).await.expect("stat").length, all.len() as u64);
    assert_eq!(
        &store.read(C1, 0, all.len() as u64).await.expect("read all")[..],
        &all[..]
    );
    for (offset, len) in [
        (4990, 20),
        (0, 9096),
        (9000, 200),
        (4095, 2),
        (19_095, 1),
        (5000, 14_097),
        (7, 0),
    ] {
        let read = store.read(C1, offset, len).await.expect("read range");
        assert_eq!(
            &read[..],
            &all[offset as usize..(offset + len) as usize],
            "range {offset}+{len}"
        );
    }
    let length = all.len() as u64;
    assert!(matches!(
        store.read(C1, length - 1, 2).await,
        Err(ChunkError::OutOfRange { .. })
    ));
    assert!(matches!(
        store.read(C1, u64::MAX, 2).await,
        Err(ChunkError::OutOfRange { .. })
    ));
    assert!(matches!(
        store.read(ChunkId(9), 0, 1).await,
        Err(ChunkError::NotFound(ChunkId(9)))
    ));

    let too_big = store.append(C1, length, E1, pattern(5, 64 * 1024 + 1)).await;
    assert_eq!(
        too_big,
        Err(ChunkError::TooLarge {
            len: 64 * 1024 + 1,
            max: 64 * 1024
        })
    );
    let past_chunk_max = store.append(C1, length, E1, pattern(5, 64 * 1024)).await;
    assert!(
        matches!(past_chunk_max, Err(ChunkError::TooLarge { .. })),
        "{past_chunk_max:?}"
    );

    let sealed = store.seal(C1, E1, None).await.expect("seal");
    assert!(sealed.sealed);
    assert_eq!(sealed.length, length);
    assert_eq!(
        store.append(C1, length, E1, pattern(6, 10)).await,
        Err(ChunkError::Sealed(C1))
    );
    assert_eq!(store.list().await, vec![sealed.clone()]);

    let path = store.chunk_path(C1).expect("path");
    assert_eq!(path, chunk_file(dir.path(), C1));
    store.delete(C1).await.expect("delete");
    assert!(!path.exists());
    assert_eq!(store.stat(C1).await, Err(ChunkError::NotFound(C1)));
    assert_eq!(store.delete(C1).await, Err(ChunkError::NotFound(C1)));
    assert!(store.list().await.is_empty());
    assert_eq!(store.disks().await[0].chunks, 0);
    // The id can be reused after a delete.
    store.create(C1, E1).await.expect("create again");
}

#[tokio::test]
async fn torn_tails_are_truncated_and_appends_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let a = pattern(10, 8000);
    let b = pattern(11, 6000);
    let path = chunk_file(dir.path(), C1);
    {
        let store = open(&config).await;
        store.create(C1, E1).await.expect("create");
        store.append(C1, 0, E1, a.clone()).await.expect("append A");
    }
    let acked_len = file_len(&path);
    let (header, crcs) = format::encode_data_record(a.len() as u64, E1, &b);
    let torn_tails: Vec<Vec<u8>> = vec![
        // A valid header, the crcs and half of the data.
        [&header[..], &crcs, &b[..3000]].concat(),
        // Half a record header.
        header[..20].to_vec(),
        // A complete record whose data does not match its checksums.
        [&header[..], &crcs, &pattern(12, 6000)].concat(),
        // A complete record with a damaged header.
        [&header[..5], &[header[5] ^ 1], &header[6..], &crcs, &b].concat(),
        // Zeros, as a crash can leave after an extended size.
        vec![0u8; 10_000],
    ];
    for (case, tail) in torn_tails.iter().enumerate() {
        append_raw(&path, tail);
        let store = open(&config).await;
        let info = store.stat(C1).await.expect("stat");
        assert_eq!(info.length, a.len() as u64, "case {case}");
        assert_eq!(
            file_len(&path),
            acked_len,
            "case {case}: tail cut at the last acked record"
        );
        assert_eq!(&store.read(C1, 0, a.len() as u64).await.expect("read A")[..], &a[..]);
    }
    let store = open(&config).await;
    let info = store
        .append(C1, a.len() as u64, E1, b.clone())
        .await
        .expect("append B after recovery");
    assert_eq!(info.length, (a.len() + b.len()) as u64);
    drop(store);
    let store = open(&config).await;
    let all = store.read(C1, 0, info.length).await.expect("read all");
    assert_eq!(&all[..], &[&a[..], &b[..]].concat()[..]);
}

#[tokio::test]
async fn flipped_bit_is_reported_corrupt_by_reads_and_scrub() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let first = pattern(20, 3 * 4096);
    let second = pattern(21, 5000);
    {
        let store = open(&config).await;
        store.create(C1, E1).await.expect("create");
        append_all(&store, C1, E1, &[first.clone(), second.clone()]).await;
    }
    // Second block of the first record.
    flip_bit(
        &chunk_file(dir.path(), C1),
        data_pos(FILE_HEADER_BYTES, first.len() as u64) + 4096 + 7,
    );

    let store = open(&config).await;
    let length = (first.len() + second.len()) as u64;
    assert_eq!(
        store.stat(C1).await.expect("stat").length,
        length,
        "a damaged inner record is kept"
    );
    let corrupt = Err(ChunkError::Corrupt {
        chunk: C1,
        offset: 4096,
    });
    assert_eq!(store.read(C1, 4096 + 100, 10).await, corrupt);
    assert_eq!(store.read(C1, 0, length).await, corrupt);
    assert_eq!(store.read(C1, 4000, 200).await, corrupt);
    assert_eq!(&store.read(C1, 0, 4096).await.expect("block 0")[..], &first[..4096]);
    assert_eq!(
        &store.read(C1, 8192, 4096 + 5000).await.expect("after the bad block")[..],
        &[&first[8192..], &second[..]].concat()[..]
    );

    let report = store.scrub(C1).await.expect("scrub");
    assert_eq!(report.corrupt_offsets, vec![4096]);
    assert_eq!(report.bytes_verified, length);
    // Reads and scrub count each bad block once.
    assert_eq!(store.disks().await[0].corrupt_blocks, 1);
    assert_eq!(store.corrupt_blocks_total(), 1);
}

/// A chunk file cut short under the running server is lost data in the
/// blocks past the cut, found by their checksums; the disk stays healthy and
/// keeps taking writes, and the blocks before the cut still read.
#[tokio::test]
async fn truncated_file_under_a_running_store_is_corrupt_blocks_not_a_sick_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let first = pattern(30, 3 * 4096);
    let store = open(&config).await;
    store.create(C1, E1).await.expect("create");
    append_all(&store, C1, E1, std::slice::from_ref(&first)).await;
    let path = chunk_file(dir.path(), C1);
    // Keep the record's header, checksums and first data block.
    let cut = data_pos(FILE_HEADER_BYTES, first.len() as u64) + 4096;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open chunk file")
        .set_len(cut)
        .expect("truncate");

    assert_eq!(&store.read(C1, 0, 4096).await.expect("block 0")[..], &first[..4096]);
    let corrupt = Err(ChunkError::Corrupt {
        chunk: C1,
        offset: 4096,
    });
    assert_eq!(store.read(C1, 4096, 10).await, corrupt);
    assert_eq!(store.read(C1, 0, first.len() as u64).await, corrupt);
    let report = store.scrub(C1).await.expect("scrub");
    assert_eq!(report.corrupt_offsets, vec![4096, 8192]);
    let disk = &store.disks().await[0];
    assert!(disk.healthy, "a truncated file is not a failing disk");
    assert_eq!(disk.corrupt_blocks, 2);
    store.create(C2, E1).await.expect("the disk still takes new chunks");
    append_all(&store, C2, E1, &[pattern(31, 100)]).await;
}

#[tokio::test]
async fn epochs_fence_and_seal_are_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let (e4, e5, e6, e7, e8) = (Epoch(4), Epoch(5), Epoch(6), Epoch(7), Epoch(8));
    let path = chunk_file(dir.path(), C1);
    let a = pattern(30, 4096);
    let b = pattern(31, 100);
    let c = pattern(32, 7000);
    {
        let store = open(&config).await;
        store.create(C1, e5).await.expect("create");
        let stale = store.append(C1, 0, e4, a.clone()).await;
        assert_eq!(
            stale,
            Err(ChunkError::StaleEpoch {
                chunk: C1,
                given: e4,
                current: e5
            })
        );
        store.append(C1, 0, e5, a.clone()).await.expect("append at e5");
        let info = store.append(C1, 4096, e6, b.clone()).await.expect("append at e6");
        assert_eq!(info.epoch, e6, "a newer epoch on append raises the chunk's");
        assert!(matches!(store.fence(C1, e5).await, Err(ChunkError::StaleEpoch { .. })));
        assert_eq!(store.fence(C1, e7).await.expect("fence").epoch, e7);
    }
    {
        let store = open(&config).await;
        assert_eq!(
            store.stat(C1).await.expect("stat").epoch,
            e7,
            "the fence survives reopen"
        );
        assert!(matches!(
            store.append(C1, 4196, e6, c.clone()).await,
            Err(ChunkError::StaleEpoch { .. })
        ));
        store.append(C1, 4196, e7, c.clone()).await.expect("append at e7");
        store.fence(C1, e8).await.expect("fence e8");
        let bad = |requested| move |error| matches!(error, ChunkError::BadSeal { requested: r, .. } if r == requested);
        assert!(
            store.seal(C1, e8, Some(4000)).await.is_err_and(bad(4000)),
            "not a record boundary"
        );
        assert!(
            store.seal(C1, e8, Some(99_999)).await.is_err_and(bad(99_999)),
            "beyond the length"
        );
        assert!(matches!(
            store.seal(C1, e7, Some(4196)).await,
            Err(ChunkError::StaleEpoch { .. })
        ));
        // Seal dropping the last append, which was followed by the e8 fence.
        let sealed = store.seal(C1, e8, Some(4196)).await.expect("seal");
        assert_eq!((sealed.length, sealed.epoch, sealed.sealed), (4196, e8, true));
        assert!(matches!(
            store.read(C1, 4196, 1).await,
            Err(ChunkError::OutOfRange { .. })
        ));
    }
    let sealed_file_len = file_len(&path);
    let store = open(&config).await;
    let info = store.stat(C1).await.expect("stat");
    assert_eq!(
        (info.length, info.epoch, info.sealed),
        (4196, e8, true),
        "seal and epoch survive reopen"
    );
    assert_eq!(
        file_len(&path),
        sealed_file_len,
        "a sealed chunk is not truncated on reopen"
    );
    assert_eq!(
        &store.read(C1, 0, 4196).await.expect("read")[..],
        &[&a[..], &b[..]].concat()[..]
    );
    assert_eq!(store.append(C1, 4196, e8, c.clone()).await, Err(ChunkError::Sealed(C1)));
    assert_eq!(store.seal(C1, e8, Some(4196)).await.expect("seal again"), info);
    assert_eq!(store.seal(C1, e8, None).await.expect("seal again"), info);
    assert!(matches!(
        store.seal(C1, e8, Some(4096)).await,
        Err(ChunkError::BadSeal { .. })
    ));
    let raised = store.seal(C1, Epoch(9), None).await.expect("seal with a newer epoch");
    assert_eq!(raised.epoch, Epoch(9));
    assert_eq!(
        store.fence(C1, Epoch(10)).await.expect("fence a sealed chunk").epoch,
        Epoch(10)
    );
    drop(store);
    let store = open(&config).await;
    assert_eq!(store.stat(C1).await.expect("stat").epoch, Epoch(10));
}

#[tokio::test]
async fn sealed_chunk_with_a_damaged_record_header_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let pieces = [pattern(40, 5000), pattern(41, 9000), pattern(42, 3000)];
    let all = {
        let store = open(&config).await;
        store.create(C1, E1).await.expect("create");
        let all = append_all(&store, C1, E1, &pieces).await;
        store.seal(C1, Epoch(2), None).await.expect("seal");
        all
    };
    let path = chunk_file(dir.path(), C1);
    let len_before = file_len(&path);
    let second_record_pos = FILE_HEADER_BYTES + record_bytes(5000);
    flip_bit(&path, second_record_pos + 10);

    let store = open(&config).await;
    let info = store.stat(C1).await.expect("stat");
    assert_eq!(
        (info.length, info.epoch, info.sealed),
        (all.len() as u64, Epoch(2), true)
    );
    assert_eq!(file_len(&path), len_before, "never truncated");
    assert_eq!(&store.read(C1, 0, 5000).await.expect("first")[..], &all[..5000]);
    assert_eq!(&store.read(C1, 14_000, 3000).await.expect("third")[..], &all[14_000..]);
    assert_eq!(
        store.read(C1, 6000, 10).await,
        Err(ChunkError::Corrupt {
            chunk: C1,
            offset: 6000
        })
    );
    let report = store.scrub(C1).await.expect("scrub");
    let gap_blocks: Vec<u64> = (0..3).map(|block| 5000 + block * 4096).collect();
    assert_eq!(report.corrupt_offsets, gap_blocks);
}

/// A sealed chunk whose seal dropped appends (they stay in the file before
/// the Seal record): damage to one of those dead records' headers keeps the
/// seal.
#[tokio::test]
async fn damaged_dead_record_before_the_seal_keeps_the_seal() {
    let pieces = [pattern(43, 5000), pattern(44, 6000), pattern(45, 7000)];
    let damaged_records = [
        FILE_HEADER_BYTES + record_bytes(5000),
        FILE_HEADER_BYTES + record_bytes(5000) + record_bytes(6000),
    ];
    for damaged_record in damaged_records {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        {
            let store = open(&config).await;
            store.create(C1, E1).await.expect("create");
            append_all(&store, C1, E1, &pieces).await;
            store.seal(C1, Epoch(2), Some(5000)).await.expect("seal");
        }
        flip_bit(&chunk_file(dir.path(), C1), damaged_record + 9);
        let store = open(&config).await;
        let info = store.stat(C1).await.expect("stat");
        assert_eq!(
            (info.length, info.epoch, info.sealed),
            (5000, Epoch(2), true),
            "record at {damaged_record}"
        );
        assert_eq!(&store.read(C1, 0, 5000).await.expect("read")[..], &pieces[0][..]);
        assert!(store.scrub(C1).await.expect("scrub").corrupt_offsets.is_empty());
    }
}

#[tokio::test]
async fn retries_are_idempotent_and_conflicts_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&config(dir.path())).await;
    store.create(C1, E1).await.expect("create");
    let a = pattern(50, 6000);
    let b = pattern(51, 3000);
    append_all(&store, C1, E1, &[a.clone(), b.clone()]).await;
    let length = 9000;

    let retry = store.append(C1, 0, E1, a.clone()).await.expect("retry of A");
    assert_eq!(retry.length, length, "a retry does not write");
    let retry = store.append(C1, 6000, E1, b.clone()).await.expect("retry of B");
    assert_eq!(retry.length, length);
    let file_before = file_len(&chunk_file(dir.path(), C1));
    assert_eq!(
        store.append(C1, 0, E1, b.clone()).await,
        Err(ChunkError::Conflict { chunk: C1, offset: 0 })
    );
    let mut changed = a.to_vec();
    changed[5999] ^= 1;
    assert_eq!(
        store.append(C1, 0, E1, changed.into()).await,
        Err(ChunkError::Conflict { chunk: C1, offset: 0 })
    );
    assert_eq!(
        store.append(C1, 6000, E1, pattern(52, 4000)).await,
        Err(ChunkError::Conflict {
            chunk: C1,
            offset: 6000
        }),
        "extends past the end"
    );
    assert_eq!(
        store.append(C1, length + 10, E1, b.clone()).await,
        Err(ChunkError::WrongOffset {
            chunk: C1,
            expected: length + 10,
            length
        })
    );
    assert_eq!(file_len(&chunk_file(dir.path(), C1)), file_before, "nothing written");
    assert_eq!(store.stat(C1).await.expect("stat").length, length);

    store.seal(C1, E1, None).await.expect("seal");
    store
        .append(C1, 6000, E1, b.clone())
        .await
        .expect("retry on a sealed chunk");
    assert_eq!(store.append(C1, length, E1, b).await, Err(ChunkError::Sealed(C1)));
}

/// 32 appenders on their own chunks plus 8 sharing one chunk; every acked
/// byte reads back after reopening.
async fn concurrent_appenders_survive_reopen(sync_mode: SyncMode) {
    const OWN_APPENDERS: u64 = 32;
    const SHARED_APPENDERS: u64 = 8;
    const APPENDS_EACH: u64 = 16;
    const SHARED: ChunkId = ChunkId(0x5000);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.sync_mode = sync_mode;
    let store = Arc::new(open(&config).await);
    store.create(SHARED, E1).await.expect("create shared");
    let mut tasks = Vec::new();
    for appender in 0..OWN_APPENDERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let chunk = ChunkId(appender);
            store.create(chunk, E1).await.expect("create");
            let mut acked = BTreeMap::new();
            for index in 0..APPENDS_EACH {
                let data = pattern(appender * 1000 + index, 4096);
                store
                    .append(chunk, index * 4096, E1, data.clone())
                    .await
                    .expect("append");
                acked.insert((chunk, index * 4096), data);
            }
            acked
        }));
    }
    for appender in 0..SHARED_APPENDERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            for index in 0..APPENDS_EACH {
                let data = pattern(1_000_000 + appender * 1000 + index, 4096);
                let offset = append_at_end(&store, SHARED, data.clone()).await;
                acked.insert((SHARED, offset), data);
            }
            acked
        }));
    }
    let mut acked = BTreeMap::new();
    for task in tasks {
        acked.extend(task.await.expect("appender task"));
    }
    assert_eq!(
        store.stat(SHARED).await.expect("stat").length,
        SHARED_APPENDERS * APPENDS_EACH * 4096
    );
    drop(store);

    let store = open(&config).await;
    assert_eq!(acked.len() as u64, (OWN_APPENDERS + SHARED_APPENDERS) * APPENDS_EACH);
    for ((chunk, offset), data) in &acked {
        let read = store.read(*chunk, *offset, data.len() as u64).await.expect("read back");
        assert_eq!(&read[..], &data[..], "{chunk} at {offset}");
    }
}

/// Appends at the chunk's current end, retrying when another appender got
/// there first; returns the offset written.
async fn append_at_end(store: &FileChunkStore, chunk: ChunkId, data: Bytes) -> u64 {
    loop {
        let offset = store.stat(chunk).await.expect("stat").length;
        match store.append(chunk, offset, E1, data.clone()).await {
            Ok(_) => return offset,
            Err(ChunkError::Conflict { .. } | ChunkError::WrongOffset { .. }) => continue,
            Err(error) => panic!("append failed: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_fdatasync() {
    concurrent_appenders_survive_reopen(SyncMode::Fdatasync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_syncfs() {
    concurrent_appenders_survive_reopen(SyncMode::Syncfs).await;
}

/// Unmounts a tmpfs on drop, even when the test fails.
struct TmpfsMount {
    dir: tempfile::TempDir,
}

impl TmpfsMount {
    fn new(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(status) if status.success() => TmpfsMount { dir },
            other => panic!(
                "this test needs root to mount a tmpfs (mount -t tmpfs -o size={size} tmpfs {}): {other:?}",
                dir.path().display()
            ),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(self.dir.path()).status();
        if !matches!(status, Ok(status) if status.success()) {
            eprintln!("failed to unmount {}: {status:?}", self.dir.path().display());
        }
    }
}

#[tokio::test]
async fn full_disk_refuses_cleanly_and_recovers_after_delete() {
    let mount = TmpfsMount::new("2m");
    let disk = mount.path().join("disk");
    let config = config(&disk);
    let (filler, victim) = (ChunkId(1), ChunkId(2));
    let mut acked = Vec::new();
    {
        let store = open(&config).await;
        store.create(filler, E1).await.expect("create filler");
        append_all(&store, filler, E1, &[pattern(60, 512 * 1024)]).await;
        store.create(victim, E1).await.expect("create victim");
        let error = loop {
            let data = pattern(61 + acked.len() as u64, 20_000);
            match store.append(victim, acked.len() as u64, E1, data.clone()).await {
                Ok(_) => acked.extend_from_slice(&data),
                Err(error) => break error,
            }
        };
        assert!(matches!(error, ChunkError::NoSpace | ChunkError::Io(_)), "{error:?}");
        assert_eq!(store.stat(victim).await.expect("stat").length, acked.len() as u64);
        assert!(acked.len() > 1024 * 1024, "the disk filled after {} bytes", acked.len());
        assert_eq!(
            &store.read(victim, 0, acked.len() as u64).await.expect("read")[..],
            &acked[..]
        );
        let again = store.append(victim, acked.len() as u64, E1, pattern(99, 20_000)).await;
        assert!(again.is_err(), "still full");

        store.delete(filler).await.expect("delete filler");
        let data = pattern(100, 20_000);
        store
            .append(victim, acked.len() as u64, E1, data.clone())
            .await
            .expect("append after freeing space");
        acked.extend_from_slice(&data);
    }
    let store = open(&config).await;
    assert_eq!(store.stat(victim).await.expect("stat").length, acked.len() as u64);
    assert_eq!(
        &store.read(victim, 0, acked.len() as u64).await.expect("read")[..],
        &acked[..]
    );
    assert_eq!(store.stat(filler).await, Err(ChunkError::NotFound(filler)));
}

#[tokio::test]
async fn capacity_quota_refuses_appends_before_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.disks[0].capacity_bytes = Some(64 * 1024);
    let store = open(&config).await;
    store.create(C1, E1).await.expect("create");
    let mut length = 0u64;
    let error = loop {
        match store.append(C1, length, E1, pattern(length, 8192)).await {
            Ok(info) => length = info.length,
            Err(error) => break error,
        }
    };
    assert_eq!(error, ChunkError::NoSpace);
    assert_eq!(length, 7 * 8192, "(64 KiB - header) / record size");
    let status = &store.disks().await[0];
    assert!(status.used_bytes <= 64 * 1024, "{status:?}");
    assert_eq!(status.used_bytes, file_len(&chunk_file(dir.path(), C1)));
    assert_eq!(status.capacity_bytes, 64 * 1024);
    store.seal(C1, E1, None).await.expect("sealing works on a full disk");

    store.delete(C1).await.expect("delete");
    store.create(ChunkId(2), E1).await.expect("create after delete");
    store
        .append(ChunkId(2), 0, E1, pattern(1, 8192))
        .await
        .expect("append after delete");
    drop(store);
    let store = open(&config).await;
    assert_eq!(
        store.disks().await[0].used_bytes,
        file_len(&chunk_file(dir.path(), ChunkId(2)))
    );
}

#[tokio::test]
async fn bad_files_are_quarantined_and_temp_files_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    {
        let store = open(&config).await;
        store.create(C1, E1).await.expect("create");
        store.append(C1, 0, E1, pattern(70, 100)).await.expect("append");
    }
    let chunks = dir.path().join("chunks");
    std::fs::write(chunks.join("00000000000000aa.chunk"), pattern(71, 5000)).expect("garbage");
    std::fs::write(chunks.join("00000000000000ab.chunk"), b"short").expect("short");
    std::fs::copy(chunk_file(dir.path(), C1), chunks.join("00000000000000ac.chunk")).expect("misnamed copy");
    std::fs::write(chunks.join("not-hex.chunk"), b"x").expect("bad name");
    std::fs::write(chunks.join("00000000000000ad.chunk.tmp"), b"half created").expect("temp");
    std::fs::write(chunks.join("README"), b"not ours").expect("unknown file");

    let store = open(&config).await;
    assert_eq!(store.chunk_ids(), vec![C1]);
    let mut quarantined: Vec<String> = std::fs::read_dir(dir.path().join("quarantine"))
        .expect("quarantine dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    quarantined.sort();
    assert_eq!(quarantined.len(), 4, "{quarantined:?}");
    for (name, prefix) in
        quarantined
            .iter()
            .zip(["00000000000000aa", "00000000000000ab", "00000000000000ac", "not-hex"])
    {
        assert!(name.starts_with(prefix), "{name}");
    }
    assert!(!chunks.join("00000000000000ad.chunk.tmp").exists(), "temp file removed");
    assert!(chunks.join("README").exists(), "unknown files are left alone");
    assert_eq!(&store.read(C1, 0, 100).await.expect("read")[..], &pattern(70, 100)[..]);
}

/// Damaged copies of a real chunk file: opening never panics, and every
/// chunk served reads back verified bytes or errors.
#[tokio::test]
async fn hostile_chunk_files_never_panic_the_opener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let template = {
        let store = open(&config).await;
        store.create(C1, E1).await.expect("create");
        append_all(
            &store,
            C1,
            E1,
            &[pattern(80, 5000), pattern(81, 100), pattern(82, 9000)],
        )
        .await;
        store.fence(C1, Epoch(3)).await.expect("fence");
        store.seal(C1, Epoch(3), Some(5100)).await.expect("seal");
        std::fs::read(chunk_file(dir.path(), C1)).expect("read template")
    };
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..4u64 {
        for index in 0..64u64 {
            let chunk = ChunkId(0x1000 + round * 100 + index);
            let mut bytes = template.clone();
            bytes[16..24].copy_from_slice(&chunk.0.to_le_bytes());
            let crc = crc32c::crc32c(&bytes[..32]);
            bytes[32..36].copy_from_slice(&crc.to_le_bytes());
            mutate(&mut rng, &mut bytes);
            std::fs::write(chunk_file(dir.path(), chunk), &bytes).expect("write hostile file");
        }
        std::fs::write(chunk_file(dir.path(), ChunkId(0xffff)), forged_records(&mut rng)).expect("forged");
        let store = open(&config).await;
        for chunk in store.chunk_ids() {
            let info = store.stat(chunk).await.expect("stat");
            no_internal_error(store.read(chunk, 0, info.length).await);
            no_internal_error(store.read(chunk, info.length / 3, info.length / 2).await);
            no_internal_error(store.scrub(chunk).await);
            no_internal_error(store.append(chunk, info.length, info.epoch, pattern(1, 10)).await);
            no_internal_error(store.seal(chunk, info.epoch, None).await);
        }
    }
}

/// A panic inside the store surfaces as an `Io("internal error ...")`.
fn no_internal_error<T>(result: Result<T, ChunkError>) {
    if let Err(ChunkError::Io(message)) = &result {
        assert!(!message.contains("internal error"), "{message}");
    }
}

/// Random damage: flipped bytes, cut tails, inserted or overwritten runs.
fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(FILE_HEADER_BYTES as usize..bytes.len());
        match rng.random_range(0..4) {
            0 => bytes[at] ^= 1 << rng.random_range(0..8),
            1 => bytes.truncate(at),
            2 => {
                let run: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
                bytes.splice(at..at, run);
            }
            _ => {
                let end = (at + rng.random_range(1..200)).min(bytes.len());
                bytes[at..end].fill(rng.random());
            }
        }
        if bytes.len() <= FILE_HEADER_BYTES as usize {
            return;
        }
    }
}

/// A valid header followed by crc-valid records with hostile fields.
fn forged_records(rng: &mut StdRng) -> Vec<u8> {
    let mut bytes = format::FileHeader::new(ChunkId(0xffff), E1).encode();
    for _ in 0..20 {
        let header = match rng.random_range(0..4) {
            0 => RecordHeader::seal(rng.random(), Epoch(rng.random())),
            1 => RecordHeader::fence(rng.random(), Epoch(rng.random())),
            2 => RecordHeader::data(
                rng.random_range(0..3) * 4096,
                rng.random_range(0..3) * 4096,
                E1,
                rng.random(),
            ),
            _ => RecordHeader::data(u64::MAX - 5, u32::MAX, Epoch(u64::MAX), 0),
        };
        bytes.extend_from_slice(&header.encode());
        let body: Vec<u8> = (0..rng.random_range(0..5000)).map(|_| rng.random()).collect();
        bytes.extend_from_slice(&body);
    }
    bytes
}

#[tokio::test]
async fn config_parses_from_toml_with_defaults() {
    let config: FileStoreConfig = toml::from_str(
        r#"
        [[disks]]
        path = "/d1"
        [[disks]]
        path = "/d2"
        capacity_bytes = 1000
    "#,
    )
    .expect("parse");
    assert_eq!(
        config.disks[1],
        DiskConfig {
            path: "/d2".into(),
            capacity_bytes: Some(1000)
        }
    );
    assert_eq!(config.chunk_bytes_max, 256 * 1024 * 1024);
    assert_eq!(config.sync_mode, SyncMode::Fdatasync);
    let syncfs: FileStoreConfig = toml::from_str("sync_mode = \"syncfs\"\n[[disks]]\npath = \"/d\"").expect("parse");
    assert_eq!(syncfs.sync_mode, SyncMode::Syncfs);
    assert!(toml::from_str::<FileStoreConfig>("disks = []\nbogus = 1").is_err());
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = open(&FileStoreConfig::with_disks([dir.path().to_path_buf()])).await;
    let second = FileChunkStore::open(FileStoreConfig::with_disks([dir.path().to_path_buf()])).await;
    assert!(second.is_err(), "a disk is served by one store at a time");
    let _ = File::open(dir.path().join("LOCK")).expect("lock file");
}

#[tokio::test]
async fn new_chunks_go_to_the_disk_with_most_free_space() {
    let (small, large) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let mut config = FileStoreConfig::with_disks([small.path().to_path_buf(), large.path().to_path_buf()]);
    config.disks[0].capacity_bytes = Some(1024 * 1024);
    config.disks[1].capacity_bytes = Some(2 * 1024 * 1024);
    let store = open(&config).await;
    store.create(C1, E1).await.expect("create");
    assert!(chunk_file(large.path(), C1).exists());
    store
        .append(C1, 0, E1, pattern(1, 1024 * 1024 + 8192))
        .await
        .expect("append");
    store.create(ChunkId(2), E1).await.expect("create");
    assert!(
        chunk_file(small.path(), ChunkId(2)).exists(),
        "the large disk now has less free space"
    );
    let disks = store.disks().await;
    assert_eq!((disks[0].chunks, disks[1].chunks), (1, 1));
    drop(store);
    let store = open(&config).await;
    assert_eq!(store.chunk_ids(), vec![ChunkId(2), C1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_chunk_yield_one_winner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(&config(dir.path())).await);
    let creates: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.create(C1, E1).await })
        })
        .collect();
    let mut created = 0;
    for create in creates {
        match create.await.expect("task") {
            Ok(_) => created += 1,
            Err(error) => assert_eq!(error, ChunkError::AlreadyExists(C1)),
        }
    }
    assert_eq!(created, 1);
}

/// Dropping an append mid-flight leaves it either fully applied or not at
/// all: retrying it succeeds either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_appends_can_be_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(&config(dir.path())).await);
    store.create(C1, E1).await.expect("create");
    let mut length = 0u64;
    for index in 0..50u64 {
        let data = pattern(index, 4096 + index as usize);
        let task = {
            let (store, data) = (store.clone(), data.clone());
            tokio::spawn(async move { store.append(C1, length, E1, data).await })
        };
        if index % 2 == 0 {
            tokio::task::yield_now().await;
        }
        task.abort();
        let info = store.append(C1, length, E1, data.clone()).await.expect("retry");
        length += data.len() as u64;
        assert_eq!(info.length, length);
    }
    drop(store);
    let store = open(&config(dir.path())).await;
    assert_eq!(store.stat(C1).await.expect("stat").length, length);
}
