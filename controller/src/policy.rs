//! Policy checks only the controller can make (a cap against the live
//! containers it would apply to) and `explain`, which runs the agents' own
//! decision function on the numbers an agent reports.

use std::collections::HashMap;

use roomy_policy::{cap_for, decide, decide_pool, select, Observation, PoolNumbers};
use roomy_proto::format_bytes;
use roomy_proto::v1::{ContainerStorage, Explanation, Health, Policy, PolicyKind, PoolStatus};

/// The name explain and events use for a host's pool.
pub const POOL_TARGET: &str = "pool";

fn labels(c: &ContainerStorage) -> HashMap<String, String> {
    c.labels.clone().into_iter().collect()
}

/// Containers on `host` that `policy` would apply to and that are already
/// past its cap: a policy that cannot do what it says is refused.
pub fn past_cap(policy: &Policy, host: &str, containers: &[ContainerStorage]) -> Vec<String> {
    if policy.target_kind() != PolicyKind::Container {
        return Vec::new();
    }
    containers
        .iter()
        // Every backend's containers count alike; only those Roomy cannot
        // size (no limit to grow) are out of a policy's reach.
        .filter(|c| c.health() != Health::Unmanaged)
        .filter(|c| roomy_policy::matches(policy, host, &c.name, &labels(c)))
        .filter_map(|c| {
            let cap = cap_for(policy, &labels(c));
            let size = c.size_bytes();
            (size > cap).then(|| {
                format!(
                    "{host}/{} is {}, above the cap {}",
                    c.name,
                    format_bytes(size),
                    format_bytes(cap)
                )
            })
        })
        .collect()
}

/// What the policy in force would do with `container` now.
pub fn explain_container(
    policies: &[Policy],
    host: &str,
    c: &ContainerStorage,
    pool: Option<&PoolStatus>,
    last_grow_ms: Option<i64>,
    now_ms: i64,
) -> Explanation {
    let labels = labels(c);
    let hits = select(policies, PolicyKind::Container, host, &c.name, &labels);
    let mut out = Explanation {
        host: host.into(),
        target: c.name.clone(),
        current_bytes: c.size_bytes(),
        also_matching: hits.iter().skip(1).map(|p| p.name.clone()).collect(),
        ..Default::default()
    };
    let Some(policy) = hits.first() else {
        out.decision = "none".into();
        out.lines = vec![format!("no policy selects {host}/{}", c.name)];
        return out;
    };
    if c.state != "running" {
        out.policy = policy.name.clone();
        out.decision = "idle".into();
        out.lines = vec![format!(
            "{} is {}: policies act on running containers",
            c.name, c.state
        )];
        return out;
    }
    let obs = Observation {
        size_bytes: c.size_bytes(),
        used_bytes: c.fs_used_bytes,
        avail_bytes: c.fs_avail_bytes,
        inodes_total: c.inodes_total,
        inodes_used: c.inodes_used,
        fill_rate: c.fill_rate_bytes_per_second,
        labels,
        pool: pool.map(|p| PoolNumbers::from_status(p, p.data_fill_rate_bytes_per_second)),
    };
    let d = decide(policy, &obs, last_grow_ms, now_ms);
    out.policy = policy.name.clone();
    out.decision = d.verdict.word().into();
    out.reason = d.reason.into();
    out.to_bytes = if d.to_bytes > d.from_bytes {
        d.to_bytes
    } else {
        0
    };
    out.lines = d.lines;
    out
}

/// What the pool policy in force would do with `host`'s pool now.
pub fn explain_pool(
    policies: &[Policy],
    host: &str,
    pool: &PoolStatus,
    last_grow_ms: Option<i64>,
    now_ms: i64,
) -> Explanation {
    let hits = select(policies, PolicyKind::Pool, host, "", &HashMap::new());
    let mut out = Explanation {
        host: host.into(),
        target: POOL_TARGET.into(),
        current_bytes: pool.data_total_bytes,
        also_matching: hits.iter().skip(1).map(|p| p.name.clone()).collect(),
        ..Default::default()
    };
    let Some(policy) = hits.first() else {
        out.decision = "none".into();
        out.lines = vec![format!("no pool policy selects {host}")];
        return out;
    };
    let d = decide_pool(
        policy,
        &PoolNumbers::from_status(pool, pool.data_fill_rate_bytes_per_second),
        last_grow_ms,
        now_ms,
    );
    out.policy = policy.name.clone();
    out.decision = d.verdict.word().into();
    out.reason = d.reason.into();
    out.to_bytes = d.data_to.unwrap_or(0);
    out.lines = d.lines;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomy_policy::PolicySpec;

    const G: u64 = 1 << 30;

    fn policy() -> Policy {
        PolicySpec {
            name: "grow80".into(),
            containers: "web-*".into(),
            at: Some("80%".into()),
            grow: Some("50%".into()),
            max: Some("4G".into()),
            ..Default::default()
        }
        .to_policy()
        .unwrap()
    }

    fn container(name: &str, size: u64, used: u64) -> ContainerStorage {
        ContainerStorage {
            name: name.into(),
            state: "running".into(),
            driver: "devicemapper".into(),
            fs_size_bytes: size,
            fs_used_bytes: used,
            fs_avail_bytes: size - used,
            ..Default::default()
        }
        .with_devicemapper(roomy_proto::v1::DevicemapperStorage {
            table_size_bytes: size,
            ..Default::default()
        })
    }

    #[test]
    fn a_cap_below_a_matching_container_is_named() {
        let cs = [container("web-1", 6 * G, G), container("db", 8 * G, G)];
        let past = past_cap(&policy(), "host1", &cs);
        assert_eq!(past, ["host1/web-1 is 6 GiB, above the cap 4 GiB"]);
    }

    #[test]
    fn an_overlay2_container_past_the_cap_is_named_and_an_unlimited_one_is_not() {
        let overlay = |name: &str, health: Health| ContainerStorage {
            driver: "overlay2".into(),
            health: health as i32,
            detail: Some(roomy_proto::v1::container_storage::Detail::Overlay2(
                roomy_proto::v1::Overlay2Storage {
                    limit_bytes: 6 * G,
                    ..Default::default()
                },
            )),
            ..container(name, 6 * G, G)
        };
        let cs = [
            overlay("web-1", Health::Ok),
            overlay("web-2", Health::Unmanaged),
        ];
        let past = past_cap(&policy(), "host1", &cs);
        assert_eq!(past, ["host1/web-1 is 6 GiB, above the cap 4 GiB"]);
    }

    #[test]
    fn explain_names_the_policy_and_the_numbers() {
        let e = explain_container(
            &[policy()],
            "host1",
            &container("web-1", G, 900 << 20),
            None,
            None,
            0,
        );
        assert_eq!(
            (e.policy.as_str(), e.decision.as_str(), e.reason.as_str()),
            ("grow80", "grow", "used_percent")
        );
        assert_eq!(e.to_bytes, G + (512 << 20));
        assert!(e.lines.iter().any(|l| l.contains("87.9%")), "{:?}", e.lines);
        let e = explain_container(
            &[policy()],
            "host1",
            &container("db", G, 900 << 20),
            None,
            None,
            0,
        );
        assert_eq!(e.decision, "none");
    }
}
