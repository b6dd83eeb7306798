//! A whole-partition consistency check of the applied state (DESIGN §8),
//! for tests, the simulator and operators, never on a hot path (it reads
//! every extent and group):
//!
//! - no extent points into a group that is releasing or released (whose
//!   chunks are being or have been deleted), nor into a missing group;
//! - every extent belongs to a uid with a record, and a uid's extents do
//!   not overlap;
//! - the group index lists exactly the extents;
//! - each group's `live_bytes` is the sum of its extents' lengths and at
//!   most its `written_bytes`;
//! - `Meta::objects` counts the records.
//!
//! It also counts what a garbage check compares with the namespace (DESIGN
//! §8.3): records, GC entries (writes not yet committed or reaped) and live
//! bytes.
//!
//! Run over one snapshot ([`tessera_raft::kv::SnapshotView`]) so entries
//! applied meanwhile do not show as inconsistencies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_raft::kv::{KvRead, Pair, Table};

use super::records::{
    decode, decode_extent_key, decode_group_extent_key, decode_uid_key, extent_key, get, meta, uid_key, Extent,
    GroupRecord, GroupState, EXTENTS, GC, GROUPS, GROUP_EXTENTS, OBJECTS,
};
use super::StateError;
use crate::placement::GroupId;

/// Problems reported in full; past this only counted.
const PROBLEMS_MAX: usize = 20;
/// Pairs read per scan call.
const PAGE_PAIRS: usize = 4_096;

/// What an audit read and what it found wrong.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    pub objects: u64,
    pub gc_entries: u64,
    pub extents: u64,
    pub groups: u64,
    /// Groups releasing or released.
    pub released_groups: u64,
    pub live_bytes: u64,
    /// The first [`PROBLEMS_MAX`] problems.
    pub problems: Vec<String>,
    pub problems_total: u64,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.problems_total == 0
    }

    fn problem(&mut self, what: String) {
        self.problems_total += 1;
        if self.problems.len() < PROBLEMS_MAX {
            self.problems.push(what);
        }
    }
}

/// Audits the state `view` shows; see the module doc. An unreadable or
/// undecodable table is an error, not a problem.
pub fn audit<R: KvRead + ?Sized>(view: &R) -> Result<AuditReport, StateError> {
    let mut report = AuditReport::default();
    let groups = read_groups(view)?;
    report.groups = groups.len() as u64;
    report.released_groups = groups.values().filter(|g| !accepts_extents(g.state)).count() as u64;
    let mut live_by_group: BTreeMap<GroupId, u64> = BTreeMap::new();
    let mut previous: Option<(u128, u64)> = None;
    for_each(view, EXTENTS, |key, value| {
        let (uid, offset) = decode_extent_key(key)?;
        let extent: Extent = decode(EXTENTS, value)?;
        report.extents += 1;
        check_extent(view, &groups, uid, offset, &extent, previous, &mut report)?;
        *live_by_group.entry(extent.group).or_default() += extent.len;
        previous = Some((uid, offset + extent.len));
        Ok(())
    })?;
    let mut indexed = 0u64;
    for_each(view, GROUP_EXTENTS, |key, _| {
        indexed += 1;
        let group = GroupId(u64::from_be_bytes(key[..8].try_into().unwrap_or_default()));
        let (uid, offset) = decode_group_extent_key(key)?;
        let extent: Option<Extent> = get(view, EXTENTS, &extent_key(uid, offset))?;
        if extent.map(|e| e.group) != Some(group) {
            report.problem(format!(
                "the index of group {group} lists {uid:x}@{offset}, not an extent in it"
            ));
        }
        Ok(())
    })?;
    if indexed != report.extents {
        report.problem(format!(
            "the group index lists {indexed} extents; {} exist",
            report.extents
        ));
    }
    for (id, record) in &groups {
        let live = live_by_group.get(id).copied().unwrap_or(0);
        report.live_bytes += live;
        if record.live_bytes != live || live > record.written_bytes {
            report.problem(format!(
                "group {id} records {} live bytes of {} written; its extents hold {live}",
                record.live_bytes, record.written_bytes
            ));
        }
    }
    for_each(view, OBJECTS, |key, _| {
        decode_uid_key(OBJECTS, key)?;
        report.objects += 1;
        Ok(())
    })?;
    for_each(view, GC, |key, _| {
        decode_uid_key(GC, key)?;
        report.gc_entries += 1;
        Ok(())
    })?;
    let counted = meta(view)?.objects;
    if counted != report.objects {
        report.problem(format!(
            "meta counts {counted} objects; {} records exist",
            report.objects
        ));
    }
    Ok(report)
}

/// Whether extents may point into a group in `state`.
fn accepts_extents(state: GroupState) -> bool {
    matches!(state, GroupState::Open { .. } | GroupState::Sealed)
}

fn read_groups<R: KvRead + ?Sized>(view: &R) -> Result<BTreeMap<GroupId, GroupRecord>, StateError> {
    let mut groups = BTreeMap::new();
    for_each(view, GROUPS, |key, value| {
        let id: [u8; 8] = key.try_into().map_err(|_| StateError::Corrupt {
            table: GROUPS.into(),
            detail: "group key length".into(),
        })?;
        groups.insert(GroupId(u64::from_be_bytes(id)), decode(GROUPS, value)?);
        Ok(())
    })?;
    Ok(groups)
}

/// One extent: its group accepts extents, its uid has a record, and it
/// starts at or after the end of the uid's previous extent.
fn check_extent<R: KvRead + ?Sized>(
    view: &R,
    groups: &BTreeMap<GroupId, GroupRecord>,
    uid: u128,
    offset: u64,
    extent: &Extent,
    previous: Option<(u128, u64)>,
    report: &mut AuditReport,
) -> Result<(), StateError> {
    match groups.get(&extent.group) {
        None => report.problem(format!("{uid:x}@{offset} points at missing group {}", extent.group)),
        Some(group) if !accepts_extents(group.state) => report.problem(format!(
            "{uid:x}@{offset} points at {} group {}",
            group.state.name(),
            extent.group
        )),
        Some(_) => {}
    }
    if previous.is_some_and(|(previous_uid, end)| previous_uid == uid && offset < end) {
        report.problem(format!("{uid:x}@{offset} overlaps the extent before it"));
    }
    let first_of_uid = previous.map(|(previous_uid, _)| previous_uid) != Some(uid);
    if first_of_uid && view.get(OBJECTS, &uid_key(uid))?.is_none() {
        report.problem(format!("{uid:x} has extents but no record"));
    }
    Ok(())
}

/// Calls `visit` with every pair of `table` in key order, a page at a time.
fn for_each<R: KvRead + ?Sized>(
    view: &R,
    table: Table,
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let mut start: Vec<u8> = Vec::new();
    loop {
        let page: Vec<Pair> = view.scan(table, &start, None, PAGE_PAIRS)?;
        for (key, value) in &page {
            visit(key, value)?;
        }
        match page.last() {
            Some((last, _)) if page.len() == PAGE_PAIRS => {
                start = last.clone();
                start.push(0); // just past it
            }
            _ => return Ok(()),
        }
    }
}
