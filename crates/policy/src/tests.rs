//! Table-driven tests of the decision function and of validation.

use super::*;

const M: u64 = 1 << 20;
const G: u64 = 1 << 30;

fn spec(extra: impl FnOnce(&mut PolicySpec)) -> Policy {
    let mut s = PolicySpec {
        name: "grow80".into(),
        at: Some("80%".into()),
        grow: Some("50%".into()),
        max: Some("4G".into()),
        horizon: Some("0".into()),
        cooldown: Some("30s".into()),
        ..Default::default()
    };
    extra(&mut s);
    s.to_policy().expect("valid test policy")
}

fn obs(size: u64, used: u64) -> Observation {
    Observation {
        size_bytes: size,
        used_bytes: used,
        avail_bytes: size - used,
        inodes_total: 1000,
        inodes_used: 10,
        ..Default::default()
    }
}

struct Case {
    what: &'static str,
    policy: Policy,
    obs: Observation,
    last_grow_ms: Option<i64>,
    verdict: Verdict,
    reason: &'static str,
    to: u64,
}

#[test]
fn decisions() {
    let now = 1_000_000;
    let pool = |data_used, data_total| PoolNumbers {
        data_used,
        data_total,
        meta_used: M,
        meta_total: 100 * M,
        backing_free: Some(100 * G),
        data_rate: 0.0,
    };
    let labelled = |k: &str, v: &str| {
        let mut o = obs(G, 900 * M);
        o.labels.insert(k.into(), v.into());
        o
    };
    let cases = vec![
        Case {
            what: "below the threshold: idle",
            policy: spec(|_| {}),
            obs: obs(G, 700 * M),
            last_grow_ms: None,
            verdict: Verdict::Idle,
            reason: "",
            to: G,
        },
        Case {
            what: "at the threshold: grow by 50%",
            policy: spec(|_| {}),
            obs: obs(G, 820 * M),
            last_grow_ms: None,
            verdict: Verdict::Grow,
            reason: "used_percent",
            to: G + 512 * M,
        },
        Case {
            what: "the step stops at the cap",
            policy: spec(|_| {}),
            obs: obs(3 * G + 512 * M, 3 * G + 100 * M),
            last_grow_ms: None,
            verdict: Verdict::Grow,
            reason: "used_percent",
            to: 4 * G,
        },
        Case {
            what: "at the cap: skip, cap_reached",
            policy: spec(|_| {}),
            obs: obs(4 * G, 4 * G - 10 * M),
            last_grow_ms: None,
            verdict: Verdict::Skip,
            reason: "cap_reached",
            to: 4 * G,
        },
        Case {
            what: "free-bytes trigger",
            policy: spec(|s| {
                s.at = None;
                s.free = Some("300M".into());
                s.grow = Some("1G".into());
            }),
            obs: obs(2 * G, 2 * G - 200 * M),
            last_grow_ms: None,
            verdict: Verdict::Grow,
            reason: "free_bytes",
            to: 3 * G,
        },
        Case {
            what: "inodes trigger",
            policy: spec(|s| s.inodes = Some("90%".into())),
            obs: Observation {
                inodes_used: 950,
                ..obs(G, 100 * M)
            },
            last_grow_ms: None,
            verdict: Verdict::Grow,
            reason: "inodes_percent",
            to: G + 512 * M,
        },
        Case {
            what: "the minimum step wins over a small percent",
            policy: spec(|s| {
                s.grow = Some("10%".into());
                s.min_step = Some("512M".into());
            }),
            obs: obs(G, 900 * M),
            last_grow_ms: None,
            verdict: Verdict::Grow,
            reason: "used_percent",
            to: G + 512 * M,
        },
        Case {
            what: "inside the cooldown and not urgent: skip",
            policy: spec(|_| {}),
            obs: obs(G, 900 * M),
            last_grow_ms: Some(now - 10_000),
            verdict: Verdict::Skip,
            reason: "cooldown",
            to: G,
        },
        Case {
            what: "after the cooldown: grow",
            policy: spec(|_| {}),
            obs: obs(G, 900 * M),
            last_grow_ms: Some(now - 31_000),
            verdict: Verdict::Grow,
            reason: "used_percent",
            to: G + 512 * M,
        },
        Case {
            what: "inside the cooldown but full within the horizon: grow",
            policy: spec(|s| s.horizon = Some("20s".into())),
            obs: Observation {
                fill_rate: (50 * M) as f64,
                ..obs(G, 900 * M)
            },
            last_grow_ms: Some(now - 1_000),
            verdict: Verdict::Grow,
            reason: "used_percent",
            // 50 MiB/s for 20 s = 1000 MiB, more than 50% of 1 GiB.
            to: G + 1000 * M,
        },
        Case {
            what: "rate-aware: below the threshold, full in 6 s: grow early",
            policy: spec(|s| s.horizon = Some("20s".into())),
            obs: Observation {
                fill_rate: (100 * M) as f64,
                ..obs(G, 400 * M)
            },
            last_grow_ms: None,
            verdict: Verdict::Grow,
            reason: "fill_rate",
            // 100 MiB/s x 20 s = 2000 MiB step, above 50%.
            to: G + 2000 * M,
        },
        Case {
            what: "rate-aware: a slow writer does not fire early",
            policy: spec(|s| s.horizon = Some("20s".into())),
            obs: Observation {
                fill_rate: M as f64,
                ..obs(G, 400 * M)
            },
            last_grow_ms: None,
            verdict: Verdict::Idle,
            reason: "",
            to: G,
        },
        Case {
            what: "rate-aware step is still capped",
            policy: spec(|s| s.horizon = Some("60s".into())),
            obs: Observation {
                fill_rate: (200 * M) as f64,
                ..obs(G, 850 * M)
            },
            last_grow_ms: None,
            verdict: Verdict::Grow,
            reason: "used_percent",
            to: 4 * G,
        },
        Case {
            what: "label roomy.autogrow=off: skip, disabled",
            policy: spec(|_| {}),
            obs: labelled(LABEL_AUTOGROW, "off"),
            last_grow_ms: None,
            verdict: Verdict::Skip,
            reason: "disabled",
            to: G,
        },
        Case {
            what: "label roomy.max-size lowers the cap",
            policy: spec(|_| {}),
            obs: labelled(LABEL_MAX_SIZE, "1200M"),
            last_grow_ms: None,
            verdict: Verdict::Grow,
            reason: "used_percent",
            to: 1200 * M,
        },
        Case {
            what: "label roomy.max-size raises the cap",
            policy: spec(|_| {}),
            obs: Observation {
                labels: HashMap::from([(LABEL_MAX_SIZE.to_string(), "50G".to_string())]),
                ..obs(4 * G, 4 * G - 100 * M)
            },
            last_grow_ms: None,
            verdict: Verdict::Grow,
            reason: "used_percent",
            to: 6 * G,
        },
        Case {
            what: "a label that is not a size leaves the policy's cap",
            policy: spec(|_| {}),
            obs: Observation {
                labels: HashMap::from([(LABEL_MAX_SIZE.to_string(), "lots".to_string())]),
                ..obs(4 * G, 4 * G - 100 * M)
            },
            last_grow_ms: None,
            verdict: Verdict::Skip,
            reason: "cap_reached",
            to: 4 * G,
        },
        Case {
            what: "pool guard: growth could take the pool past 95%",
            policy: spec(|_| {}),
            obs: Observation {
                pool: Some(pool(9 * G + 300 * M, 10 * G)),
                ..obs(G, 900 * M)
            },
            last_grow_ms: None,
            verdict: Verdict::Skip,
            reason: "pool_guard",
            to: G,
        },
        Case {
            what: "pool guard passes with room",
            policy: spec(|_| {}),
            obs: Observation {
                pool: Some(pool(2 * G, 10 * G)),
                ..obs(G, 900 * M)
            },
            last_grow_ms: None,
            verdict: Verdict::Grow,
            reason: "used_percent",
            to: G + 512 * M,
        },
        Case {
            what: "pool guard off (0%)",
            policy: spec(|s| s.pool_guard = Some("0".into())),
            obs: Observation {
                pool: Some(pool(9 * G + 900 * M, 10 * G)),
                ..obs(G, 900 * M)
            },
            last_grow_ms: None,
            verdict: Verdict::Grow,
            reason: "used_percent",
            to: G + 512 * M,
        },
        Case {
            what: "pool guard on metadata",
            policy: spec(|s| s.pool_guard_metadata = Some("50%".into())),
            obs: Observation {
                pool: Some(PoolNumbers {
                    meta_used: 60 * M,
                    ..pool(2 * G, 10 * G)
                }),
                ..obs(G, 900 * M)
            },
            last_grow_ms: None,
            verdict: Verdict::Skip,
            reason: "pool_guard",
            to: G,
        },
        Case {
            what: "dry run: would grow",
            policy: spec(|s| s.dry_run = true),
            obs: obs(G, 900 * M),
            last_grow_ms: None,
            verdict: Verdict::WouldGrow,
            reason: "used_percent",
            to: G + 512 * M,
        },
    ];
    for c in cases {
        let d = decide(&c.policy, &c.obs, c.last_grow_ms, now);
        assert_eq!(
            (d.verdict, d.reason, d.to_bytes),
            (c.verdict, c.reason, c.to),
            "{}: {}",
            c.what,
            d.lines.join(" | ")
        );
        assert_eq!(d.from_bytes, c.obs.size_bytes, "{}", c.what);
        assert!(!d.message.is_empty(), "{}", c.what);
        // The sampler's shortcut answers as decide does.
        assert_eq!(
            idle(&c.policy, &c.obs),
            d.verdict == Verdict::Idle,
            "idle() disagrees with decide(): {}",
            c.what
        );
    }
}

/// The sampler leaves a filesystem unread while less than
/// `write_headroom` bytes can have been written into it: for that to be
/// safe, no write short of the headroom may make a trigger fire, and it is
/// tight (the next bytes do), so a read is not put off longer than needed.
#[test]
fn write_headroom_is_the_least_write_that_fires() {
    let policies = [
        ("80%", spec(|_| {})),
        (
            "1G free",
            spec(|s| {
                s.at = None;
                s.free = Some("1G".into());
            }),
        ),
        ("both", spec(|s| s.free = Some("3G".into()))),
        ("99.5%", spec(|s| s.at = Some("99.5%".into()))),
    ];
    let write = |o: &Observation, x: u64| Observation {
        used_bytes: o.used_bytes + x,
        avail_bytes: o.avail_bytes - x,
        ..o.clone()
    };
    for (what, p) in &policies {
        for (size, used) in [(4 * G, 0), (4 * G, G + 7), (10 * G, 5 * G), (G / 2, 3 * M)] {
            let o = obs(size, used);
            let room = write_headroom(p, &o);
            if trigger(p, &o).is_some() {
                assert_eq!(room, 0, "{what} on {size}/{used}: fires now");
                continue;
            }
            assert!(
                room > 0 && room < u64::MAX,
                "{what} on {size}/{used}: {room}"
            );
            assert!(
                trigger(p, &write(&o, room - 1)).is_none(),
                "{what} on {size}/{used}: fired before its headroom {room}"
            );
            assert!(
                trigger(p, &write(&o, room + 1)).is_some(),
                "{what} on {size}/{used}: headroom {room} is not tight"
            );
        }
    }
    // Where bytes written do not bound it: sample at every pass.
    let at = spec(|_| {});
    assert_eq!(write_headroom(&at, &obs(G, 900 * M)), 0, "fires now");
    let inodes = spec(|s| s.inodes = Some("90%".into()));
    assert_eq!(write_headroom(&inodes, &obs(G, 0)), 0, "inodes trigger");
    let rated = spec(|s| s.horizon = Some("20s".into()));
    let mut filling = obs(G, 0);
    filling.fill_rate = 1.0;
    assert_eq!(
        write_headroom(&rated, &filling),
        0,
        "a fill rate, rate-aware"
    );
    filling.fill_rate = 0.0;
    assert_eq!(
        write_headroom(&rated, &filling),
        858_993_459,
        "not filling: 80% of 1 GiB"
    );
}

#[test]
fn skip_messages_carry_the_numbers() {
    let p = spec(|_| {});
    let d = decide(&p, &obs(4 * G, 4 * G - 10 * M), None, 0);
    assert!(d.message.contains("cap 4 GiB"), "{}", d.message);
    assert!(d.message.contains("used 99.8% >= 80%"), "{}", d.message);
    let d = decide(&p, &obs(G, 900 * M), None, 0);
    assert_eq!(d.message, "used 87.9% >= 80%: grow 1 GiB -> 1.5 GiB");
    assert!(d.lines.iter().any(|l| l.contains("policy grow80")));
}

fn pool_policy(extra: impl FnOnce(&mut PolicySpec)) -> Policy {
    spec(|s| {
        s.pool = true;
        s.max = Some("20G".into());
        s.metadata_at = Some("80%".into());
        s.grow_metadata = Some("64M".into());
        extra(s);
    })
}

/// What, policy, pool, verdict, reason, data to, metadata to.
type PoolCase = (
    &'static str,
    Policy,
    PoolNumbers,
    Verdict,
    &'static str,
    Option<u64>,
    Option<u64>,
);

/// What, the change to a valid spec, a piece of the expected message.
type BadSpec = (&'static str, Box<dyn Fn(&mut PolicySpec)>, &'static str);

#[test]
fn pool_decisions() {
    let base = PoolNumbers {
        data_used: 5 * G,
        data_total: 10 * G,
        meta_used: 10 * M,
        meta_total: 100 * M,
        backing_free: Some(50 * G),
        data_rate: 0.0,
    };
    let cases: Vec<PoolCase> = vec![
        (
            "idle",
            pool_policy(|_| {}),
            base,
            Verdict::Idle,
            "",
            None,
            None,
        ),
        (
            "data at 85%: grow data by 50%",
            pool_policy(|_| {}),
            PoolNumbers {
                data_used: 8 * G + 512 * M,
                ..base
            },
            Verdict::Grow,
            "used_percent",
            Some(15 * G),
            None,
        ),
        (
            "metadata at 90%: grow metadata by the larger of 50% and 64M",
            pool_policy(|_| {}),
            PoolNumbers {
                meta_used: 90 * M,
                ..base
            },
            Verdict::Grow,
            "metadata_percent",
            None,
            Some(164 * M),
        ),
        (
            "data capped at 20G",
            pool_policy(|_| {}),
            PoolNumbers {
                data_used: 17 * G,
                data_total: 18 * G,
                ..base
            },
            Verdict::Grow,
            "used_percent",
            Some(20 * G),
            None,
        ),
        (
            "data at the cap",
            pool_policy(|_| {}),
            PoolNumbers {
                data_used: 19 * G,
                data_total: 20 * G,
                ..base
            },
            Verdict::Skip,
            "cap_reached",
            None,
            None,
        ),
        (
            "backing lacks the space",
            pool_policy(|_| {}),
            PoolNumbers {
                data_used: 9 * G,
                backing_free: Some(G),
                ..base
            },
            Verdict::Skip,
            "backing_space",
            Some(15 * G),
            None,
        ),
        (
            "backing Roomy cannot grow",
            pool_policy(|_| {}),
            PoolNumbers {
                data_used: 9 * G,
                backing_free: None,
                ..base
            },
            Verdict::Skip,
            "backing_space",
            Some(15 * G),
            None,
        ),
        (
            "dry run",
            pool_policy(|s| s.dry_run = true),
            PoolNumbers {
                data_used: 9 * G,
                ..base
            },
            Verdict::WouldGrow,
            "used_percent",
            Some(15 * G),
            None,
        ),
        (
            "rate-aware: data fills in 10 s",
            pool_policy(|s| s.horizon = Some("30s".into())),
            PoolNumbers {
                data_rate: (512 * M) as f64,
                ..base
            },
            Verdict::Grow,
            "fill_rate",
            Some(20 * G),
            None,
        ),
    ];
    for (what, policy, pool, verdict, reason, data_to, meta_to) in cases {
        let d = decide_pool(&policy, &pool, None, 0);
        assert_eq!(
            (d.verdict, d.reason, d.data_to, d.meta_to),
            (verdict, reason, data_to, meta_to),
            "{what}: {}",
            d.lines.join(" | ")
        );
    }
    let d = decide_pool(
        &pool_policy(|_| {}),
        &PoolNumbers {
            data_used: 9 * G,
            backing_free: Some(G),
            ..base
        },
        None,
        0,
    );
    assert!(
        d.message
            .contains("needs 5 GiB but its backing has 1 GiB free"),
        "{}",
        d.message
    );
}

#[test]
fn invalid_policies_say_what_to_fix() {
    let cases: Vec<BadSpec> = vec![
        (
            "threshold above 100",
            Box::new(|s| s.at = Some("120%".into())),
            "at most 100",
        ),
        (
            "negative threshold",
            Box::new(|s| s.at = Some("-5%".into())),
            "above 0",
        ),
        (
            "not a percentage",
            Box::new(|s| s.at = Some("lots".into())),
            "not a percentage",
        ),
        (
            "zero step",
            Box::new(|s| s.grow = Some("0%".into())),
            "the step is zero",
        ),
        (
            "negative step",
            Box::new(|s| s.grow = Some("-10%".into())),
            "above 0%",
        ),
        (
            "zero bytes step",
            Box::new(|s| s.grow = Some("0".into())),
            "the step is zero",
        ),
        ("no cap", Box::new(|s| s.max = None), "no cap"),
        (
            "bad glob",
            Box::new(|s| s.containers = "web[0-9".into()),
            "never closes",
        ),
        (
            "bad label",
            Box::new(|s| s.labels = vec!["=x".into()]),
            "key=value",
        ),
        ("bad name", Box::new(|s| s.name = "grow 80".into()), "name"),
        ("no trigger", Box::new(|s| s.at = None), "no trigger"),
        (
            "bad duration",
            Box::new(|s| s.cooldown = Some("soon".into())),
            "not a duration",
        ),
        (
            "pool policy with a container glob",
            Box::new(|s| {
                s.pool = true;
                s.containers = "web*".into();
            }),
            "selects hosts only",
        ),
    ];
    for (what, change, needle) in cases {
        let mut s = PolicySpec {
            name: "p".into(),
            at: Some("80%".into()),
            grow: Some("50%".into()),
            max: Some("4G".into()),
            ..Default::default()
        };
        change(&mut s);
        let err = s.to_policy().expect_err(what).to_string();
        assert!(err.contains(needle), "{what}: {err}");
    }
}

#[test]
fn selection_prefers_the_most_specific() {
    let p = |name: &str, host: &str, container: &str, labels: &[&str]| {
        spec(|s| {
            s.name = name.into();
            s.hosts = host.into();
            s.containers = container.into();
            s.labels = labels.iter().map(|l| l.to_string()).collect();
        })
    };
    let policies = vec![
        p("all", "", "", &[]),
        p("web", "host*", "web-*", &[]),
        p("web-prod", "host*", "web-*", &["env=prod"]),
        p("exact", "host1", "web-1", &[]),
        p("other", "db*", "", &[]),
    ];
    let labels = HashMap::from([("env".to_string(), "prod".to_string())]);
    let names = |host, c, l: &HashMap<String, String>| {
        select(&policies, PolicyKind::Container, host, c, l)
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names("host1", "web-1", &labels),
        ["exact", "web-prod", "web", "all"]
    );
    assert_eq!(names("host2", "web-1", &HashMap::new()), ["web", "all"]);
    assert_eq!(names("db1", "pg", &HashMap::new()), ["other", "all"]);
}

#[test]
fn globs() {
    for (pattern, text, hit) in [
        ("", "anything", true),
        ("*", "x", true),
        ("web-*", "web-1", true),
        ("web-*", "db-1", false),
        ("h?st", "host", true),
        ("node[0-9]", "node7", true),
        ("node[0-9]", "nodex", false),
        ("node[!0-9]", "nodex", true),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy", false),
    ] {
        assert_eq!(glob_match(pattern, text), hit, "{pattern} ~ {text}");
    }
    assert!(glob_problem("web[").is_some());
    assert!(glob_problem("web[]]").is_none());
    assert!(glob_problem("web-{a,b}").is_some());
    assert!(glob_problem("web 1").is_some());
}

/// A pattern that makes a backtracking matcher take exponential time (each
/// `*` tries every split of the rest) is matched in linear time.
#[test]
fn hostile_globs_match_in_milliseconds() {
    let pattern = format!("{}b", "a*".repeat(60));
    let text = "a".repeat(200);
    assert!(glob_problem(&pattern).is_none());
    let started = std::time::Instant::now();
    for _ in 0..1000 {
        assert!(!glob_match(&pattern, &text));
    }
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(2),
        "1000 matches took {took:?}"
    );
}

#[test]
fn durations_and_descriptions() {
    assert_eq!(parse_duration("30s"), Some(30));
    assert_eq!(parse_duration("5m"), Some(300));
    assert_eq!(parse_duration("1h"), Some(3600));
    assert_eq!(parse_duration("off"), Some(0));
    assert_eq!(parse_duration("soon"), None);
    assert_eq!(format_duration(300), "5m");
    let p = spec(|s| s.horizon = Some("20s".into()));
    assert_eq!(
        describe(&p),
        "grow by 50% when used >= 80% or full within 20s, up to 4 GiB, cooldown 30s"
    );
}
