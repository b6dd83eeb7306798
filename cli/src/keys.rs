//! `tessera admin key create|list|revoke` and `tessera admin bucket
//! create|allow|disallow`: access keys and grants through the name servers.
//! Output is JSON; a new key's secret is printed once, at creation.

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use tessera_common::ns_api::{Permission, StoragePolicy};
use tessera_common::ns_client::NameServerClient;
use tessera_common::rpc::RpcClient;

#[derive(Subcommand)]
pub enum KeyAction {
    /// Create an access key for OWNER (prints its secret once).
    Create { owner: String },
    /// List access keys (no secrets), optionally of one owner.
    List {
        #[arg(long)]
        owner: Option<String>,
    },
    /// Delete an access key and every grant it holds.
    Revoke { key_id: String },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Grant {
    Read,
    Write,
    Owner,
}

#[derive(Subcommand)]
pub enum BucketAction {
    /// Create a bucket owned by OWNER with a storage policy.
    Create {
        name: String,
        #[arg(long, default_value = "admin")]
        owner: String,
        /// `ec:K:M` (erasure coded) or `rep:N` (replicated).
        #[arg(long, default_value = "ec:4:2")]
        policy: String,
    },
    /// Grant KEY a permission on BUCKET.
    Allow {
        key_id: String,
        bucket: String,
        permission: Grant,
    },
    /// Take a permission on BUCKET back from KEY.
    Disallow {
        key_id: String,
        bucket: String,
        permission: Grant,
    },
}

fn wire(grant: Grant) -> Permission {
    match grant {
        Grant::Read => Permission::Read,
        Grant::Write => Permission::Write,
        Grant::Owner => Permission::Owner,
    }
}

pub async fn key(ns: &NameServerClient<RpcClient>, action: KeyAction) -> anyhow::Result<()> {
    match action {
        KeyAction::Create { owner } => {
            let key = ns.key_create(&owner).await.context("creating an access key")?;
            let out = serde_json::json!({ "key_id": key.key_id, "secret": key.secret, "owner": key.owner });
            println!("{out}");
        }
        KeyAction::List { owner } => {
            let keys = ns.key_list(owner.as_deref()).await.context("listing access keys")?;
            for k in keys {
                let out = serde_json::json!({ "key_id": k.key_id, "owner": k.owner, "created_ms": k.created_ms });
                println!("{out}");
            }
        }
        KeyAction::Revoke { key_id } => {
            ns.key_revoke(&key_id)
                .await
                .with_context(|| format!("revoking access key {key_id}"))?;
            println!("{}", serde_json::json!({ "revoked": key_id }));
        }
    }
    Ok(())
}

pub async fn bucket(ns: &NameServerClient<RpcClient>, action: BucketAction) -> anyhow::Result<()> {
    match action {
        BucketAction::Create { name, owner, policy } => {
            let policy: StoragePolicy = policy.parse().map_err(anyhow::Error::msg)?;
            ns.create_bucket(&name, &owner, policy)
                .await
                .with_context(|| format!("creating bucket {name}"))?;
            println!("{}", serde_json::json!({ "created": name, "owner": owner }));
        }
        BucketAction::Allow {
            key_id,
            bucket,
            permission,
        } => {
            ns.bucket_grant(&key_id, &bucket, wire(permission), true)
                .await
                .with_context(|| format!("granting {key_id} on {bucket}"))?;
            println!("{}", serde_json::json!({ "allowed": key_id, "bucket": bucket }));
        }
        BucketAction::Disallow {
            key_id,
            bucket,
            permission,
        } => {
            ns.bucket_grant(&key_id, &bucket, wire(permission), false)
                .await
                .with_context(|| format!("taking back {key_id}'s grant on {bucket}"))?;
            println!("{}", serde_json::json!({ "disallowed": key_id, "bucket": bucket }));
        }
    }
    Ok(())
}
