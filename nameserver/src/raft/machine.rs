//! The namespace ([`crate::namespace`]) as the state machine of the name
//! servers' Raft group: its tables, `apply` and `query`, metrics prefixed
//! `ns_`. A storage failure while applying stops the node; refusals are
//! answers (`Response::Error`).

use tessera_raft::kv::{Table, Txn};
use tessera_raft::{ApplyCtx, SmError, StateMachine};

use crate::namespace::{self, Command, Query, QueryResponse, Response};

/// The namespace state machine.
pub struct Namespace;

impl StateMachine for Namespace {
    type Command = Command;
    type Response = Response;
    type Query = Query;
    type QueryResponse = QueryResponse;

    const TABLES: &'static [Table] = namespace::TABLES;
    const METRICS_PREFIX: &'static str = "ns";

    fn apply(txn: &mut Txn<'_, rocksdb::DB>, command: &Command, ctx: &ApplyCtx) -> Result<Response, SmError> {
        Ok(namespace::apply(txn, command, ctx)?)
    }

    fn query(db: &rocksdb::DB, query: &Query) -> Result<QueryResponse, SmError> {
        Ok(namespace::query(db, query)?)
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};
    use tessera_raft::state_machine::StateMachineStore;
    use tessera_raft::Entry;

    use super::*;
    use crate::namespace::NamespaceError;

    fn bucket_entry(index: u64, name: &str) -> Entry<Namespace> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(vec![Command::CreateBucket {
                name: name.into(),
                owner: "o".into(),
                created_ms: index,
            }]),
        }
    }

    #[tokio::test]
    async fn namespace_entries_apply_through_the_raft_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = tessera_raft::store::open(dir.path(), Namespace::TABLES).expect("open");
        let mut sm =
            StateMachineStore::<Namespace>::open(db.clone(), dir.path().join("snapshots")).expect("state machine");
        let entries = vec![bucket_entry(1, "alpha"), bucket_entry(2, "alpha")];
        let responses = sm.apply(entries).await.expect("apply");
        assert_eq!(responses[0], vec![Response::Ok]);
        assert_eq!(
            responses[1],
            vec![Response::Error(NamespaceError::BucketExists("alpha".into()))]
        );
        let answer = Namespace::query(&db, &Query::GetBucket { name: "alpha".into() }).expect("query");
        assert!(matches!(answer, QueryResponse::Bucket(Some(_))), "{answer:?}");
    }
}
