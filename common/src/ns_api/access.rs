//! What the S3 gateway asks the name servers to authenticate and authorize
//! a request: an access key's secret (for SigV4) and whether the key may
//! read, write or own a bucket.
//!
//! Secrets travel only between cluster nodes (mutual TLS) and never appear
//! in `Debug` output.

use rkyv::{Archive, Deserialize, Serialize};

use super::{NsError, Permission};
use crate::rpc::rpc_method;

/// `ns.get_secret`: the secret of one access key.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SecretReq {
    pub key_id: String,
}

/// An access key's secret and owner.
#[derive(Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct KeySecret {
    pub secret: String,
    pub owner: String,
}

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySecret {{ owner: {:?}, secret: <redacted> }}", self.owner)
    }
}

/// `ns.authorize`: may `key_id` do `permission` on `bucket`? The bucket's
/// owner may do anything; others need a grant.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct AuthorizeReq {
    pub key_id: String,
    pub bucket: String,
    pub permission: Permission,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum Authz {
    Allowed,
    Denied,
    UnknownKey,
}

rpc_method!(GetSecret, "ns.get_secret", true, SecretReq => Result<Option<KeySecret>, NsError>);
rpc_method!(Authorize, "ns.authorize", true, AuthorizeReq => Result<Authz, NsError>);
