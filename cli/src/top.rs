//! `top` and `ls --sort`: which disks fill next. The time to full comes
//! from the fill rates the agents' samplers measure (the numbers their
//! policy engines act on) and, where a policy will grow the disk, from the
//! room up to its cap: that is when writes start to fail.

use std::collections::HashMap;

use clap::ValueEnum;
use roomy_policy::{autogrow_off, cap_for, select};
use roomy_proto::format_bytes;
use roomy_proto::v1::{ContainerStorage, Health, HostError, Policy, PolicyKind, PoolStatus};
use serde_json::{json, Value};

/// How `ls --sort` and `top --sort` order containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    /// Soonest full first; those not filling last, fullest first.
    Full,
    /// Highest use first.
    Used,
    /// Largest first.
    Size,
    /// Fastest filling first.
    Rate,
    /// Host, then name.
    Name,
}

/// What fills next for one disk (a container's or a pool's).
#[derive(Clone, Debug, PartialEq)]
pub struct Outlook {
    /// Seconds until writes fail at the measured rate; None when it is not
    /// filling (or the rate was not measured).
    pub full_in: Option<f64>,
    /// The policy that will grow it, if any (dry-run policies do not).
    pub policy: Option<String>,
    /// Where that policy stops.
    pub cap: Option<u64>,
    /// Bytes that can still be written, growth up to the cap included.
    pub headroom: u64,
}

fn labels(c: &ContainerStorage) -> HashMap<String, String> {
    c.labels.clone().into_iter().collect()
}

fn outlook(rate: f64, free: u64, size: u64, growing: Option<(&Policy, u64)>) -> Outlook {
    let headroom = free + growing.map_or(0, |(_, cap)| cap.saturating_sub(size));
    Outlook {
        full_in: (rate > 0.0).then(|| headroom as f64 / rate),
        policy: growing.map(|(p, _)| p.name.clone()),
        cap: growing.map(|(_, cap)| cap),
        headroom,
    }
}

/// The outlook of a container on `host` under `policies` (those the
/// controller holds; empty when asking one agent).
pub fn container_outlook(host: &str, c: &ContainerStorage, policies: &[Policy]) -> Outlook {
    let labels = labels(c);
    let growing = (c.health() != Health::Unmanaged && !autogrow_off(&labels))
        .then(|| select(policies, PolicyKind::Container, host, &c.name, &labels))
        .and_then(|hits| hits.first().copied())
        .filter(|p| !p.dry_run)
        .map(|p| (p, cap_for(p, &labels)));
    outlook(
        c.fill_rate_bytes_per_second,
        c.fs_avail_bytes,
        c.size_bytes(),
        growing,
    )
}

/// The outlook of `host`'s pool (data space) under `policies`.
pub fn pool_outlook(host: &str, p: &PoolStatus, policies: &[Policy]) -> Outlook {
    let growing = select(policies, PolicyKind::Pool, host, "", &HashMap::new())
        .first()
        .copied()
        .filter(|p| !p.dry_run)
        .map(|policy| (policy, policy.max_bytes));
    outlook(
        p.data_fill_rate_bytes_per_second,
        p.data_total_bytes.saturating_sub(p.data_used_bytes),
        p.data_total_bytes,
        growing,
    )
}

fn used_fraction(c: &ContainerStorage) -> f64 {
    if c.fs_total_bytes == 0 {
        return 0.0;
    }
    c.fs_used_bytes as f64 / c.fs_total_bytes as f64
}

/// Orders `rows` by `key`; `Full` needs the policies (see `container_outlook`).
pub fn sort(rows: &mut [(String, ContainerStorage)], key: SortKey, policies: &[Policy]) {
    let by_name = |a: &(String, ContainerStorage), b: &(String, ContainerStorage)| {
        (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name))
    };
    let fullest =
        |a: &ContainerStorage, b: &ContainerStorage| used_fraction(b).total_cmp(&used_fraction(a));
    match key {
        SortKey::Name => rows.sort_by(by_name),
        SortKey::Used => rows.sort_by(|a, b| fullest(&a.1, &b.1).then_with(|| by_name(a, b))),
        SortKey::Size => rows.sort_by(|a, b| {
            b.1.size_bytes()
                .cmp(&a.1.size_bytes())
                .then_with(|| by_name(a, b))
        }),
        SortKey::Rate => rows.sort_by(|a, b| {
            b.1.fill_rate_bytes_per_second
                .total_cmp(&a.1.fill_rate_bytes_per_second)
                .then_with(|| by_name(a, b))
        }),
        SortKey::Full => {
            // Computed once per row, not once per comparison.
            let mut keyed: Vec<(Option<f64>, (String, ContainerStorage))> = rows
                .iter()
                .map(|r| (container_outlook(&r.0, &r.1, policies).full_in, r.clone()))
                .collect();
            keyed.sort_by(|(ta, a), (tb, b)| {
                match (ta, tb) {
                    (Some(x), Some(y)) => x.total_cmp(y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => fullest(&a.1, &b.1),
                }
                .then_with(|| by_name(a, b))
            });
            for (slot, (_, row)) in rows.iter_mut().zip(keyed) {
                *slot = row;
            }
        }
    }
}

/// Seconds for people, to two units at most: `45s`, `12m30s`, `5h10m`, `3d4h`.
pub fn format_eta(seconds: f64) -> String {
    if !seconds.is_finite() || seconds >= 100.0 * 86400.0 {
        return ">99d".into();
    }
    let s = seconds.max(0.0).round() as u64;
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

fn rate_cell(rate: f64) -> String {
    if rate > 0.0 {
        format!("{}/s", format_bytes(rate.round() as u64))
    } else if rate < 0.0 {
        "freeing".into()
    } else {
        "-".into()
    }
}

fn percent(used: u64, total: u64) -> String {
    if total == 0 {
        "-".into()
    } else {
        format!("{:.0}%", used as f64 * 100.0 / total as f64)
    }
}

fn or_dash(s: Option<String>) -> String {
    s.unwrap_or_else(|| "-".into())
}

/// The containers' table, in the order given; HOST only when rows have hosts.
pub fn container_table(rows: &[(String, ContainerStorage)], policies: &[Policy]) -> String {
    let with_host = rows.iter().any(|(h, _)| !h.is_empty());
    let mut lines = vec![[
        "HOST", "NAME", "STATE", "SIZE", "USED", "USE%", "RATE", "FULL IN", "POLICY", "CAP",
    ]
    .map(String::from)
    .to_vec()];
    for (host, c) in rows {
        let o = container_outlook(host, c, policies);
        let managed = c.health() != Health::Unmanaged;
        lines.push(vec![
            host.clone(),
            c.name.clone(),
            c.state.clone(),
            if managed {
                format_bytes(c.size_bytes())
            } else {
                "-".into()
            },
            if c.fs_total_bytes > 0 {
                format_bytes(c.fs_used_bytes)
            } else {
                "-".into()
            },
            percent(c.fs_used_bytes, c.fs_total_bytes),
            rate_cell(c.fill_rate_bytes_per_second),
            or_dash(o.full_in.map(format_eta)),
            or_dash(o.policy),
            or_dash(o.cap.map(format_bytes)),
        ]);
    }
    if !with_host {
        for l in &mut lines {
            l.remove(0);
        }
    }
    crate::output::render(&lines)
}

/// The pools' table, soonest full first.
pub fn pool_table(rows: &[(String, PoolStatus)], policies: &[Policy]) -> String {
    let mut rows: Vec<(&String, &PoolStatus, Outlook)> = rows
        .iter()
        .map(|(h, p)| (h, p, pool_outlook(h, p, policies)))
        .collect();
    rows.sort_by(|a, b| match (a.2.full_in, b.2.full_in) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.0.cmp(b.0),
    });
    let mut lines = vec![[
        "HOST", "POOL", "DATA", "USED", "USE%", "RATE", "FULL IN", "POLICY", "CAP",
    ]
    .map(String::from)
    .to_vec()];
    for (host, p, o) in rows {
        lines.push(vec![
            if host.is_empty() {
                "-".into()
            } else {
                host.clone()
            },
            p.name.clone(),
            format_bytes(p.data_total_bytes),
            format_bytes(p.data_used_bytes),
            percent(p.data_used_bytes, p.data_total_bytes),
            rate_cell(p.data_fill_rate_bytes_per_second),
            or_dash(o.full_in.map(format_eta)),
            or_dash(o.policy),
            or_dash(o.cap.map(format_bytes)),
        ]);
    }
    crate::output::render(&lines)
}

fn outlook_json(o: &Outlook) -> Value {
    json!({"full_in_seconds": o.full_in, "policy": o.policy, "cap_bytes": o.cap,
           "headroom_bytes": o.headroom})
}

/// One document: containers (in the order given) and pools, each with its
/// outlook, and the hosts that did not answer.
pub fn top_json(
    rows: &[(String, ContainerStorage)],
    pools: &[(String, PoolStatus)],
    policies: &[Policy],
    errors: &[HostError],
) -> Value {
    let containers: Vec<Value> = rows
        .iter()
        .map(|(host, c)| {
            let mut v = json!({"host": host, "name": c.name, "state": c.state,
                "size_bytes": c.size_bytes(), "used_bytes": c.fs_used_bytes,
                "total_bytes": c.fs_total_bytes, "avail_bytes": c.fs_avail_bytes,
                "fill_rate_bytes_per_second": c.fill_rate_bytes_per_second});
            merge(&mut v, outlook_json(&container_outlook(host, c, policies)));
            v
        })
        .collect();
    let pools: Vec<Value> = pools
        .iter()
        .map(|(host, p)| {
            let mut v = json!({"host": host, "name": p.name,
                "data_total_bytes": p.data_total_bytes, "data_used_bytes": p.data_used_bytes,
                "data_fill_rate_bytes_per_second": p.data_fill_rate_bytes_per_second});
            merge(&mut v, outlook_json(&pool_outlook(host, p, policies)));
            v
        })
        .collect();
    let errors: Vec<Value> = errors
        .iter()
        .map(|e| json!({"host": e.host, "code": e.code, "message": e.message}))
        .collect();
    json!({"containers": containers, "pools": pools, "errors": errors})
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        a.extend(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomy_proto::v1::{Increase, Selector, Trigger};

    const G: u64 = 1 << 30;

    fn ctr(name: &str, size: u64, used: u64, rate: f64) -> ContainerStorage {
        ContainerStorage {
            name: name.into(),
            state: "running".into(),
            fs_size_bytes: size,
            fs_total_bytes: size,
            fs_used_bytes: used,
            fs_avail_bytes: size - used,
            fill_rate_bytes_per_second: rate,
            health: Health::Ok as i32,
            ..Default::default()
        }
    }

    fn policy(name: &str, container: &str, max: u64, dry_run: bool) -> Policy {
        Policy {
            name: name.into(),
            kind: PolicyKind::Container as i32,
            selector: Some(Selector {
                container: container.into(),
                ..Default::default()
            }),
            trigger: Some(Trigger::default()),
            increase: Some(Increase::default()),
            max_bytes: max,
            dry_run,
            ..Default::default()
        }
    }

    #[test]
    fn time_to_full_counts_growth_up_to_the_cap() {
        let c = ctr("db", 2 * G, G, (1 << 20) as f64);
        // No policy: the 1 GiB left, at 1 MiB/s.
        let o = container_outlook("h", &c, &[]);
        assert_eq!(o.full_in, Some(1024.0));
        assert_eq!(o.policy, None);
        // A policy capped at 4G adds the 2 GiB it can still grow.
        let ps = [policy("grow", "db", 4 * G, false)];
        let o = container_outlook("h", &c, &ps);
        assert_eq!(o.full_in, Some(3.0 * 1024.0));
        assert_eq!((o.policy.as_deref(), o.cap), (Some("grow"), Some(4 * G)));
        // A dry-run policy grows nothing; a label turns the policy off; a
        // roomy.max-size label moves the cap.
        let o = container_outlook("h", &c, &[policy("dry", "db", 4 * G, true)]);
        assert_eq!(o.full_in, Some(1024.0));
        let mut off = c.clone();
        off.labels.insert("roomy.autogrow".into(), "off".into());
        assert_eq!(container_outlook("h", &off, &ps).full_in, Some(1024.0));
        let mut capped = c.clone();
        capped.labels.insert("roomy.max-size".into(), "3G".into());
        assert_eq!(
            container_outlook("h", &capped, &ps).full_in,
            Some(2.0 * 1024.0)
        );
        // Not filling: no time; a disk past its cap has only what is free.
        assert_eq!(
            container_outlook("h", &ctr("x", G, 0, 0.0), &ps).full_in,
            None
        );
        assert_eq!(
            container_outlook("h", &ctr("x", G, 0, -5.0), &ps).full_in,
            None
        );
        let big = ctr("db", 8 * G, 7 * G, (1 << 20) as f64);
        assert_eq!(container_outlook("h", &big, &ps).full_in, Some(1024.0));
    }

    #[test]
    fn sort_by_full_puts_the_soonest_first_and_idle_last_fullest_first() {
        let mut rows = vec![
            ("a".to_string(), ctr("idle-half", 2 * G, G, 0.0)),
            ("a".to_string(), ctr("slow", 2 * G, G, 1024.0)),
            ("b".to_string(), ctr("fast", 2 * G, G, (1 << 20) as f64)),
            ("a".to_string(), ctr("idle-full", 2 * G, 2 * G - 1, 0.0)),
        ];
        sort(&mut rows, SortKey::Full, &[]);
        let names: Vec<&str> = rows.iter().map(|(_, c)| c.name.as_str()).collect();
        assert_eq!(names, ["fast", "slow", "idle-full", "idle-half"]);
        sort(&mut rows, SortKey::Name, &[]);
        let names: Vec<&str> = rows.iter().map(|(_, c)| c.name.as_str()).collect();
        assert_eq!(names, ["idle-full", "idle-half", "slow", "fast"]);
        sort(&mut rows, SortKey::Rate, &[]);
        assert_eq!(rows[0].1.name, "fast");
        sort(&mut rows, SortKey::Used, &[]);
        assert_eq!(rows[0].1.name, "idle-full");
    }

    #[test]
    fn pools_fill_at_their_sampled_rate_up_to_a_pool_policy_cap() {
        let p = PoolStatus {
            name: "docker-pool".into(),
            data_total_bytes: 10 * G,
            data_used_bytes: 9 * G,
            data_fill_rate_bytes_per_second: (1 << 20) as f64,
            ..Default::default()
        };
        assert_eq!(pool_outlook("h", &p, &[]).full_in, Some(1024.0));
        let mut pp = policy("pools", "", 12 * G, false);
        pp.kind = PolicyKind::Pool as i32;
        let o = pool_outlook("h", &p, &[pp]);
        assert_eq!(o.full_in, Some(3.0 * 1024.0));
        let table = pool_table(&[("h".into(), p)], &[]);
        assert!(table.contains("17m04s"), "{table}");
    }

    #[test]
    fn eta_reads_like_people_write_it() {
        assert_eq!(format_eta(0.4), "0s");
        assert_eq!(format_eta(45.0), "45s");
        assert_eq!(format_eta(750.0), "12m30s");
        assert_eq!(format_eta(5.0 * 3600.0 + 600.0), "5h10m");
        assert_eq!(format_eta(3.0 * 86400.0 + 4.0 * 3600.0), "3d4h");
        assert_eq!(format_eta(1e12), ">99d");
        assert_eq!(format_eta(f64::INFINITY), ">99d");
    }

    #[test]
    fn the_table_says_dash_for_what_is_not_known() {
        let mut stopped = ctr("web", G, 0, 0.0);
        stopped.state = "exited".into();
        stopped.fs_total_bytes = 0;
        let t = container_table(&[(String::new(), stopped)], &[]);
        let line = t.lines().nth(1).unwrap();
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>(),
            ["web", "exited", "1", "GiB", "-", "-", "-", "-", "-", "-"]
        );
        assert!(!t.starts_with("HOST"), "{t}");
    }
}
