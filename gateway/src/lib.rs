//! The gateway (DESIGN §1): stateless protocol end points in front of the
//! cluster. Today the S3 API over HTTP (`s3/`), running the guard-entry
//! write protocol of DESIGN §4 (`write`) and reading objects back (`read`);
//! NBD and the OCI registry come later.

pub mod backend;
pub mod cache;
pub mod config;
pub mod errors;
pub mod failpoints;
pub mod intake;
pub mod node;
pub mod read;
pub mod s3;
pub mod server;
pub mod write;
