//! Identities of DESIGN §3 as newtypes, so a chunk id can never be passed
//! where an epoch is expected. All of them travel on the wire (rkyv).

use std::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty), $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash,
            serde::Serialize, serde::Deserialize,
            rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
        )]
        #[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash))]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{:x}"), self.0)
            }
        }
    };
}

id_newtype!(
    /// A node of the cluster (any role).
    NodeId(u64), "n"
);
id_newtype!(
    /// An object-server partition (one Raft group).
    PartitionId(u32), "p"
);
id_newtype!(
    /// A chunk on a chunk server: one fragment column of a chunk group.
    ChunkId(u64), "c"
);
id_newtype!(
    /// One object version, multipart part or volume.
    Uid(u128), "u"
);
id_newtype!(
    /// A partition's leadership term, used to fence deposed leaders.
    Epoch(u64), "e"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_with_prefix_and_hex() {
        assert_eq!(ChunkId(255).to_string(), "cff");
        assert_eq!(Epoch(16).to_string(), "e10");
        assert_ne!(NodeId(1), NodeId(2));
    }
}
