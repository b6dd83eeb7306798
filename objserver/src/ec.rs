//! Erasure coding of stripes (DESIGN §5): a [`Codec`] turns a stripe's data
//! into the fragments of its group's [`Redundancy`] and rebuilds missing
//! fragments from survivors. Reed-Solomon over GF(2^8)
//! (`reed-solomon-erasure`, SIMD-accelerated) for `Ec { k, m }`; `n`
//! identical copies for `Replicated { n }`.
//!
//! Reed-Solomon works byte column by byte column: byte `j` of every parity
//! fragment depends only on byte `j` of the data fragments. So bytes `[a, b)`
//! of a missing fragment are rebuilt from bytes `[a, b)` of any `k` other
//! fragments; [`Codec::reconstruct`] takes and returns such column ranges,
//! which keeps a degraded read of a small range small, and is what repair
//! uses with whole fragments.

use bytes::{Bytes, BytesMut};
use reed_solomon_erasure::galois_8::ReedSolomon;

use crate::placement::Redundancy;

/// Reed-Solomon over GF(2^8) has at most 256 fragments per stripe.
pub const MAX_EC_FRAGMENTS: usize = 256;

/// Why a codec call was refused. Every input is checked; nothing panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("redundancy {redundancy:?} is invalid: {reason}")]
    BadRedundancy {
        redundancy: Redundancy,
        reason: &'static str,
    },
    #[error("{len_bytes} bytes of data need fragments longer than {max_fragment_bytes} bytes")]
    DataTooLarge { len_bytes: usize, max_fragment_bytes: u64 },
    #[error("expected {expected} fragment columns, got {got}")]
    FragmentCount { expected: usize, got: usize },
    #[error("fragment column {index} is {got} bytes, the others {expected}")]
    FragmentLength { index: usize, expected: usize, got: usize },
    #[error("fragment index {index} out of range (the stripe has {total})")]
    BadIndex { index: usize, total: usize },
    #[error("reconstruction needs {needed} fragments, {available} present")]
    NotEnoughFragments { needed: usize, available: usize },
    #[error("reed-solomon: {0}")]
    ReedSolomon(String),
}

impl From<reed_solomon_erasure::Error> for CodecError {
    fn from(e: reed_solomon_erasure::Error) -> Self {
        CodecError::ReedSolomon(e.to_string())
    }
}

/// Encoder/decoder for one [`Redundancy`]. Cheap to share (`&self` methods,
/// `Send + Sync`).
#[derive(Debug)]
pub struct Codec {
    redundancy: Redundancy,
    /// `Some` for the EC class.
    rs: Option<ReedSolomon>,
}

impl Codec {
    /// Checks the parameters: `Ec` needs `k >= 1`, `m >= 1`, `k + m <= 256`;
    /// `Replicated` needs `n >= 1`.
    pub fn new(redundancy: Redundancy) -> Result<Codec, CodecError> {
        let bad = |reason| CodecError::BadRedundancy { redundancy, reason };
        let rs = match redundancy {
            Redundancy::Ec { k, m } => {
                if k == 0 {
                    return Err(bad("k must be at least 1"));
                }
                if m == 0 {
                    return Err(bad("m must be at least 1"));
                }
                if usize::from(k) + usize::from(m) > MAX_EC_FRAGMENTS {
                    return Err(bad("k + m must be at most 256"));
                }
                Some(ReedSolomon::new(usize::from(k), usize::from(m))?)
            }
            Redundancy::Replicated { n } => {
                if n == 0 {
                    return Err(bad("n must be at least 1"));
                }
                None
            }
        };
        Ok(Codec { redundancy, rs })
    }

    pub fn redundancy(&self) -> Redundancy {
        self.redundancy
    }

    /// `k` (1 for the replicated class).
    pub fn data_fragments(&self) -> usize {
        self.redundancy.data_fragments()
    }

    /// `k + m` (or `n`).
    pub fn total_fragments(&self) -> usize {
        self.redundancy.total_fragments()
    }

    /// Fragment length for `len_bytes` of data: `ceil(len / k)`, at least 1,
    /// at most `u32::MAX` (the width of [`crate::placement::StripeLoc`]).
    pub fn fragment_len_for(&self, len_bytes: usize) -> Result<u32, CodecError> {
        let k = self.data_fragments();
        let fragment_len_bytes = len_bytes.div_ceil(k).max(1);
        u32::try_from(fragment_len_bytes).map_err(|_| CodecError::DataTooLarge {
            len_bytes,
            max_fragment_bytes: u64::from(u32::MAX),
        })
    }

    /// Encodes a stripe: returns `fragment_len` and all fragments (data
    /// first, then parity), each `fragment_len` bytes. The data is padded
    /// with zeros to `k * fragment_len`. Fragments share one allocation.
    pub fn encode(&self, data: &[u8]) -> Result<(u32, Vec<Bytes>), CodecError> {
        let fragment_len = self.fragment_len_for(data.len())?;
        let fragment_len_bytes = fragment_len as usize;
        let Some(rs) = &self.rs else {
            let mut copy = BytesMut::zeroed(fragment_len_bytes);
            copy[..data.len()].copy_from_slice(data);
            let copy = copy.freeze();
            return Ok((fragment_len, vec![copy; self.total_fragments()]));
        };
        let total = self.total_fragments();
        let mut buffer = BytesMut::zeroed(total * fragment_len_bytes);
        buffer[..data.len()].copy_from_slice(data);
        {
            let mut shards: Vec<&mut [u8]> = buffer.chunks_mut(fragment_len_bytes).collect();
            debug_assert_eq!(shards.len(), total);
            rs.encode(&mut shards)?;
        }
        let buffer = buffer.freeze();
        let fragments = (0..total)
            .map(|i| buffer.slice(i * fragment_len_bytes..(i + 1) * fragment_len_bytes))
            .collect();
        Ok((fragment_len, fragments))
    }

    /// Rebuilds byte columns of missing fragments.
    ///
    /// `columns[i]` is `Some(bytes [a, b) of fragment i)` when fragment `i`
    /// is available and `None` when not; every present column has the same
    /// length and at least `k` must be present. Returns bytes `[a, b)` of
    /// each fragment in `wanted`, in order (a present one is returned as
    /// given). Extra present columns beyond `k` are not cross-checked.
    pub fn reconstruct(&self, columns: Vec<Option<Bytes>>, wanted: &[usize]) -> Result<Vec<Bytes>, CodecError> {
        let column_len_bytes = self.check_columns(&columns, wanted)?;
        if column_len_bytes == 0 {
            return Ok(vec![Bytes::new(); wanted.len()]);
        }
        let Some(rs) = &self.rs else {
            let copy = columns.into_iter().flatten().next();
            let copy = copy.ok_or(CodecError::NotEnoughFragments {
                needed: 1,
                available: 0,
            })?;
            return Ok(vec![copy; wanted.len()]);
        };
        let missing: Vec<usize> = wanted.iter().copied().filter(|&i| columns[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(wanted.iter().map(|&i| columns[i].clone().unwrap_or_default()).collect());
        }
        let mut shards: Vec<(BytesMut, bool)> = columns
            .into_iter()
            .map(|column| match column {
                Some(bytes) => (into_mut(bytes), true),
                None => (BytesMut::zeroed(column_len_bytes), false),
            })
            .collect();
        if missing.iter().all(|&i| i < self.data_fragments()) {
            rs.reconstruct_data(&mut shards)?;
        } else {
            rs.reconstruct(&mut shards)?;
        }
        let shards: Vec<Bytes> = shards.into_iter().map(|(bytes, _)| bytes.freeze()).collect();
        Ok(wanted.iter().map(|&i| shards[i].clone()).collect())
    }

    /// Validates `reconstruct`'s inputs; returns the column length.
    fn check_columns(&self, columns: &[Option<Bytes>], wanted: &[usize]) -> Result<usize, CodecError> {
        let total = self.total_fragments();
        if columns.len() != total {
            return Err(CodecError::FragmentCount {
                expected: total,
                got: columns.len(),
            });
        }
        if let Some(&index) = wanted.iter().find(|&&i| i >= total) {
            return Err(CodecError::BadIndex { index, total });
        }
        let available = columns.iter().filter(|c| c.is_some()).count();
        let needed = self.data_fragments();
        if available < needed {
            return Err(CodecError::NotEnoughFragments { needed, available });
        }
        let mut present = columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((i, c.as_ref()?.len())));
        let (_, expected) = present.next().unwrap_or((0, 0));
        match present.find(|&(_, len)| len != expected) {
            Some((index, got)) => Err(CodecError::FragmentLength { index, expected, got }),
            None => Ok(expected),
        }
    }
}

/// The bytes as a mutable buffer, without a copy when `bytes` is the only
/// handle to its allocation.
fn into_mut(bytes: Bytes) -> BytesMut {
    match bytes.try_into_mut() {
        Ok(unique) => unique,
        Err(shared) => BytesMut::from(&shared[..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        tessera_common::testing::pattern(seed, len).to_vec()
    }

    fn ec(k: u8, m: u8) -> Codec {
        Codec::new(Redundancy::Ec { k, m }).expect("valid codec")
    }

    /// Every subset of `0..n` with at most `max` members.
    fn loss_patterns(n: usize, max: usize) -> Vec<Vec<usize>> {
        (0u32..1 << n)
            .filter(|mask| mask.count_ones() as usize <= max)
            .map(|mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
            .collect()
    }

    #[test]
    fn encode_pads_and_sizes_fragments() {
        let codec = ec(4, 2);
        for (len, fragment_len) in [
            (0usize, 1u32),
            (1, 1),
            (4, 1),
            (5, 2),
            (4096 + 3, 1025),
            (1 << 20, 1 << 18),
        ] {
            let data = pattern(len as u64, len);
            let (got, fragments) = codec.encode(&data).expect("encode");
            assert_eq!(got, fragment_len, "len {len}");
            assert_eq!(fragments.len(), 6);
            assert!(fragments.iter().all(|f| f.len() == fragment_len as usize));
            let joined: Vec<u8> = fragments[..4].concat();
            assert_eq!(&joined[..len], &data[..]);
            assert!(joined[len..].iter().all(|&b| b == 0), "zero padding");
        }
    }

    #[test]
    fn every_loss_pattern_of_4_plus_2_round_trips() {
        let codec = ec(4, 2);
        let data = pattern(7, 4096 + 3);
        let (_, fragments) = codec.encode(&data).expect("encode");
        for lost in loss_patterns(6, 2) {
            let columns: Vec<Option<Bytes>> = (0..6)
                .map(|i| (!lost.contains(&i)).then(|| fragments[i].clone()))
                .collect();
            let all: Vec<usize> = (0..6).collect();
            let rebuilt = codec.reconstruct(columns, &all).expect("reconstruct");
            assert_eq!(rebuilt, fragments, "lost {lost:?}");
        }
    }

    #[test]
    fn three_losses_of_4_plus_2_are_an_error() {
        let codec = ec(4, 2);
        let (_, fragments) = codec.encode(&pattern(1, 100)).expect("encode");
        for lost in loss_patterns(6, 3).into_iter().filter(|l| l.len() == 3) {
            let columns: Vec<Option<Bytes>> = (0..6)
                .map(|i| (!lost.contains(&i)).then(|| fragments[i].clone()))
                .collect();
            assert_eq!(
                codec.reconstruct(columns, &lost),
                Err(CodecError::NotEnoughFragments {
                    needed: 4,
                    available: 3
                })
            );
        }
    }

    #[test]
    fn sub_range_columns_rebuild_sub_ranges() {
        let codec = ec(4, 2);
        let (fragment_len, fragments) = codec.encode(&pattern(3, 1 << 16)).expect("encode");
        let fragment_len = fragment_len as usize;
        for (a, b) in [(0, 1), (5, 17), (100, fragment_len), (fragment_len - 1, fragment_len)] {
            for lost in [vec![0, 3], vec![1, 5], vec![4], vec![2]] {
                let columns: Vec<Option<Bytes>> = (0..6)
                    .map(|i| (!lost.contains(&i)).then(|| fragments[i].slice(a..b)))
                    .collect();
                let rebuilt = codec.reconstruct(columns, &lost).expect("reconstruct");
                for (got, &i) in rebuilt.iter().zip(&lost) {
                    assert_eq!(got, &fragments[i].slice(a..b), "fragment {i} [{a}, {b})");
                }
            }
        }
    }

    #[test]
    fn replicated_class_copies() {
        let codec = Codec::new(Redundancy::Replicated { n: 3 }).expect("codec");
        let data = pattern(9, 1000);
        let (fragment_len, fragments) = codec.encode(&data).expect("encode");
        assert_eq!(fragment_len, 1000);
        assert!(fragments.iter().all(|f| f[..] == data[..]));
        let columns = vec![None, None, Some(fragments[2].slice(10..20))];
        let rebuilt = codec.reconstruct(columns, &[0, 1]).expect("reconstruct");
        assert_eq!(rebuilt, vec![Bytes::copy_from_slice(&data[10..20]); 2]);
        let (empty_len, _) = codec.encode(&[]).expect("encode nothing");
        assert_eq!(empty_len, 1);
        assert_eq!(
            codec.reconstruct(vec![None, None, None], &[0]),
            Err(CodecError::NotEnoughFragments {
                needed: 1,
                available: 0
            })
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        for redundancy in [
            Redundancy::Ec { k: 0, m: 2 },
            Redundancy::Ec { k: 4, m: 0 },
            Redundancy::Ec { k: 200, m: 100 },
            Redundancy::Replicated { n: 0 },
        ] {
            assert!(
                matches!(Codec::new(redundancy), Err(CodecError::BadRedundancy { .. })),
                "{redundancy:?}"
            );
        }
        assert!(Codec::new(Redundancy::Ec { k: 255, m: 1 }).is_ok());
        let codec = ec(4, 2);
        let (_, fragments) = codec.encode(&pattern(2, 400)).expect("encode");
        let some = |n: usize| (0..n).map(|i| Some(fragments[i % 6].clone())).collect::<Vec<_>>();
        assert_eq!(
            codec.reconstruct(some(5), &[0]),
            Err(CodecError::FragmentCount { expected: 6, got: 5 })
        );
        assert_eq!(
            codec.reconstruct(some(6), &[6]),
            Err(CodecError::BadIndex { index: 6, total: 6 })
        );
        let mut uneven = some(6);
        uneven[0] = None;
        uneven[3] = Some(fragments[3].slice(1..));
        assert_eq!(
            codec.reconstruct(uneven, &[0]),
            Err(CodecError::FragmentLength {
                index: 3,
                expected: 100,
                got: 99
            })
        );
        let empty: Vec<Option<Bytes>> = (0..6).map(|i| (i != 1).then(Bytes::new)).collect();
        assert_eq!(codec.reconstruct(empty, &[1]), Ok(vec![Bytes::new()]));
    }
}
