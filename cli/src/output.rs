//! How roomyctl shows answers: tables for people, JSON for scripts.

use roomy_proto::format_bytes;
use roomy_proto::v1::{
    AuditEntry, ContainerStorage, Event, EventKind, Explanation, GrowPoolResponse, Health, Host,
    HostError, HostState, Policy, PoolStatus, RepairResponse, ResizeAction, ResizeResponse,
    SetPolicyResponse,
};
use serde_json::{json, Value};

/// Print JSON, pretty, on one document.
pub fn print_json(value: &Value) {
    crate::print::emit_json(value);
}

fn used_percent(c: &ContainerStorage) -> Option<f64> {
    (c.fs_total_bytes > 0).then(|| c.fs_used_bytes as f64 * 100.0 / c.fs_total_bytes as f64)
}

/// The size users think of: the filesystem's, else what Docker records.
fn size(c: &ContainerStorage) -> u64 {
    if c.fs_size_bytes > 0 {
        c.fs_size_bytes
    } else if let Some(dm) = c.devicemapper() {
        dm.docker_size_bytes
    } else {
        c.overlay2().map_or(0, |o| o.docker_size_bytes)
    }
}

/// Align columns, two spaces apart, no trailing blanks.
pub(crate) fn render(lines: &[Vec<String>]) -> String {
    let columns = lines.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `ls`: one row per container; the HOST column only when rows have hosts.
pub fn table(rows: &[(String, ContainerStorage)]) -> String {
    let with_host = rows.iter().any(|(h, _)| !h.is_empty());
    let mut header: Vec<String> = ["NAME", "STATE", "DRIVER", "SIZE", "FS", "USED", "HEALTH"]
        .map(String::from)
        .to_vec();
    if with_host {
        header.insert(0, "HOST".into());
    }
    let mut lines = vec![header];
    for (host, c) in rows {
        let mut line = vec![
            c.name.clone(),
            c.state.clone(),
            c.driver.clone(),
            if c.health() == Health::Unmanaged {
                "-".into()
            } else {
                format_bytes(size(c))
            },
            if c.fs_type.is_empty() {
                "-".into()
            } else {
                c.fs_type.clone()
            },
            used_percent(c)
                .map(|p| format!("{p:.0}%"))
                .unwrap_or_else(|| "-".into()),
            c.health().word().to_string(),
        ];
        if with_host {
            line.insert(0, host.clone());
        }
        lines.push(line);
    }
    render(&lines)
}

/// `ls` output: rows, then one line per host that did not answer (on
/// stderr for tables; in the document for JSON).
pub fn print_rows(rows: &[(String, ContainerStorage)], errors: &[HostError], json: bool) {
    if json {
        /// The rows, each made a value only when the writer reaches it.
        struct Rows<'a>(&'a [(String, ContainerStorage)]);
        impl serde::Serialize for Rows<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|(host, c)| {
                    StorageJson::of(c, (!host.is_empty()).then_some(host.as_str()))
                }))
            }
        }
        #[derive(serde::Serialize)]
        struct Listing<'a> {
            containers: Rows<'a>,
            errors: Vec<Value>,
        }
        let errors: Vec<Value> = errors
            .iter()
            .map(|e| json!({"host": e.host, "code": e.code, "message": e.message}))
            .collect();
        crate::print::emit_json(&Listing {
            containers: Rows(rows),
            errors,
        });
    } else {
        out!("{}", table(rows));
        for e in errors {
            eprintln!("roomyctl: host {} did not answer: {}", e.host, e.message);
        }
    }
}

fn host_state(h: &Host) -> String {
    match h.state() {
        HostState::Up => "up".into(),
        HostState::Unreachable => format!("unreachable since {}", when(h.unreachable_since * 1000)),
        HostState::Unknown | HostState::Unspecified => "unknown".into(),
    }
}

/// UTC time of unix milliseconds, e.g. 2026-11-28T03:04:05Z.
fn when(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map(|t| t.replace(".0Z", "Z").replace(".000Z", "Z"))
        .unwrap_or_else(|| ms.to_string())
}

/// `pool ls`: one row per pool.
pub fn print_pools(rows: &[(String, PoolStatus)], errors: &[HostError], json: bool) {
    if json {
        let rows: Vec<Value> = rows
            .iter()
            .map(|(host, p)| {
                json!({"host": host, "name": p.name, "data_used_bytes": p.data_used_bytes,
                       "data_total_bytes": p.data_total_bytes, "metadata_used_bytes": p.metadata_used_bytes,
                       "metadata_total_bytes": p.metadata_total_bytes, "low_water_mark_bytes": p.low_water_mark_bytes,
                       "mode": p.mode, "backing": p.backing, "data_file": p.data_file,
                       "metadata_file": p.metadata_file, "backing_free_bytes": p.backing_free_bytes,
                       "virtual_bytes": p.virtual_bytes, "when_full": p.when_full})
            })
            .collect();
        let errors: Vec<Value> = errors
            .iter()
            .map(|e| json!({"host": e.host, "code": e.code, "message": e.message}))
            .collect();
        print_json(&json!({"pools": rows, "errors": errors}));
        return;
    }
    let pct = |u: u64, t: u64| {
        if t == 0 {
            "-".to_string()
        } else {
            format!("{:.0}%", u as f64 * 100.0 / t as f64)
        }
    };
    let with_host = rows.iter().any(|(h, _)| !h.is_empty());
    let mut header: Vec<String> = [
        "POOL",
        "DATA",
        "USED",
        "META USED",
        "MODE",
        "WHEN FULL",
        "BACKING",
        "BACKING FREE",
        "OVERCOMMIT",
    ]
    .map(String::from)
    .to_vec();
    if with_host {
        header.insert(0, "HOST".into());
    }
    let mut lines = vec![header];
    for (host, p) in rows {
        let mut line = vec![
            p.name.clone(),
            format_bytes(p.data_total_bytes),
            pct(p.data_used_bytes, p.data_total_bytes),
            pct(p.metadata_used_bytes, p.metadata_total_bytes),
            p.mode.clone(),
            if p.when_full.is_empty() {
                "-".into()
            } else {
                p.when_full.clone()
            },
            p.backing.clone(),
            if p.backing == "loop" {
                format_bytes(p.backing_free_bytes)
            } else {
                "-".into()
            },
            if p.data_total_bytes == 0 {
                "-".into()
            } else {
                format!("{:.2}x", p.virtual_bytes as f64 / p.data_total_bytes as f64)
            },
        ];
        if with_host {
            line.insert(0, host.clone());
        }
        lines.push(line);
    }
    out!("{}", render(&lines));
    for e in errors {
        eprintln!("roomyctl: host {} did not answer: {}", e.host, e.message);
    }
}

/// `pool grow`.
pub fn print_grow_pool(reply: &GrowPoolResponse, json: bool) {
    if json {
        print_json(&json!({"message": reply.message,
            "data_total_bytes": reply.after.as_ref().map(|p| p.data_total_bytes),
            "metadata_total_bytes": reply.after.as_ref().map(|p| p.metadata_total_bytes),
            "mode": reply.after.as_ref().map(|p| p.mode.clone())}));
    } else {
        outln!("{}", reply.message);
    }
}

/// `hosts ls`.
pub fn print_hosts(hosts: &[Host], json: bool) {
    if json {
        let v: Vec<Value> = hosts
            .iter()
            .map(|h| {
                json!({"name": h.name, "address": h.address, "state": host_state(h).split(' ').next(),
                       "unreachable_since": h.unreachable_since, "last_error": h.last_error,
                       "last_seen": h.last_seen, "source": h.source, "agent_name": h.server_name})
            })
            .collect();
        print_json(&Value::Array(v));
        return;
    }
    let mut lines = vec![["NAME", "ADDRESS", "STATE", "LAST ERROR"]
        .map(String::from)
        .to_vec()];
    for h in hosts {
        lines.push(vec![
            h.name.clone(),
            h.address.clone(),
            host_state(h),
            h.last_error.clone(),
        ]);
    }
    out!("{}", render(&lines));
}

/// `audit`.
pub fn print_audit(entries: &[AuditEntry], json: bool) {
    if json {
        let v: Vec<Value> = entries
            .iter()
            .map(|e| {
                json!({"time_ms": e.time_ms, "principal": e.principal, "action": e.action, "target": e.target,
                       "from_bytes": e.from_bytes, "to_bytes": e.to_bytes, "result": e.result, "message": e.message})
            })
            .collect();
        print_json(&Value::Array(v));
        return;
    }
    let mut lines = vec![["TIME", "WHO", "ACTION", "TARGET", "CHANGE", "RESULT"]
        .map(String::from)
        .to_vec()];
    for e in entries {
        let change = if e.to_bytes > 0 && e.from_bytes > 0 {
            format!(
                "{} -> {}",
                format_bytes(e.from_bytes),
                format_bytes(e.to_bytes)
            )
        } else {
            "-".into()
        };
        lines.push(vec![
            when(e.time_ms),
            e.principal.clone(),
            e.action.clone(),
            e.target.clone(),
            change,
            e.result.clone(),
        ]);
    }
    out!("{}", render(&lines));
}

/// `inspect`: one container, field by field.
pub fn details(c: &ContainerStorage) -> String {
    let bytes = |b: u64| {
        if b == 0 {
            "-".to_string()
        } else {
            format!("{} ({b} bytes)", format_bytes(b))
        }
    };
    let mut out = String::new();
    let mut field = |k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
    field("name", c.name.clone());
    field("id", c.id.clone());
    field("state", c.state.clone());
    field("driver", c.driver.clone());
    if let Some(o) = c.overlay2() {
        field(
            "project",
            if o.project_id == 0 {
                "- (no limit)".into()
            } else {
                format!("XFS project {} on {}", o.project_id, o.layer_dir)
            },
        );
        field("limit", bytes(o.limit_bytes));
        field(
            "docker size",
            match (o.docker_size_bytes, o.docker_size_stale) {
                (0, _) => "- (created without --storage-opt size)".into(),
                (d, true) => format!("{} (stale: recorded at create)", bytes(d)),
                (d, false) => bytes(d),
            },
        );
        field(
            "backing",
            format!(
                "{} {} ({} free)",
                o.backing_fs,
                o.backing_mount,
                format_bytes(o.backing_free_bytes)
            ),
        );
        if c.fs_total_bytes > 0 {
            field(
                "used",
                format!(
                    "{} of {} ({:.0}%), {} inodes",
                    format_bytes(c.fs_used_bytes),
                    format_bytes(c.fs_total_bytes),
                    used_percent(c).unwrap_or(0.0),
                    c.inodes_used
                ),
            );
        }
    } else if let Some(dm) = c.devicemapper() {
        field(
            "device",
            format!("{} (thin id {})", dm.device_name, dm.device_id),
        );
        field("pool", dm.pool_name.clone());
        field("device active", dm.device_active.to_string());
        field("table size", bytes(dm.table_size_bytes));
        field("docker size", bytes(dm.docker_size_bytes));
        field("persisted size", bytes(dm.persisted_size_bytes));
        field(
            "filesystem",
            if c.fs_type.is_empty() {
                "-".into()
            } else {
                format!("{} {}", c.fs_type, bytes(c.fs_size_bytes))
            },
        );
        if c.fs_total_bytes > 0 {
            field(
                "used",
                format!(
                    "{} of {} ({:.0}%), {} inodes of {}",
                    format_bytes(c.fs_used_bytes),
                    format_bytes(c.fs_total_bytes),
                    used_percent(c).unwrap_or(0.0),
                    c.inodes_used,
                    c.inodes_total
                ),
            );
        }
        field("guarded", dm.guarded.to_string());
    }
    field(
        "health",
        format!("{}: {}", c.health().word(), c.health_message),
    );
    out
}

/// JSON of one container.
pub fn storage_json(c: &ContainerStorage) -> Value {
    serde_json::to_value(StorageJson::of(c, None)).expect("a container always serializes")
}

/// A container as JSON shows it: typed, so that a listing of 100,000 rows
/// is written straight from the rows (building a map of values per row
/// first was most of `ls -o json`'s time). `host` comes last, in fleet
/// mode only.
#[derive(serde::Serialize)]
struct StorageJson<'a> {
    id: &'a str,
    name: &'a str,
    state: &'a str,
    driver: &'a str,
    fs_type: &'a str,
    fs_size_bytes: u64,
    fs_total_bytes: u64,
    fs_used_bytes: u64,
    fs_avail_bytes: u64,
    inodes_total: u64,
    inodes_used: u64,
    health: &'static str,
    health_message: &'a str,
    devicemapper: Option<DevicemapperJson<'a>>,
    overlay2: Option<Overlay2Json<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
}

impl<'a> StorageJson<'a> {
    fn of(c: &'a ContainerStorage, host: Option<&'a str>) -> Self {
        StorageJson {
            id: &c.id,
            name: &c.name,
            state: &c.state,
            driver: &c.driver,
            fs_type: &c.fs_type,
            fs_size_bytes: c.fs_size_bytes,
            fs_total_bytes: c.fs_total_bytes,
            fs_used_bytes: c.fs_used_bytes,
            fs_avail_bytes: c.fs_avail_bytes,
            inodes_total: c.inodes_total,
            inodes_used: c.inodes_used,
            health: c.health().word(),
            health_message: &c.health_message,
            devicemapper: c.devicemapper().map(|d| DevicemapperJson {
                device_name: &d.device_name,
                device_id: d.device_id,
                pool_name: &d.pool_name,
                device_active: d.device_active,
                table_size_bytes: d.table_size_bytes,
                docker_size_bytes: d.docker_size_bytes,
                persisted_size_bytes: d.persisted_size_bytes,
                guarded: d.guarded,
            }),
            overlay2: c.overlay2().map(|o| Overlay2Json {
                project_id: o.project_id,
                layer_dir: &o.layer_dir,
                limit_bytes: o.limit_bytes,
                quota_used_bytes: o.quota_used_bytes,
                quota_used_inodes: o.quota_used_inodes,
                docker_size_bytes: o.docker_size_bytes,
                docker_size_stale: o.docker_size_stale,
                backing_mount: &o.backing_mount,
                backing_fs: &o.backing_fs,
                backing_free_bytes: o.backing_free_bytes,
            }),
            host,
        }
    }
}

#[derive(serde::Serialize)]
struct DevicemapperJson<'a> {
    device_name: &'a str,
    device_id: u64,
    pool_name: &'a str,
    device_active: bool,
    table_size_bytes: u64,
    docker_size_bytes: u64,
    persisted_size_bytes: u64,
    guarded: bool,
}

#[derive(serde::Serialize)]
struct Overlay2Json<'a> {
    project_id: u32,
    layer_dir: &'a str,
    limit_bytes: u64,
    quota_used_bytes: u64,
    quota_used_inodes: u64,
    docker_size_bytes: u64,
    docker_size_stale: bool,
    backing_mount: &'a str,
    backing_fs: &'a str,
    backing_free_bytes: u64,
}

/// JSON of a resize answer.
pub fn resize_json(r: &ResizeResponse) -> Value {
    json!({
        "action": match r.action() { ResizeAction::Grown => "grown", ResizeAction::Unchanged => "unchanged", ResizeAction::Unspecified => "unknown" },
        "from_bytes": r.from_bytes,
        "to_bytes": r.to_bytes,
        "message": r.message,
        "container": r.container.as_ref().map(storage_json),
    })
}

/// JSON of a repair answer.
pub fn repair_json(r: &RepairResponse) -> Value {
    json!({
        "action": if r.action == roomy_proto::v1::RepairAction::Repaired as i32 { "repaired" } else { "unchanged" },
        "message": r.message,
        "container": r.container.as_ref().map(storage_json),
    })
}

fn policy_json(p: &Policy) -> Value {
    let s = p.selector.clone().unwrap_or_default();
    let t = p.trigger.unwrap_or_default();
    let i = p.increase.unwrap_or_default();
    let g = p.pool_guard.unwrap_or_default();
    json!({
        "name": p.name,
        "kind": if p.target_kind() == roomy_proto::v1::PolicyKind::Pool { "pool" } else { "container" },
        "selector": {"hosts": s.host, "containers": s.container, "labels": s.labels},
        "trigger": {"used_percent": t.used_percent, "free_bytes": t.free_bytes, "inodes_percent": t.inodes_percent,
                    "metadata_percent": t.metadata_percent, "horizon_seconds": t.horizon_seconds},
        "increase": {"percent": i.percent, "bytes": i.bytes, "min_step_bytes": i.min_step_bytes, "metadata_bytes": i.metadata_bytes},
        "max_bytes": p.max_bytes,
        "cooldown_seconds": p.cooldown_seconds,
        "pool_guard": {"max_data_percent": g.max_data_percent, "max_metadata_percent": g.max_metadata_percent},
        "dry_run": p.dry_run,
        "source": p.source,
        "updated_by": p.updated_by,
        "updated_ms": p.updated_ms,
        "description": roomy_policy::describe(p),
    })
}

/// `policy set`.
pub fn print_set_policy(reply: &SetPolicyResponse, json: bool) {
    if json {
        print_json(&json!({
            "message": reply.message,
            "policy": reply.policy.as_ref().map(policy_json),
            "unchecked": reply.unchecked.iter().map(|e| json!({"host": e.host, "code": e.code, "message": e.message})).collect::<Vec<_>>(),
        }));
        return;
    }
    outln!("{}", reply.message);
    for e in &reply.unchecked {
        eprintln!(
            "warning: {}: could not check the cap against its containers: {}",
            e.host, e.message
        );
    }
}

/// `policy ls`.
pub fn print_policies(policies: &[Policy], json: bool) {
    if json {
        print_json(&Value::Array(policies.iter().map(policy_json).collect()));
        return;
    }
    let mut lines = vec![[
        "NAME",
        "KIND",
        "HOSTS",
        "CONTAINERS",
        "LABELS",
        "POLICY",
        "SOURCE",
    ]
    .map(String::from)
    .to_vec()];
    for p in policies {
        let s = p.selector.clone().unwrap_or_default();
        let or_all = |g: &str| {
            if g.is_empty() {
                "*".to_string()
            } else {
                g.to_string()
            }
        };
        let pool = p.target_kind() == roomy_proto::v1::PolicyKind::Pool;
        lines.push(vec![
            p.name.clone(),
            if pool { "pool" } else { "container" }.into(),
            or_all(&s.host),
            if pool {
                "-".into()
            } else {
                or_all(&s.container)
            },
            if s.labels.is_empty() {
                "-".into()
            } else {
                s.labels.join(",")
            },
            roomy_policy::describe(p),
            p.source.clone(),
        ]);
    }
    out!("{}", render(&lines));
}

/// `policy explain`.
pub fn print_explanation(e: &Explanation, json: bool) {
    if json {
        print_json(&json!({
            "host": e.host, "target": e.target, "policy": e.policy, "also_matching": e.also_matching,
            "decision": e.decision, "reason": e.reason, "current_bytes": e.current_bytes,
            "to_bytes": e.to_bytes, "lines": e.lines,
        }));
        return;
    }
    let policy = if e.policy.is_empty() {
        "none"
    } else {
        &e.policy
    };
    outln!("{}/{}: policy {policy}", e.host, e.target);
    if !e.also_matching.is_empty() {
        outln!(
            "  also matching (less specific): {}",
            e.also_matching.join(", ")
        );
    }
    for line in &e.lines {
        outln!("  {line}");
    }
    let mut verdict = format!("decision: {}", e.decision);
    if !e.reason.is_empty() {
        verdict.push_str(&format!(" ({})", e.reason));
    }
    if e.to_bytes > 0 {
        verdict.push_str(&format!(
            ", {} -> {}",
            format_bytes(e.current_bytes),
            format_bytes(e.to_bytes)
        ));
    }
    outln!("{verdict}");
}

/// `events`: one line per event, as it arrives.
pub fn print_event(e: &Event, json: bool) {
    let kind = EventKind::try_from(e.kind)
        .unwrap_or(EventKind::Unspecified)
        .word();
    if json {
        // One object per line, so `--follow -o json` pipes into jq.
        outln!(
            "{}",
            json!({"host": e.host, "seq": e.seq, "time_ms": e.time_ms, "policy": e.policy, "target": e.target,
                   "kind": kind, "reason": e.reason, "from_bytes": e.from_bytes, "to_bytes": e.to_bytes,
                   "duration_ms": e.duration_ms, "message": e.message})
        );
        return;
    }
    outln!(
        "{}  {}/{}  {kind}  {}  {}: {}",
        when(e.time_ms),
        e.host,
        e.target,
        e.reason,
        e.policy,
        e.message
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> ContainerStorage {
        ContainerStorage {
            name: "node".into(),
            state: "running".into(),
            driver: "devicemapper".into(),
            fs_type: "xfs".into(),
            fs_size_bytes: 4 << 30,
            fs_total_bytes: 4 << 30,
            fs_used_bytes: 1 << 30,
            health: Health::Pending as i32,
            ..Default::default()
        }
    }

    #[test]
    fn table_aligns_columns_and_shows_health_words() {
        let web = ContainerStorage {
            name: "web".into(),
            state: "exited".into(),
            driver: "overlay2".into(),
            health: Health::Unmanaged as i32,
            ..Default::default()
        };
        let text = table(&[(String::new(), node()), (String::new(), web)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAME  STATE    DRIVER        SIZE   FS   USED  HEALTH"
        );
        assert_eq!(
            lines[1],
            "node  running  devicemapper  4 GiB  xfs  25%   pending"
        );
        assert_eq!(
            lines[2],
            "web   exited   overlay2      -      -    -     unmanaged"
        );
    }

    #[test]
    fn fleet_rows_get_a_host_column() {
        let text = table(&[("host1".into(), node())]);
        assert!(text.starts_with("HOST   NAME"), "{text}");
        assert!(text.lines().nth(1).unwrap().starts_with("host1  node"));
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(when(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn json_uses_words_and_bytes() {
        let v = storage_json(&node());
        assert_eq!(v["health"], "pending");
        assert_eq!(v["fs_size_bytes"], 4u64 << 30);
    }
}
