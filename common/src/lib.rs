//! Shared foundation of every Tessera role: identities, wire messages,
//! cluster RPC, PKI, clocks and telemetry. Roles talk to each other only
//! through the wire API defined here.

pub mod blocking;
pub mod chunk_api;
pub mod chunk_client;
pub mod clock;
pub mod ids;
pub mod ns_api;
pub mod ns_client;
pub mod os_api;
pub mod os_client;
pub mod pki;
pub mod rng;
pub mod rpc;
pub mod signal;
pub mod telemetry;
pub mod testing;
pub mod wire;
