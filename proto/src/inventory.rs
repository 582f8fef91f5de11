//! The inventory stream's changes-only messages (`WatchInventoryRequest.
//! changes_only`), both halves: what an agent sends after its first list
//! ([`changes`]) and how a controller applies it ([`apply`]). They live
//! in the contract crate so that one test holds them to each other.

use std::collections::{HashMap, HashSet};

use crate::v1::{ContainerStorage, InspectResponse};

/// The message that brings a stream from `sent` (its list so far, `None`
/// before its first) to `list`, or `None` when `list` is what was sent:
/// with `changes_only`, after the first, the rows that are new or differ
/// from `sent` (matched by id) and the ids of those gone; else, or where
/// ids do not tell rows apart (an empty or repeated id), the whole list.
/// One comparison of the rows either way: the one that finds the changes
/// also says whether there are any.
pub fn message(
    sent: Option<&[ContainerStorage]>,
    list: &InspectResponse,
    changes_only: bool,
) -> Option<InspectResponse> {
    if changes_only {
        if let Some((containers, removed)) = sent.and_then(|s| changes(s, &list.containers)) {
            return (!containers.is_empty() || !removed.is_empty()).then_some(InspectResponse {
                containers,
                generation: list.generation,
                changes_only: true,
                removed,
            });
        }
    }
    (sent != Some(list.containers.as_slice())).then(|| InspectResponse {
        changes_only: false,
        removed: Vec::new(),
        ..list.clone()
    })
}

/// The rows of `now` that are new or differ from `sent`, by id, and the
/// ids (sorted) of `sent`'s rows gone from `now`; `None` where an id is
/// empty or repeated in either.
pub fn changes(
    sent: &[ContainerStorage],
    now: &[ContainerStorage],
) -> Option<(Vec<ContainerStorage>, Vec<String>)> {
    let mut before: HashMap<&str, &ContainerStorage> = HashMap::with_capacity(sent.len());
    for c in sent {
        if c.id.is_empty() || before.insert(&c.id, c).is_some() {
            return None;
        }
    }
    let mut seen = HashSet::with_capacity(now.len());
    let mut changed = Vec::new();
    for c in now {
        if c.id.is_empty() || !seen.insert(c.id.as_str()) {
            return None;
        }
        if before.remove(c.id.as_str()) != Some(c) {
            changed.push(c.clone());
        }
    }
    let mut removed: Vec<String> = before.into_keys().map(str::to_string).collect();
    removed.sort();
    Some((changed, removed))
}

/// A changes-only message on a stream that has not yet carried a whole
/// list: there is nothing to apply it to, and the rows it lacks would
/// silently go missing from the host's list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the agent sent changes before its first whole list; the stream is \
     reopened (an agent that keeps doing this is faulty: upgrade or restart it)"
)]
pub struct ChangesBeforeList;

/// A stream's list after `msg` (`rows`: `None` before its first list):
/// replaced by a whole list; with a changes-only message's rows put in by
/// id (a changed row replaces its old one, a new one is added) and its
/// removed ids taken out, in name order as agents send their lists. A
/// changes-only message before any whole list is refused and changes
/// nothing.
pub fn apply(
    rows: &mut Option<Vec<ContainerStorage>>,
    msg: InspectResponse,
) -> Result<(), ChangesBeforeList> {
    if !msg.changes_only {
        *rows = Some(msg.containers);
        return Ok(());
    }
    let rows = rows.as_mut().ok_or(ChangesBeforeList)?;
    let gone: HashSet<&str> = msg.removed.iter().map(String::as_str).collect();
    let mut changed: HashMap<String, ContainerStorage> = msg
        .containers
        .into_iter()
        .map(|c| (c.id.clone(), c))
        .collect();
    rows.retain(|c| !gone.contains(c.id.as_str()));
    for row in rows.iter_mut() {
        if let Some(c) = changed.remove(&row.id) {
            *row = c;
        }
    }
    rows.extend(changed.into_values());
    rows.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, name: &str, used: u64) -> ContainerStorage {
        ContainerStorage {
            id: id.into(),
            name: name.into(),
            fs_used_bytes: used,
            ..Default::default()
        }
    }

    fn list(rows: &[ContainerStorage]) -> InspectResponse {
        let mut containers = rows.to_vec();
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        InspectResponse {
            containers,
            generation: 7,
            ..Default::default()
        }
    }

    /// A stream's lists in turn, through the messages an agent sends and
    /// a controller applies: the controller ends each step with the
    /// agent's list, and each message carries only what changed.
    #[test]
    fn the_controller_ends_with_the_agents_list_after_each_message() {
        let steps = [
            vec![row("a", "web", 1), row("b", "db", 2), row("c", "cache", 3)],
            // Use moved on one.
            vec![row("a", "web", 5), row("b", "db", 2), row("c", "cache", 3)],
            // One removed, one new, one renamed (its order changes).
            vec![
                row("a", "web", 5),
                row("c", "zcache", 3),
                row("d", "api", 0),
            ],
            // Nothing changed.
            vec![
                row("a", "web", 5),
                row("c", "zcache", 3),
                row("d", "api", 0),
            ],
            // All gone.
            vec![],
            vec![row("e", "new", 1)],
        ];
        // Rows sent at each step; `None`: nothing sent.
        let sizes = [Some(3), Some(1), Some(2), None, Some(0), Some(1)];
        let mut sent: Option<Vec<ContainerStorage>> = None;
        let mut kept = None;
        for (i, (step, size)) in steps.iter().zip(sizes).enumerate() {
            let now = list(step);
            let Some(msg) = message(sent.as_deref(), &now, true) else {
                assert_eq!(size, None, "step {i}: nothing sent");
                assert_eq!(kept.as_ref(), Some(&now.containers), "step {i}");
                continue;
            };
            let size = size.unwrap_or_else(|| panic!("step {i}: sent {msg:?}"));
            assert_eq!(msg.changes_only, i > 0, "step {i}: only the first is whole");
            assert_eq!(msg.containers.len(), size, "step {i}: rows sent");
            assert_eq!(msg.generation, now.generation);
            apply(&mut kept, msg).unwrap();
            assert_eq!(kept.as_ref(), Some(&now.containers), "step {i}");
            sent = Some(now.containers);
        }
    }

    #[test]
    fn removed_ids_are_named_and_rows_matched_by_id() {
        let before = [row("a", "web", 1), row("b", "db", 2)];
        let (changed, removed) = changes(&before, &[row("b", "web", 2)]).unwrap();
        // A new name on b's id is b changed, not a new row.
        assert_eq!(changed, [row("b", "web", 2)]);
        assert_eq!(removed, ["a"]);
    }

    /// Rows without an id, or two under one, cannot be matched: the whole
    /// list goes, and it replaces the kept one.
    #[test]
    fn rows_that_ids_cannot_tell_apart_send_the_whole_list() {
        let before = vec![row("a", "web", 1)];
        for now in [
            vec![row("", "x", 1)],
            vec![row("a", "web", 1), row("a", "web2", 1)],
        ] {
            assert_eq!(changes(&before, &now), None);
            let msg = message(Some(&before), &list(&now), true).unwrap();
            assert!(!msg.changes_only);
            let mut kept = Some(before.clone());
            apply(&mut kept, msg).unwrap();
            assert_eq!(kept, Some(list(&now).containers));
        }
        // Asked for whole lists: whole lists, and none when nothing changed.
        let msg = message(Some(&before), &list(&[row("a", "web", 9)]), false).unwrap();
        assert!(!msg.changes_only && msg.containers.len() == 1);
        assert_eq!(message(Some(&before), &list(&before), false), None);
    }

    /// A changes-only message first on a stream (a faulty agent) is
    /// refused, and the stream's list stays unknown: applied to nothing,
    /// its one row would have stood for the whole host.
    #[test]
    fn changes_before_any_whole_list_are_refused_and_change_nothing() {
        let before = [row("a", "web", 1), row("b", "db", 2)];
        let now = list(&[row("a", "web", 9), row("b", "db", 2)]);
        let msg = message(Some(&before), &now, true).unwrap();
        assert!(msg.changes_only && msg.containers.len() == 1);
        let mut kept = None;
        let err = apply(&mut kept, msg).unwrap_err();
        assert_eq!(kept, None);
        assert!(
            err.to_string().contains("before its first whole list"),
            "{err}"
        );
    }
}
