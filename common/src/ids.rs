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

/// A uid's birth stamp: the high 64 bits, a name-server log index that was
/// committed before the uid was minted (DESIGN §4, pruning of reaped uids).
/// A reap of the uid is committed after its birth, so the name servers can
/// forget reaped uids below a watermark and refuse commits of uids born
/// below it, with no clock in the argument.
pub fn uid_birth(uid: u128) -> u64 {
    (uid >> 64) as u64
}

/// A fresh uid born at `birth` (see [`uid_birth`]): the stamp in the high
/// 64 bits, 64 random non-zero bits below it.
pub fn mint_uid(birth: u64) -> u128 {
    let low = loop {
        let low = crate::rng::random_u64();
        if low != 0 {
            break low;
        }
    };
    (u128::from(birth) << 64) | u128::from(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_uid_carries_its_birth_and_is_never_zero() {
        for birth in [0, 1, 77, u64::MAX] {
            let uid = mint_uid(birth);
            assert_eq!(uid_birth(uid), birth);
            assert_ne!(uid as u64, 0, "the random half is never zero");
        }
        assert_ne!(mint_uid(5), mint_uid(5));
    }

    #[test]
    fn ids_display_with_prefix_and_hex() {
        assert_eq!(ChunkId(255).to_string(), "cff");
        assert_eq!(Epoch(16).to_string(), "e10");
        assert_ne!(NodeId(1), NodeId(2));
    }
}
