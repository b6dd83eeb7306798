//! The end-of-run check of the chunk servers' disks against the chunk
//! groups the partitions record, after the quiet period of a whole-cluster
//! run (DESIGN §8.2–8.4). Each disk is read as a restart would find it
//! (its synced records only), so "held" means durable:
//!
//! - every fragment column of an open or sealed group is placed, not lost,
//!   and its chunk is held by its server, whole (no record fails its
//!   checksum: a corrupted fragment was found by scrub and rebuilt) and at
//!   least as long as the group's recorded tail (no recorded stripe lost);
//! - every chunk a server holds is referenced by a group that is not
//!   released (a releasing group's chunks may still be there or not): no
//!   orphan is left by a repair that replaced it, a release whose delete
//!   missed the server, or a crash mid-write.

use std::collections::{BTreeMap, BTreeSet};

use tessera_common::ids::{ChunkId, NodeId};
use tessera_objserver::placement::{GroupId, VACANT_NODE};
use tessera_objserver::state::{GroupRecord, GroupState, LostColumns};

use crate::chunks::{HeldChunk, MemChunkStore};

/// Problems named in a failure; past this only counted.
const PROBLEMS_SHOWN_MAX: usize = 12;

/// One partition's chunk groups as a replica's state holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub groups: Vec<(GroupId, GroupRecord)>,
    pub lost: Vec<(GroupId, LostColumns)>,
}

/// What the check compared when it passed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunksChecked {
    /// Chunks the servers hold.
    pub held: u64,
    /// Fragment columns of open and sealed groups.
    pub referenced: u64,
}

/// Checks `disks` (by chunk-server node id) against the layouts of every
/// partition; see the module doc.
pub fn check(layouts: &[Layout], disks: &[(NodeId, MemChunkStore)]) -> Result<ChunksChecked, String> {
    let held: BTreeMap<(NodeId, ChunkId), HeldChunk> = disks
        .iter()
        .flat_map(|(node, disk)| disk.held_after_crash().into_iter().map(|c| ((*node, c.chunk), c)))
        .collect();
    let mut problems = Vec::new();
    let mut may_hold: BTreeSet<(NodeId, ChunkId)> = BTreeSet::new();
    let mut referenced = 0u64;
    for layout in layouts {
        let lost: BTreeMap<GroupId, &LostColumns> = layout.lost.iter().map(|(id, l)| (*id, l)).collect();
        for (id, record) in &layout.groups {
            let live = matches!(record.state, GroupState::Open { .. } | GroupState::Sealed);
            if matches!(record.state, GroupState::Released) {
                continue;
            }
            for (column, fragment) in record.placement.fragments.iter().enumerate() {
                may_hold.insert((fragment.node, fragment.chunk));
                if !live {
                    continue;
                }
                referenced += 1;
                let lost_column = lost.get(id).is_some_and(|l| l.0.contains(&(column as u32)));
                let what = format!(
                    "group {id} ({}) column {column} ({} on {})",
                    record.state.name(),
                    fragment.chunk,
                    fragment.node
                );
                if let Some(problem) = column_problem(
                    record,
                    fragment.node,
                    lost_column,
                    held.get(&(fragment.node, fragment.chunk)),
                ) {
                    problems.push(format!("{what}: {problem}"));
                }
            }
        }
    }
    for (node, chunk) in held.keys() {
        if !may_hold.contains(&(*node, *chunk)) {
            problems.push(format!(
                "{node} holds {chunk}, which no group that is not released references (an orphan)"
            ));
        }
    }
    match problems.is_empty() {
        true => Ok(ChunksChecked {
            held: held.len() as u64,
            referenced,
        }),
        false => Err(format!(
            "{} chunk problems after the quiet period: {}",
            problems.len(),
            problems
                .iter()
                .take(PROBLEMS_SHOWN_MAX)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

/// What is wrong with one column of an open or sealed group, if anything.
fn column_problem(record: &GroupRecord, node: NodeId, lost: bool, held: Option<&HeldChunk>) -> Option<String> {
    if node == VACANT_NODE {
        return Some("vacant (never repaired)".into());
    }
    if lost {
        return Some("lost (never rebuilt)".into());
    }
    let Some(chunk) = held else {
        return Some("not on its server".into());
    };
    if chunk.corrupt {
        return Some("fails its checksum (never rebuilt)".into());
    }
    if chunk.length < record.tail {
        return Some(format!(
            "{} bytes, short of the group's tail {}",
            chunk.length, record.tail
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use tessera_chunkserver::store::ChunkStore;
    use tessera_common::ids::Epoch;
    use tessera_objserver::placement::{FragmentLoc, GroupPlacement, Redundancy};

    use super::*;
    use crate::chunks::MemStoreConfig;

    const GROUP: GroupId = GroupId(1);

    /// A replicated group of two columns, `c1` on n1 and `c2` on n2, with
    /// `tail` bytes recorded.
    fn layout(state: GroupState, tail: u64) -> Layout {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let fragment = |n| FragmentLoc {
            node: NodeId(n),
            addr,
            chunk: ChunkId(n),
        };
        let placement = GroupPlacement {
            id: GROUP,
            redundancy: Redundancy::Replicated { n: 2 },
            fragments: vec![fragment(1), fragment(2)],
        };
        let record = GroupRecord {
            placement,
            state,
            tail,
            written_bytes: tail,
            stripes: 1,
            live_bytes: tail,
        };
        Layout {
            groups: vec![(GROUP, record)],
            lost: Vec::new(),
        }
    }

    /// Disks n1 and n2, each holding its column's chunk with `bytes`.
    async fn disks(bytes: &'static [u8]) -> Vec<(NodeId, MemChunkStore)> {
        let mut disks = Vec::new();
        for n in [1, 2] {
            let disk = MemChunkStore::new(MemStoreConfig::default());
            disk.create(ChunkId(n), Epoch(1)).await.unwrap();
            disk.append(ChunkId(n), 0, Epoch(1), Bytes::from_static(bytes))
                .await
                .unwrap();
            disks.push((NodeId(n), disk));
        }
        disks
    }

    fn problems(layouts: &[Layout], disks: &[(NodeId, MemChunkStore)]) -> String {
        check(layouts, disks).expect_err("a problem")
    }

    #[tokio::test(start_paused = true)]
    async fn whole_columns_and_nothing_else_pass() {
        let disks = disks(b"stripe").await;
        let checked = check(&[layout(GroupState::Sealed, 6)], &disks).unwrap();
        assert_eq!(checked, ChunksChecked { held: 2, referenced: 2 });
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreferenced_chunk_is_an_orphan() {
        let disks = disks(b"stripe").await;
        disks[0].1.create(ChunkId(9), Epoch(1)).await.unwrap();
        let found = problems(&[layout(GroupState::Sealed, 6)], &disks);
        assert!(found.contains("n1 holds c9") && found.contains("orphan"), "{found}");
        // A released group's chunks are orphans too; a releasing group's
        // may stay.
        let found = problems(&[layout(GroupState::Released, 6)], &disks);
        assert!(found.starts_with("3 chunk problems"), "{found}");
        let releasing = layout(GroupState::Releasing { since_index: 1 }, 6);
        assert_eq!(problems(&[releasing], &disks).matches("orphan").count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn missing_short_corrupt_lost_and_unsynced_columns_are_found() {
        let disks = disks(b"stripe").await;
        let found = problems(&[layout(GroupState::Open { epoch: 1 }, 7)], &disks);
        assert!(found.contains("6 bytes, short of the group's tail 7"), "{found}");

        assert!(disks[1].1.corrupt(ChunkId(2), 3));
        let found = problems(&[layout(GroupState::Sealed, 6)], &disks);
        assert!(found.contains("column 1 (c2 on n2): fails its checksum"), "{found}");

        let mut lost = layout(GroupState::Sealed, 6);
        lost.lost.push((GROUP, LostColumns(vec![0])));
        assert!(problems(&[lost], &disks).contains("column 0 (c1 on n1): lost"));

        disks[0].1.delete(ChunkId(1)).await.unwrap();
        let found = problems(&[layout(GroupState::Sealed, 6)], &disks);
        assert!(found.contains("column 0 (c1 on n1): not on its server"), "{found}");

        // Acknowledged but never synced: a restart would not find it.
        let unsynced = MemChunkStore::new(MemStoreConfig::default());
        unsynced.set_ack_before_sync(true);
        unsynced.create(ChunkId(1), Epoch(1)).await.unwrap();
        let disks = [(NodeId(1), unsynced), disks[1].clone()];
        let found = problems(&[layout(GroupState::Sealed, 0)], &disks);
        assert!(found.contains("column 0 (c1 on n1): not on its server"), "{found}");
    }
}
