//! The [`ChunkStore`] contract on the memory store, and its crash model.

use bytes::Bytes;
use tessera_chunkserver::store::ChunkStore;
use tessera_common::chunk_api::ChunkError;
use tessera_common::ids::{ChunkId, Epoch};

use super::{MemChunkStore, MemStoreConfig};

const C: ChunkId = ChunkId(7);

fn store() -> MemChunkStore {
    MemChunkStore::new(MemStoreConfig {
        chunk_bytes_max: 64,
        ..MemStoreConfig::default()
    })
}

fn bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

#[tokio::test(start_paused = true)]
async fn appends_read_back_and_retries_are_idempotent() {
    let store = store();
    store.create(C, Epoch(1)).await.unwrap();
    store.append(C, 0, Epoch(1), bytes("hello ")).await.unwrap();
    let info = store.append(C, 6, Epoch(1), bytes("world")).await.unwrap();
    assert_eq!(info.length, 11);
    assert_eq!(store.read(C, 3, 5).await.unwrap(), bytes("lo wo"));
    // The same bytes again: success without a second copy.
    assert_eq!(store.append(C, 6, Epoch(1), bytes("world")).await.unwrap().length, 11);
    assert_eq!(
        store.append(C, 6, Epoch(1), bytes("WORLD")).await,
        Err(ChunkError::Conflict { chunk: C, offset: 6 })
    );
    assert!(matches!(
        store.append(C, 12, Epoch(1), bytes("x")).await,
        Err(ChunkError::WrongOffset { .. })
    ));
    assert!(matches!(store.read(C, 8, 4).await, Err(ChunkError::OutOfRange { .. })));
    assert!(matches!(
        store.append(C, 11, Epoch(1), Bytes::from(vec![0; 60])).await,
        Err(ChunkError::TooLarge { .. })
    ));
    assert_eq!(store.create(C, Epoch(1)).await, Err(ChunkError::AlreadyExists(C)));
}

#[tokio::test(start_paused = true)]
async fn epochs_fence_old_writers_and_seals_cut_on_boundaries() {
    let store = store();
    store.create(C, Epoch(1)).await.unwrap();
    store.append(C, 0, Epoch(1), bytes("abc")).await.unwrap();
    store.append(C, 3, Epoch(1), bytes("def")).await.unwrap();
    assert_eq!(store.fence(C, Epoch(3)).await.unwrap().epoch, Epoch(3));
    assert!(matches!(
        store.append(C, 6, Epoch(2), bytes("g")).await,
        Err(ChunkError::StaleEpoch {
            given: Epoch(2),
            current: Epoch(3),
            ..
        })
    ));
    assert!(matches!(
        store.seal(C, Epoch(3), Some(4)).await,
        Err(ChunkError::BadSeal { .. })
    ));
    let sealed = store.seal(C, Epoch(3), Some(3)).await.unwrap();
    assert!(sealed.sealed);
    assert_eq!(sealed.length, 3);
    assert!(
        store.seal(C, Epoch(3), Some(3)).await.is_ok(),
        "a repeated seal is idempotent"
    );
    assert!(matches!(
        store.seal(C, Epoch(3), Some(6)).await,
        Err(ChunkError::BadSeal { .. })
    ));
    assert_eq!(
        store.append(C, 3, Epoch(3), bytes("x")).await,
        Err(ChunkError::Sealed(C))
    );
    assert_eq!(store.read(C, 0, 3).await.unwrap(), bytes("abc"));
}

#[tokio::test(start_paused = true)]
async fn a_crash_keeps_acknowledged_writes_and_drops_the_rest() {
    let store = store();
    store.create(C, Epoch(1)).await.unwrap();
    store.append(C, 0, Epoch(1), bytes("durable")).await.unwrap();
    // An append whose sync never finishes (its caller was cancelled, as the
    // process died): not acknowledged, so a crash may lose it. The clock is
    // paused, so its sync cannot finish within the zero timeout however
    // slowly this thread runs.
    let pending = store.append(C, 7, Epoch(1), bytes("lost"));
    assert!(tokio::time::timeout(std::time::Duration::ZERO, pending).await.is_err());
    let unsynced = ChunkId(8);
    assert!(
        tokio::time::timeout(std::time::Duration::ZERO, store.create(unsynced, Epoch(1)))
            .await
            .is_err()
    );
    assert_eq!(store.stat(C).await.unwrap().length, 11);
    store.recover_after_crash();
    assert_eq!(store.stat(C).await.unwrap().length, 7);
    assert_eq!(store.read(C, 0, 7).await.unwrap(), bytes("durable"));
    assert_eq!(store.stat(unsynced).await, Err(ChunkError::NotFound(unsynced)));
}

#[tokio::test(start_paused = true)]
async fn acknowledging_before_the_sync_loses_acknowledged_writes() {
    let store = store();
    store.set_ack_before_sync(true);
    store.create(C, Epoch(1)).await.unwrap();
    store.append(C, 0, Epoch(1), bytes("acked")).await.unwrap();
    store.recover_after_crash();
    assert_eq!(
        store.stat(C).await,
        Err(ChunkError::NotFound(C)),
        "the bug loses what it acknowledged"
    );
}

#[tokio::test(start_paused = true)]
async fn a_corrupted_byte_is_reported_never_returned() {
    let store = store();
    store.create(C, Epoch(1)).await.unwrap();
    store.append(C, 0, Epoch(1), bytes("first")).await.unwrap();
    store.append(C, 5, Epoch(1), bytes("second")).await.unwrap();
    assert!(store.corrupt(C, 7));
    assert_eq!(
        store.read(C, 0, 5).await.unwrap(),
        bytes("first"),
        "the other record still reads"
    );
    assert_eq!(
        store.read(C, 4, 3).await,
        Err(ChunkError::Corrupt { chunk: C, offset: 5 })
    );
    let report = store.scrub(C).await.unwrap();
    assert_eq!(report.corrupt_offsets, vec![5]);
    assert_eq!(store.disks().await[0].corrupt_blocks, 2);
    assert!(
        matches!(
            store.append(C, 5, Epoch(1), bytes("second")).await,
            Err(ChunkError::Corrupt { .. })
        ),
        "a retry is compared against verified bytes only"
    );
}

#[tokio::test(start_paused = true)]
async fn delete_forgets_the_chunk() {
    let store = store();
    store.create(C, Epoch(1)).await.unwrap();
    store.delete(C).await.unwrap();
    assert_eq!(store.delete(C).await, Err(ChunkError::NotFound(C)));
    assert!(store.list().await.is_empty());
}
