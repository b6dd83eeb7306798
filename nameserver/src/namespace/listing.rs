//! S3 object listing: prefix, delimiter (common prefixes), start-after /
//! continuation, max keys, in key order.
//!
//! The listing is a sequence of entries in key order: a key, or the common
//! prefix it rolls up into (`prefix` + text up to and including the first
//! delimiter after `prefix`). An entry is returned when it sorts after
//! `start_after`, so passing the last entry of a page (key or common
//! prefix) as `start_after` resumes without repeats. After a common prefix
//! the scan seeks past every key under it instead of reading them.

use super::codec::{decode_name_key, key_after, name_prefix, prefix_end};
use super::names::CurrentEntry;
use super::{buckets, codec, ListObjectsPage, ListObjectsRequest, Res, CURRENT};
use tessera_raft::kv::KvRead;

/// S3's cap on keys per page.
pub const MAX_KEYS: usize = 1000;

/// Pairs read by the first scan after a seek.
const FIRST_BATCH: usize = 8;

/// One listing entry found at the scan position.
enum Entry {
    Key(String, Box<CurrentEntry>),
    Prefix(String),
}

/// The common prefix `key` rolls up into under `prefix` and `delimiter`
/// (`prefix` + text up to and including the first delimiter after it).
pub fn common_prefix(prefix: &str, delimiter: Option<&str>, key: &str) -> Option<String> {
    let delimiter = delimiter.filter(|d| !d.is_empty())?;
    let rest = key.get(prefix.len()..)?;
    let at = rest.find(delimiter)?;
    Some(format!("{prefix}{}", &rest[..at + delimiter.len()]))
}

/// Classifies one scanned pair: the entry it belongs to (`None` for a
/// common prefix not after `start_after`) and the cursor past that entry.
fn classify(request: &ListObjectsRequest, raw: &[u8], value: &[u8]) -> Res<(Option<Entry>, Option<Vec<u8>>)> {
    let (_, key, _) = decode_name_key(CURRENT, raw)?;
    let Some(prefix) = common_prefix(&request.prefix, request.delimiter.as_deref(), &key) else {
        let entry: CurrentEntry = codec::decode(CURRENT, value)?;
        return Ok((Some(Entry::Key(key, Box::new(entry))), Some(key_after(raw))));
    };
    let past = prefix_end(&name_prefix(&request.bucket, &prefix));
    let after = request.start_after.as_ref().is_none_or(|after| prefix > *after);
    Ok((after.then_some(Entry::Prefix(prefix)), past))
}

/// Where the scan starts: the prefix, or just after `start_after`.
fn start(request: &ListObjectsRequest) -> Vec<u8> {
    let lower = name_prefix(&request.bucket, &request.prefix);
    match &request.start_after {
        Some(after) => lower.max(key_after(&codec::name_key(&request.bucket, after))),
        None => lower,
    }
}

pub fn list<R: KvRead + ?Sized>(view: &R, request: &ListObjectsRequest) -> Res<ListObjectsPage> {
    buckets::require(view, &request.bucket)?;
    let max = request.max_keys.min(MAX_KEYS);
    let upper = prefix_end(&name_prefix(&request.bucket, &request.prefix));
    let mut cursor = start(request);
    let mut page = ListObjectsPage::default();
    let mut batch_size = FIRST_BATCH;
    'scan: loop {
        let want = max - page.contents.len() - page.common_prefixes.len() + 1;
        let batch = view.scan(CURRENT, &cursor, upper.as_deref(), want.min(batch_size))?;
        if batch.is_empty() {
            break;
        }
        for (raw, value) in batch {
            let (entry, past) = classify(request, &raw, &value)?;
            let Some(past) = past else { break 'scan };
            cursor = past;
            let Some(entry) = entry else {
                batch_size = FIRST_BATCH;
                continue 'scan;
            };
            if page.contents.len() + page.common_prefixes.len() == max {
                page.is_truncated = true;
                break 'scan;
            }
            if push(&mut page, entry) {
                // After a seek the next key may start another common
                // prefix: read little; grow while keys are plain contents.
                batch_size = FIRST_BATCH;
                continue 'scan;
            }
        }
        batch_size = (batch_size * 2).min(MAX_KEYS + 1);
    }
    if page.is_truncated {
        page.next_marker = last_entry(&page);
    }
    Ok(page)
}

/// Adds an entry; true when it was a common prefix (the scan must seek).
fn push(page: &mut ListObjectsPage, entry: Entry) -> bool {
    match entry {
        Entry::Key(key, current) => {
            page.contents.push((key, current.version));
            false
        }
        Entry::Prefix(prefix) => {
            page.common_prefixes.push(prefix);
            true
        }
    }
}

/// The greatest entry of a page (keys and prefixes interleave in order).
fn last_entry(page: &ListObjectsPage) -> Option<String> {
    let key = page.contents.last().map(|(key, _)| key);
    let prefix = page.common_prefixes.last();
    key.max(prefix).cloned()
}
