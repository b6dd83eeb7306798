//! How failures of the cluster's calls become S3 errors. Refusals the
//! client caused map to their S3 code (NoSuchBucket, PreconditionFailed,
//! InvalidPart, ...); a lost guard, an unreachable leader or an unknown
//! outcome is a 503 the client retries; anything else is a 500 whose cause
//! is logged, never shown.

use s3s::{s3_error, S3Error};
use tessera_common::ns_api::NsError;
use tessera_common::ns_client::NsCallError;
use tessera_common::os_api::OsError;
use tessera_common::os_client::OsCallError;

pub fn ns_error(e: NsCallError) -> S3Error {
    match e {
        NsCallError::Ns(refusal) => ns_refusal(refusal),
        NsCallError::OutcomeUnknown(why) => {
            tracing::warn!(%why, "name-server call outcome unknown");
            s3_error!(ServiceUnavailable, "the outcome is unknown; retry")
        }
        NsCallError::NoLeader { .. } => {
            tracing::warn!(error = %e, "no name-server leader");
            s3_error!(ServiceUnavailable, "the name servers are unavailable; retry")
        }
        NsCallError::Rpc(rpc) => internal("name-server call", &rpc),
    }
}

fn ns_refusal(e: NsError) -> S3Error {
    match e {
        NsError::NoSuchBucket => s3_error!(NoSuchBucket),
        NsError::PreconditionFailed => s3_error!(PreconditionFailed),
        NsError::InvalidKey => s3_error!(KeyTooLongError),
        NsError::BucketExists => s3_error!(BucketAlreadyExists),
        NsError::InvalidBucketName(why) => s3_error!(InvalidBucketName, "{why}"),
        NsError::BucketNotEmpty => s3_error!(BucketNotEmpty),
        NsError::NoSuchUpload => s3_error!(NoSuchUpload),
        NsError::InvalidPart(n) => s3_error!(InvalidPart, "part {n} was not uploaded or its ETag differs"),
        NsError::InvalidPartOrder => s3_error!(InvalidPartOrder),
        NsError::EntityTooSmall(n) => s3_error!(EntityTooSmall, "part {n} is smaller than 5 MiB and not the last"),
        NsError::EmptyPartList => s3_error!(MalformedXML, "the part list is empty"),
        NsError::InvalidPartNumber(n) => s3_error!(InvalidArgument, "part number {n} is outside 1..=10000"),
        NsError::NoGuard | NsError::GuardExpired | NsError::UidReaped | NsError::TooManyGuards => {
            tracing::warn!(refusal = %e, "name commit refused; the client retries");
            s3_error!(ServiceUnavailable, "the write could not be committed; retry")
        }
        NsError::NotLeader { .. } | NsError::Unavailable(_) => {
            s3_error!(ServiceUnavailable, "the name servers are unavailable; retry")
        }
        other => internal("name-server refusal", &other),
    }
}

pub fn os_error(e: OsCallError) -> S3Error {
    match e {
        OsCallError::Os(OsError::NoSpace(why)) => {
            tracing::warn!(%why, "object servers out of space");
            s3_error!(ServiceUnavailable, "not enough space in the cluster")
        }
        OsCallError::Os(OsError::DataUnavailable(why)) => {
            tracing::error!(%why, "object data unavailable");
            s3_error!(ServiceUnavailable, "the data is unavailable now; retry")
        }
        OsCallError::NoLeader { .. } | OsCallError::NoPartitionMap | OsCallError::Os(OsError::Unavailable(_)) => {
            tracing::warn!(error = %e, "object servers unavailable");
            s3_error!(ServiceUnavailable, "the object servers are unavailable; retry")
        }
        other => internal("object-server call", &other),
    }
}

/// A 500 whose cause goes to the log only.
pub fn internal(what: &str, cause: &dyn std::fmt::Display) -> S3Error {
    tracing::error!(%cause, "{what} failed");
    s3_error!(InternalError, "internal error")
}
