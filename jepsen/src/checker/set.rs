//! The set checker, as Jepsen's: clients add unique elements and read the
//! whole set; a linear pass over the paired history finds
//!
//! * **lost** elements: an add that succeeded (`ok`) but is missing from the
//!   final read;
//! * **stale** reads: an `ok` read that misses an element whose add had
//!   completed `ok` before the read was invoked (a set that is linearizable
//!   never forgets);
//! * **unexpected** elements: read but never added by anyone.
//!
//! Adds whose outcome is unknown may or may not appear. The final read is
//! the last `ok` read of the history, which the harness takes after every
//! fault has healed.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::history::{Func, Operation, Outcome};

/// What the set checker found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SetReport {
    pub valid: bool,
    /// Adds invoked, and how many of them completed `ok`.
    pub attempted: usize,
    pub acknowledged: usize,
    /// Elements of the final read.
    pub final_size: usize,
    pub reads: usize,
    pub lost: Vec<String>,
    pub unexpected: Vec<String>,
    /// Stale reads: (operation id, elements it missed), at most 20.
    pub stale: Vec<(usize, Vec<String>)>,
    /// Set when the history has no `ok` read to judge by.
    pub error: Option<String>,
}

const STALE_REPORTED_MAX: usize = 20;

/// Checks a paired set history (`add` and `read_all` operations).
pub fn check_set(ops: &[Operation]) -> SetReport {
    let element = |op: &Operation| op.input.as_str().map(str::to_owned);
    let attempted: BTreeSet<String> = ops.iter().filter(|op| op.f == Func::Add).filter_map(element).collect();
    // Completion index of every acknowledged add.
    let acknowledged: BTreeMap<String, usize> = ops
        .iter()
        .filter(|op| op.f == Func::Add && op.outcome == Outcome::Ok)
        .filter_map(|op| Some((element(op)?, op.complete?)))
        .collect();
    let mut reads: Vec<(&Operation, BTreeSet<String>)> = ops
        .iter()
        .filter(|op| op.f == Func::ReadAll && op.outcome == Outcome::Ok)
        .map(|op| (op, read_elements(op)))
        .collect();
    reads.sort_by_key(|(op, _)| op.complete);
    let mut report = SetReport {
        attempted: attempted.len(),
        acknowledged: acknowledged.len(),
        reads: reads.len(),
        ..SetReport::default()
    };
    let Some((_, last)) = reads.last() else {
        report.error = Some("no successful read of the set".into());
        return report;
    };
    report.final_size = last.len();
    report.lost = acknowledged.keys().filter(|e| !last.contains(*e)).cloned().collect();
    report.unexpected = last.iter().filter(|e| !attempted.contains(*e)).cloned().collect();
    let mut stale_count = 0;
    for (op, seen) in &reads {
        let missed: Vec<String> = acknowledged
            .iter()
            .filter(|(e, done)| **done < op.invoke && !seen.contains(*e))
            .map(|(e, _)| e.clone())
            .collect();
        if !missed.is_empty() {
            stale_count += 1;
            if report.stale.len() < STALE_REPORTED_MAX {
                report.stale.push((op.id, missed));
            }
        }
    }
    report.valid = report.lost.is_empty() && report.unexpected.is_empty() && stale_count == 0;
    report
}

fn read_elements(op: &Operation) -> BTreeSet<String> {
    op.output
        .as_array()
        .map(|items| items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::history::{pair, Event, EventType};

    fn history(events: &[(EventType, u64, Func, serde_json::Value)]) -> Vec<Operation> {
        let events: Vec<Event> = events
            .iter()
            .map(|(kind, p, f, v)| Event::new(*kind, *p, *f, "set", v.clone()))
            .collect();
        pair(&events).unwrap()
    }

    use EventType::{Info, Invoke, Ok};
    use Func::{Add, ReadAll};

    #[test]
    fn a_set_that_keeps_every_acknowledged_add_is_valid() {
        let ops = history(&[
            (Invoke, 0, Add, json!("a")),
            (Ok, 0, Add, json!("a")),
            (Invoke, 1, Add, json!("b")),
            (Info, 1, Add, json!("b")),
            (Invoke, 0, ReadAll, json!(null)),
            (Ok, 0, ReadAll, json!(["a"])),
            (Invoke, 0, ReadAll, json!(null)),
            (Ok, 0, ReadAll, json!(["a", "b"])),
        ]);
        let report = check_set(&ops);
        assert!(report.valid, "{report:?}");
        assert_eq!((report.attempted, report.acknowledged, report.final_size), (2, 1, 2));
    }

    #[test]
    fn lost_stale_and_unexpected_elements_are_found() {
        let ops = history(&[
            (Invoke, 0, Add, json!("a")),
            (Ok, 0, Add, json!("a")),
            (Invoke, 0, Add, json!("b")),
            (Ok, 0, Add, json!("b")),
            (Invoke, 1, ReadAll, json!(null)),
            (Ok, 1, ReadAll, json!(["b"])),
            (Invoke, 1, ReadAll, json!(null)),
            (Ok, 1, ReadAll, json!(["a", "z"])),
        ]);
        let report = check_set(&ops);
        assert!(!report.valid);
        assert_eq!(report.lost, vec!["b".to_string()]);
        assert_eq!(report.unexpected, vec!["z".to_string()]);
        assert_eq!(report.stale.len(), 2, "{report:?}");
    }

    #[test]
    fn a_history_without_a_read_cannot_be_judged() {
        let ops = history(&[(Invoke, 0, Add, json!("a")), (Ok, 0, Add, json!("a"))]);
        let report = check_set(&ops);
        assert!(!report.valid);
        assert!(report.error.is_some());
    }
}
