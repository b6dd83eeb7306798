//! The S3 API: `s3s` parses requests, verifies SigV4 ([`access::Auth`])
//! and checks permissions ([`access::Access`]); [`TesseraS3`] answers the
//! operations this cluster implements, each in its module. Every operation
//! is counted (`s3_requests_total{op,outcome}`), timed
//! (`s3_request_seconds{op}`) and its errors carry the request id.

pub mod access;
mod buckets;
mod copy;
pub(crate) mod digest;
pub mod host;
mod listing;
pub mod meta;
mod multipart;
mod objects;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, S3};
use tracing::Instrument;

use crate::backend::Backend;
use crate::server::RequestId;

pub struct TesseraS3 {
    backend: Arc<Backend>,
}

impl TesseraS3 {
    pub fn new(backend: Arc<Backend>) -> TesseraS3 {
        TesseraS3 { backend }
    }
}

/// Runs one operation with its metrics, span and request id.
async fn observe<T, F>(op: &'static str, request_id: Option<RequestId>, work: F) -> S3Result<S3Response<T>>
where
    F: Future<Output = S3Result<S3Response<T>>>,
{
    let started = Instant::now();
    let id = request_id.map(|r| r.0).unwrap_or_default();
    let result = work.instrument(tracing::debug_span!("s3", op, request_id = %id)).await;
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => e.code().as_str().to_string(),
    };
    metrics::counter!("s3_requests_total", "op" => op, "outcome" => outcome).increment(1);
    metrics::histogram!("s3_request_seconds", "op" => op).record(started.elapsed().as_secs_f64());
    result.map_err(|mut e| {
        e.set_request_id(id);
        e
    })
}

fn request_id<T>(req: &S3Request<T>) -> Option<RequestId> {
    req.extensions.get::<RequestId>().cloned()
}

/// Delegates `$method` to `$handler` inside [`observe`]. Spelled the way
/// `async_trait` expands an `async fn`, since the attribute does not see
/// inside macro invocations.
macro_rules! operation {
    ($method:ident, $op:literal, $input:ty, $output:ty, $handler:path) => {
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            req: S3Request<$input>,
        ) -> Pin<Box<dyn Future<Output = S3Result<S3Response<$output>>> + Send + 'async_trait>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                let id = request_id(&req);
                observe($op, id, $handler(&self.backend, req)).await
            })
        }
    };
}

#[async_trait::async_trait]
impl S3 for TesseraS3 {
    operation!(
        list_buckets,
        "ListBuckets",
        ListBucketsInput,
        ListBucketsOutput,
        buckets::list
    );
    operation!(
        create_bucket,
        "CreateBucket",
        CreateBucketInput,
        CreateBucketOutput,
        buckets::create
    );
    operation!(
        delete_bucket,
        "DeleteBucket",
        DeleteBucketInput,
        DeleteBucketOutput,
        buckets::delete
    );
    operation!(
        head_bucket,
        "HeadBucket",
        HeadBucketInput,
        HeadBucketOutput,
        buckets::head
    );
    operation!(
        get_bucket_location,
        "GetBucketLocation",
        GetBucketLocationInput,
        GetBucketLocationOutput,
        buckets::location
    );
    operation!(put_object, "PutObject", PutObjectInput, PutObjectOutput, objects::put);
    operation!(get_object, "GetObject", GetObjectInput, GetObjectOutput, objects::get);
    operation!(
        head_object,
        "HeadObject",
        HeadObjectInput,
        HeadObjectOutput,
        objects::head
    );
    operation!(
        delete_object,
        "DeleteObject",
        DeleteObjectInput,
        DeleteObjectOutput,
        objects::delete
    );
    operation!(
        delete_objects,
        "DeleteObjects",
        DeleteObjectsInput,
        DeleteObjectsOutput,
        objects::delete_many
    );
    operation!(
        copy_object,
        "CopyObject",
        CopyObjectInput,
        CopyObjectOutput,
        copy::copy_object
    );
    operation!(
        list_objects,
        "ListObjects",
        ListObjectsInput,
        ListObjectsOutput,
        listing::list_v1
    );
    operation!(
        list_objects_v2,
        "ListObjectsV2",
        ListObjectsV2Input,
        ListObjectsV2Output,
        listing::list_v2
    );
    operation!(
        create_multipart_upload,
        "CreateMultipartUpload",
        CreateMultipartUploadInput,
        CreateMultipartUploadOutput,
        multipart::create
    );
    operation!(
        upload_part,
        "UploadPart",
        UploadPartInput,
        UploadPartOutput,
        multipart::upload_part
    );
    operation!(
        upload_part_copy,
        "UploadPartCopy",
        UploadPartCopyInput,
        UploadPartCopyOutput,
        copy::upload_part_copy
    );
    operation!(
        complete_multipart_upload,
        "CompleteMultipartUpload",
        CompleteMultipartUploadInput,
        CompleteMultipartUploadOutput,
        multipart::complete
    );
    operation!(
        abort_multipart_upload,
        "AbortMultipartUpload",
        AbortMultipartUploadInput,
        AbortMultipartUploadOutput,
        multipart::abort
    );
    operation!(
        list_parts,
        "ListParts",
        ListPartsInput,
        ListPartsOutput,
        multipart::list_parts
    );
    operation!(
        list_multipart_uploads,
        "ListMultipartUploads",
        ListMultipartUploadsInput,
        ListMultipartUploadsOutput,
        multipart::list_uploads
    );
}
