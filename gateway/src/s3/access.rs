//! Who may do what. SigV4 (header, presigned, streaming) is verified by
//! `s3s` with the secret [`Auth`] fetches from the name servers; [`Access`]
//! then refuses anonymous requests and checks the key's permission on the
//! bucket: reads need `read`, writes `write`, deleting a bucket `owner`
//! (the bucket's owner may do everything). Copies also need `read` on the
//! source. The caller's identity is left in the request's extensions as a
//! [`Caller`] for the handlers.

use std::sync::Arc;

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::{CopyObjectInput, CopySource, UploadPartCopyInput};
use s3s::path::S3Path;
use s3s::{s3_error, S3Error, S3Request, S3Result};
use tessera_common::ns_api::Permission;

use crate::backend::Backend;
use crate::errors::ns_error;

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key_id: String,
    /// The key's owner: owns the buckets it creates.
    pub owner: String,
}

pub struct Auth(pub Arc<Backend>);

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.secret(access_key).await.map_err(ns_error)? {
            Some(found) => Ok(SecretKey::from(found.secret)),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}

pub struct Access(pub Arc<Backend>);

/// The permission an operation needs on its bucket; `None`: only a valid
/// signature (ListBuckets, CreateBucket).
fn required(op: &str) -> Option<Permission> {
    match op {
        "ListBuckets" | "CreateBucket" => None,
        "DeleteBucket" => Some(Permission::Owner),
        "GetObject"
        | "HeadObject"
        | "HeadBucket"
        | "GetBucketLocation"
        | "ListObjects"
        | "ListObjectsV2"
        | "ListParts"
        | "ListMultipartUploads"
        | "GetObjectAttributes"
        | "GetBucketVersioning" => Some(Permission::Read),
        _ => Some(Permission::Write),
    }
}

impl Access {
    /// `Ok` when `key_id` holds `permission` on `bucket`; `NoSuchBucket`
    /// when the bucket does not exist, `AccessDenied` otherwise.
    async fn require(&self, key_id: &str, bucket: &str, permission: Permission) -> S3Result<()> {
        let backend = &self.0;
        if backend.allowed(key_id, bucket, permission).await.map_err(ns_error)? {
            return Ok(());
        }
        if backend.bucket(bucket).await.map_err(ns_error)?.is_none() {
            return Err(s3_error!(NoSuchBucket));
        }
        Err(s3_error!(AccessDenied))
    }

    async fn require_source(&self, key_id: Option<&str>, source: &CopySource) -> S3Result<()> {
        let key_id = key_id.ok_or_else(|| s3_error!(AccessDenied))?;
        match source {
            CopySource::Bucket { bucket, .. } => self.require(key_id, bucket, Permission::Read).await,
            _ => Err(s3_error!(NotImplemented, "only bucket/key copy sources are supported")),
        }
    }
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(credentials) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "anonymous requests are not allowed"));
        };
        let key_id = credentials.access_key.clone();
        let owner = match self.0.secret(&key_id).await.map_err(ns_error)? {
            Some(found) => found.owner,
            None => return Err(s3_error!(InvalidAccessKeyId)),
        };
        let bucket = match cx.s3_path() {
            S3Path::Root => None,
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => Some(bucket.to_string()),
        };
        if let (Some(permission), Some(bucket)) = (required(cx.s3_op().name()), bucket) {
            self.require(&key_id, &bucket, permission).await?;
        }
        cx.extensions_mut().insert(Caller { key_id, owner });
        Ok(())
    }

    async fn copy_object(&self, req: &mut S3Request<CopyObjectInput>) -> S3Result<()> {
        let key_id = req.credentials.as_ref().map(|c| c.access_key.as_str());
        self.require_source(key_id, &req.input.copy_source).await
    }

    async fn upload_part_copy(&self, req: &mut S3Request<UploadPartCopyInput>) -> S3Result<()> {
        let key_id = req.credentials.as_ref().map(|c| c.access_key.as_str());
        self.require_source(key_id, &req.input.copy_source).await
    }
}

/// The caller [`Access::check`] recorded.
pub fn caller<T>(req: &S3Request<T>) -> Result<Caller, S3Error> {
    req.extensions
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| s3_error!(AccessDenied))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_need_the_right_permission() {
        assert_eq!(required("GetObject"), Some(Permission::Read));
        assert_eq!(required("ListObjectsV2"), Some(Permission::Read));
        assert_eq!(required("PutObject"), Some(Permission::Write));
        assert_eq!(required("CompleteMultipartUpload"), Some(Permission::Write));
        assert_eq!(required("DeleteObjects"), Some(Permission::Write));
        assert_eq!(required("DeleteBucket"), Some(Permission::Owner));
        assert_eq!(required("CreateBucket"), None);
        assert_eq!(required("ListBuckets"), None);
    }
}
