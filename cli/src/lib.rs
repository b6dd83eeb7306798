//! The library half of `tessera-cli`: what the `tessera` binary and the
//! end-to-end tests share — a whole cluster in one process
//! ([`local_cluster`]), `tessera dev` ([`dev`]), and the S3 client and
//! `tessera bench s3` ([`bench_s3`]).

pub mod bench_s3;
pub mod dev;
pub mod local_cluster;
