//! ListBuckets, CreateBucket, DeleteBucket, HeadBucket, GetBucketLocation.
//! A bucket created through S3 belongs to the caller's key owner and gets
//! the gateway's configured storage policy.

use s3s::dto::{
    Bucket, CreateBucketInput, CreateBucketOutput, DeleteBucketInput, DeleteBucketOutput, GetBucketLocationInput,
    GetBucketLocationOutput, HeadBucketInput, HeadBucketOutput, ListBucketsInput, ListBucketsOutput, Owner,
};
use s3s::{s3_error, S3Request, S3Response, S3Result};
use tessera_common::ns_api::NsError;
use tessera_common::ns_client::NsCallError;

use super::access::caller;
use super::meta;
use crate::backend::Backend;
use crate::errors::ns_error;

pub async fn list(backend: &Backend, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
    let owner = caller(&req)?.owner;
    let prefix = req.input.prefix;
    let buckets = backend.ns.list_buckets(Some(&owner)).await.map_err(ns_error)?;
    let buckets = buckets
        .into_iter()
        .filter(|b| prefix.as_deref().is_none_or(|p| b.name.starts_with(p)))
        .map(|b| Bucket {
            name: Some(b.name),
            creation_date: Some(meta::timestamp(b.created_ms)),
            bucket_region: Some(backend.region.clone()),
        })
        .collect();
    let output = ListBucketsOutput {
        buckets: Some(buckets),
        owner: Some(Owner {
            display_name: Some(owner.clone()),
            id: Some(owner),
        }),
        prefix,
        ..ListBucketsOutput::default()
    };
    Ok(S3Response::new(output))
}

pub async fn create(backend: &Backend, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
    let owner = caller(&req)?.owner;
    let name = req.input.bucket;
    let created = backend.ns.create_bucket(&name, &owner, backend.bucket_policy).await;
    backend.forget_bucket(&name);
    match created {
        Ok(()) => {}
        Err(NsCallError::Ns(NsError::BucketExists)) => {
            let existing = backend.ns.get_bucket(&name).await.map_err(ns_error)?;
            return Err(match existing {
                Some(b) if b.owner == owner => s3_error!(BucketAlreadyOwnedByYou),
                _ => s3_error!(BucketAlreadyExists),
            });
        }
        Err(e) => return Err(ns_error(e)),
    }
    let output = CreateBucketOutput {
        location: Some(format!("/{name}")),
    };
    Ok(S3Response::new(output))
}

pub async fn delete(backend: &Backend, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
    let name = req.input.bucket;
    let deleted = backend.ns.delete_bucket(&name).await;
    backend.forget_bucket(&name);
    deleted.map_err(ns_error)?;
    Ok(S3Response::new(DeleteBucketOutput::default()))
}

pub async fn head(backend: &Backend, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
    backend
        .bucket(&req.input.bucket)
        .await
        .map_err(ns_error)?
        .ok_or_else(|| s3_error!(NoSuchBucket))?;
    let output = HeadBucketOutput {
        bucket_region: Some(backend.region.clone()),
        ..HeadBucketOutput::default()
    };
    Ok(S3Response::new(output))
}

pub async fn location(
    backend: &Backend,
    req: S3Request<GetBucketLocationInput>,
) -> S3Result<S3Response<GetBucketLocationOutput>> {
    backend
        .bucket(&req.input.bucket)
        .await
        .map_err(ns_error)?
        .ok_or_else(|| s3_error!(NoSuchBucket))?;
    // us-east-1 is the empty location constraint.
    let constraint = (backend.region != "us-east-1").then(|| backend.region.clone().into());
    Ok(S3Response::new(GetBucketLocationOutput {
        location_constraint: constraint,
    }))
}
