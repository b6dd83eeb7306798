//! Helpers for tests that run real nodes on loopback.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

/// Ports below the kernel's ephemeral range (32768-60999 by default).
const STABLE_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback address whose port is free for UDP (QUIC) and TCP (data
/// channel) now and lies outside the ephemeral range, so a node restarted on
/// it cannot find it taken by some client's ephemeral socket (which a port
/// first chosen with `:0` can be).
pub fn stable_loopback_addr() -> SocketAddr {
    for _ in 0..1_000 {
        let port = STABLE_PORTS.start + rand::random::<u16>() % (STABLE_PORTS.end - STABLE_PORTS.start);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let free = UdpSocket::bind(addr).is_ok() && TcpListener::bind(addr).is_ok();
        if free {
            return addr;
        }
    }
    panic!("no free loopback port in {STABLE_PORTS:?} after 1000 tries");
}

/// `len` reproducible pseudo-random bytes (xorshift64 seeded by `seed`):
/// test payloads that differ per seed and compare cheaply.
pub fn pattern(seed: u64, len: usize) -> bytes::Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Flips one bit in the first copy of `needle` inside the file at `path`
/// and syncs it: how tests damage stored data behind a server's back.
/// Panics (it is a test helper) when the file or the needle is missing.
pub fn flip_a_bit_in_file(path: &std::path::Path, needle: &[u8]) {
    use std::os::unix::fs::FileExt;
    assert!(needle.len() >= 2, "a needle of at least 2 bytes");
    let bytes = std::fs::read(path).expect("read the file to damage");
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the needle is stored verbatim in the file");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open the file");
    file.write_all_at(&[needle[1] ^ 0x10], (at + 1) as u64)
        .expect("write the file");
    file.sync_all().expect("sync the file");
}
