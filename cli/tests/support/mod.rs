//! Helpers shared by the tests that run the `tessera` binary.

use std::net::{TcpListener, UdpSocket};
use std::process::Child;

pub const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");

/// A port free for both UDP (QUIC) and TCP (data channel) right now.
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
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
