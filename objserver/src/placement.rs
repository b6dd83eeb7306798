//! Where a chunk group's fragments live and the geometry of its stripes
//! (DESIGN §5). A chunk group is `k + m` chunks on distinct chunk servers
//! (or `n` for the replicated class); a stripe puts one fragment of equal
//! length at the same offset of every chunk of the group.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tessera_common::ids::{ChunkId, NodeId};

/// A chunk group's id, unique within its partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub u64);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{:x}", self.0)
    }
}

/// How a group protects its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Redundancy {
    /// Reed-Solomon: `k` data fragments and `m` parity fragments per stripe.
    Ec { k: u8, m: u8 },
    /// `n` identical fragments per stripe.
    Replicated { n: u8 },
}

impl Redundancy {
    /// Fragments that carry data: a stripe holds `data_fragments() *
    /// fragment_len` bytes.
    pub fn data_fragments(&self) -> usize {
        match self {
            Redundancy::Ec { k, .. } => usize::from(*k),
            Redundancy::Replicated { .. } => 1,
        }
    }

    /// Fragments (chunks) per stripe (group).
    pub fn total_fragments(&self) -> usize {
        match self {
            Redundancy::Ec { k, m } => usize::from(*k) + usize::from(*m),
            Redundancy::Replicated { n } => usize::from(*n),
        }
    }

    /// How many fragments may be lost with the data still readable.
    pub fn tolerated_losses(&self) -> usize {
        self.total_fragments() - self.data_fragments()
    }

    /// Fragments of a stripe that must be durable before it is recorded:
    /// the data fragments plus half the redundancy, rounded up (EC 4+2: 5
    /// of 6; 3 replicas: 2). A stripe written with one chunk server down
    /// can still lose another and be read; with fewer, writes fail rather
    /// than store data one loss away from gone (Ceph's `min_size`).
    pub fn write_quorum(&self) -> usize {
        self.data_fragments() + self.tolerated_losses().div_ceil(2)
    }

    /// How many columns of a group may be lost (vacant, or missing stripes)
    /// while it still takes writes.
    pub fn degraded_columns_max(&self) -> usize {
        self.total_fragments() - self.write_quorum()
    }
}

/// One fragment column of a group: a chunk on a chunk server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentLoc {
    pub node: NodeId,
    pub addr: SocketAddr,
    pub chunk: ChunkId,
}

/// The node id of a vacant column; chunk servers may not use it.
pub const VACANT_NODE: NodeId = NodeId(0);

impl FragmentLoc {
    /// A column a group was opened without, because too few chunk servers
    /// were live: it holds nothing until repair places it on a server.
    pub fn vacant(chunk: ChunkId) -> FragmentLoc {
        FragmentLoc {
            node: VACANT_NODE,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            chunk,
        }
    }

    pub fn is_vacant(&self) -> bool {
        self.node == VACANT_NODE
    }
}

/// A chunk group: fragment `i` of every stripe lives in `fragments[i]`
/// (data fragments first, then parity).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPlacement {
    pub id: GroupId,
    pub redundancy: Redundancy,
    pub fragments: Vec<FragmentLoc>,
}

/// One stripe of a group: every fragment column holds `fragment_len` bytes
/// at `chunk_offset`. Stripe data byte `d` lives in data fragment
/// `d / fragment_len` at `chunk_offset + d % fragment_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StripeLoc {
    pub chunk_offset: u64,
    pub fragment_len: u32,
}

impl StripeLoc {
    /// Chunk offset just past this stripe.
    pub fn end(&self) -> u64 {
        self.chunk_offset + u64::from(self.fragment_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_quorum_keeps_half_the_redundancy() {
        let cases = [
            (Redundancy::Ec { k: 4, m: 2 }, 5, 1),
            (Redundancy::Ec { k: 8, m: 3 }, 10, 1),
            (Redundancy::Ec { k: 4, m: 1 }, 5, 0),
            (Redundancy::Ec { k: 2, m: 4 }, 4, 2),
            (Redundancy::Replicated { n: 3 }, 2, 1),
            (Redundancy::Replicated { n: 2 }, 2, 0),
            (Redundancy::Replicated { n: 1 }, 1, 0),
        ];
        for (redundancy, quorum, degraded) in cases {
            assert_eq!(redundancy.write_quorum(), quorum, "{redundancy:?}");
            assert_eq!(redundancy.degraded_columns_max(), degraded, "{redundancy:?}");
            assert!(redundancy.write_quorum() > redundancy.data_fragments() || redundancy.tolerated_losses() == 0);
        }
    }

    #[test]
    fn vacant_columns_are_recognised() {
        let loc = FragmentLoc::vacant(ChunkId(7));
        assert!(loc.is_vacant());
        assert_eq!(loc.chunk, ChunkId(7));
        let real = FragmentLoc {
            node: NodeId(101),
            ..loc
        };
        assert!(!real.is_vacant());
    }
}
