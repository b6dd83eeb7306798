//! Name server (DESIGN §1, §4): the cluster's source of truth for names,
//! guard entries, the cluster map, buckets, keys and volumes, replicated by
//! one openraft group whose log and state machine live in RocksDB.

pub mod admin_api;
pub mod api;
pub mod cluster_api;
pub mod config;
pub mod deleter;
pub mod deliberate_bugs;
pub mod guards;
pub mod keys_api;
pub mod namespace;
pub mod placer;
pub mod raft;
pub mod reap_pruner;
pub mod s3_api;
