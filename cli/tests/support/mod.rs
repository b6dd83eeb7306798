//! Helpers shared by the tests that run the `tessera` binary.

use std::process::Child;

pub const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");

/// A port free for both UDP (QUIC) and TCP (data channel), outside the
/// ephemeral range so a restarted server finds it still free.
pub fn free_port() -> u16 {
    tessera_common::testing::stable_loopback_addr().port()
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing
/// test never leaves a server behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
