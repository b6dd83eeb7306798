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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
}

/// One fragment column of a group: a chunk on a chunk server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentLoc {
    pub node: NodeId,
    pub addr: SocketAddr,
    pub chunk: ChunkId,
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
