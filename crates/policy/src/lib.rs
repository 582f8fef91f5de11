//! Auto-grow policies: how people write them ([`PolicySpec`], from
//! `roomyctl policy set` flags or the controller's config file), what makes
//! one valid ([`validate`]), which one applies to a container ([`select`]),
//! and the one decision function ([`decide`], [`decide_pool`]) that the
//! agents enforce and `roomyctl policy explain` shows. Everything here is
//! pure: numbers in, a decision with its reasons out.
#![warn(missing_docs)]

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Deserialize;

use roomy_proto::v1::{Increase, Policy, PolicyKind, PoolGuard, Selector, Trigger};
use roomy_proto::{format_bytes, ByteSize};

/// Rate-aware growth is on unless a policy turns it off: grow when the
/// current fill rate would fill the disk within this many seconds.
pub const DEFAULT_HORIZON_SECONDS: u32 = 20;
/// Least time between two growths of one target, unless urgent.
pub const DEFAULT_COOLDOWN_SECONDS: u32 = 30;
/// Default pool guard: never let a container's growth take the pool's data
/// past this, or grow while its metadata is past this.
pub const DEFAULT_POOL_GUARD_PERCENT: f64 = 95.0;
/// Largest metadata device dm-thin uses (THIN_METADATA_MAX_SECTORS):
/// growing metadata past it is wasted.
pub const MAX_POOL_METADATA_BYTES: u64 = 255 * (1 << 14) * 8 * 512;
/// Label that turns auto-grow off for one container (`off`, `false`, `no`).
pub const LABEL_AUTOGROW: &str = "roomy.autogrow";
/// Label that sets one container's cap, overriding the policy's.
pub const LABEL_MAX_SIZE: &str = "roomy.max-size";

/// Growth is rounded up to whole MiB: dm tables want sectors, filesystems
/// want blocks, people want round numbers.
const STEP_ALIGN: u64 = 1 << 20;
const DAY_SECONDS: u32 = 86_400;

/// Why a policy was refused. The message names the field and what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {name:?} is not valid: {}", problems.join("; "))]
pub struct PolicyError {
    /// The policy's name as given.
    pub name: String,
    /// Every problem found, each saying what to fix.
    pub problems: Vec<String>,
}

/// A glob as selectors use it: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`.
/// An empty pattern matches everything; one that does not parse matches
/// nothing (validation refuses it first, `glob_problem`).
///
/// globset compiles a pattern to a finite automaton, so a match takes time
/// linear in the name whatever the pattern (a backtracking matcher is
/// exponential in the number of `*`s, and the sampler matches every 250 ms).
/// Compiled patterns are kept per thread, a bounded number.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    use std::cell::RefCell;
    const KEPT: usize = 256;
    thread_local! {
        static COMPILED: RefCell<HashMap<String, Option<globset::GlobMatcher>>> =
            RefCell::new(HashMap::new());
    }
    if pattern.is_empty() {
        return true;
    }
    COMPILED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(pattern) {
            if cache.len() >= KEPT {
                cache.clear();
            }
            cache.insert(pattern.to_string(), compile(pattern).ok());
        }
        cache[pattern].as_ref().is_some_and(|m| m.is_match(text))
    })
}

fn compile(pattern: &str) -> Result<globset::GlobMatcher, globset::Error> {
    globset::GlobBuilder::new(pattern)
        // Shell globs, as users write them for names: no `{a,b}`, no `\`.
        .literal_separator(false)
        .backslash_escape(false)
        .empty_alternates(false)
        .build()
        .map(|g| g.compile_matcher())
}

/// Why a glob does not parse, if it does not.
pub fn glob_problem(pattern: &str) -> Option<String> {
    if pattern.chars().any(|c| c.is_whitespace() || c == '/') {
        return Some(format!(
            "glob {pattern:?} has a space or '/': names have neither"
        ));
    }
    if pattern.len() > 255 {
        return Some(format!(
            "glob {:?}… is {} characters long: names have at most 255",
            &pattern[..pattern
                .char_indices()
                .nth(20)
                .map_or(pattern.len(), |(i, _)| i)],
            pattern.len()
        ));
    }
    if pattern.contains(['{', '}']) {
        return Some(format!(
            "glob {pattern:?} has '{{' or '}}': write one policy per alternative"
        ));
    }
    match compile(pattern) {
        Ok(_) => None,
        Err(e) if *e.kind() == globset::ErrorKind::UnclosedClass => Some(format!(
            "glob {pattern:?} opens a [class] it never closes: add the ']'"
        )),
        Err(e) => Some(format!(
            "glob {pattern:?} does not parse ({}): fix the [class] or the '*'",
            e.kind()
        )),
    }
}

fn wildcard(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// Whether a `key=value` or `key` selector matches `labels`.
fn label_matches(selector: &str, labels: &HashMap<String, String>) -> bool {
    match selector.split_once('=') {
        Some((key, value)) => labels.get(key).is_some_and(|v| v == value),
        None => labels.contains_key(selector),
    }
}

/// Whether `policy` applies to a container (or, for pool policies, to the
/// pool of `host`; `container` and `labels` are then ignored).
pub fn matches(
    policy: &Policy,
    host: &str,
    container: &str,
    labels: &HashMap<String, String>,
) -> bool {
    let s = policy.selector.clone().unwrap_or_default();
    if !glob_match(&s.host, host) {
        return false;
    }
    match policy.target_kind() {
        PolicyKind::Pool => true,
        _ => {
            glob_match(&s.container, container) && s.labels.iter().all(|l| label_matches(l, labels))
        }
    }
}

/// How specific a selector is: exact names beat globs beat nothing; each
/// label counts. The most specific matching policy applies.
fn specificity(policy: &Policy) -> u32 {
    let s = policy.selector.clone().unwrap_or_default();
    let score = |g: &str| match g {
        "" | "*" => 0,
        g if wildcard(g) => 1,
        _ => 2,
    };
    score(&s.container) * 4 + score(&s.host) * 2 + s.labels.len() as u32
}

/// The policies of `kind` that apply, the one in force first: most
/// specific selector, then name order.
pub fn select<'a>(
    policies: &'a [Policy],
    kind: PolicyKind,
    host: &str,
    container: &str,
    labels: &HashMap<String, String>,
) -> Vec<&'a Policy> {
    let mut hits: Vec<&Policy> = policies
        .iter()
        .filter(|p| p.target_kind() == kind && matches(p, host, container, labels))
        .collect();
    hits.sort_by(|a, b| {
        specificity(b)
            .cmp(&specificity(a))
            .then_with(|| a.name.cmp(&b.name))
    });
    hits
}

/// Every problem with a policy, or `Ok`. The controller refuses a policy
/// that has any; the agent skips one (it came from a newer controller).
pub fn validate(p: &Policy) -> Result<(), PolicyError> {
    let mut problems = Vec::new();
    let mut bad = |s: String| problems.push(s);
    if !valid_name(&p.name) {
        bad(format!(
            "name {:?}: use 1-63 letters, digits, '-', '_' or '.'",
            p.name
        ));
    }
    let pool = p.target_kind() == PolicyKind::Pool;
    let s = p.selector.clone().unwrap_or_default();
    for glob in [&s.host, &s.container] {
        if let Some(problem) = glob_problem(glob) {
            bad(problem);
        }
    }
    for label in &s.labels {
        let key = label.split_once('=').map_or(label.as_str(), |(k, _)| k);
        if key.is_empty() || label.chars().any(char::is_whitespace) {
            bad(format!(
                "label selector {label:?}: write key=value or key, without spaces"
            ));
        }
    }
    if pool && (!s.container.is_empty() || !s.labels.is_empty()) {
        bad("a pool policy selects hosts only: drop the container glob and labels".into());
    }
    let t = p.trigger.unwrap_or_default();
    let mut percent = |what: &str, v: f64| {
        if !(0.0..=100.0).contains(&v) || v.is_nan() {
            bad(format!(
                "{what} {v}%: give a percentage above 0 and at most 100"
            ));
        }
    };
    percent("threshold", t.used_percent);
    percent("inodes threshold", t.inodes_percent);
    percent("metadata threshold", t.metadata_percent);
    let g = p.pool_guard.unwrap_or_default();
    percent("pool guard", g.max_data_percent);
    percent("pool guard (metadata)", g.max_metadata_percent);
    if t.metadata_percent > 0.0 && !pool {
        bad("a metadata threshold is for pool policies (--pool)".into());
    }
    if pool && t.inodes_percent > 0.0 {
        bad("an inodes threshold is for container policies".into());
    }
    let fires = t.used_percent > 0.0
        || t.free_bytes > 0
        || t.inodes_percent > 0.0
        || t.metadata_percent > 0.0;
    // The horizon only brings a growth forward; alone it would grow
    // anything that writes steadily, however empty.
    if !fires {
        bad("no trigger: give a threshold, e.g. --at 80% (or --free 1G, --inodes 90%)".into());
    }
    if t.horizon_seconds > DAY_SECONDS {
        bad(format!(
            "horizon {}s: at most a day (86400s)",
            t.horizon_seconds
        ));
    }
    let inc = p.increase.unwrap_or_default();
    if inc.percent.is_nan() || inc.percent < 0.0 || inc.percent > 1000.0 {
        bad(format!(
            "increase {}%: give a step above 0%, at most 1000%",
            inc.percent
        ));
    }
    if inc.percent <= 0.0 && inc.bytes == 0 && inc.min_step_bytes == 0 {
        bad("the step is zero: give an increase, e.g. --grow 50% or --grow 1G".into());
    }
    if t.metadata_percent > 0.0 && inc.percent <= 0.0 && inc.metadata_bytes == 0 {
        bad("metadata fires but has no step: give --grow N% or --grow-metadata SIZE".into());
    }
    if !pool && p.max_bytes == 0 {
        bad("no cap: give the largest size it may grow to, e.g. --max 50G".into());
    }
    if p.cooldown_seconds > DAY_SECONDS {
        bad(format!(
            "cooldown {}s: at most a day (86400s)",
            p.cooldown_seconds
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PolicyError {
            name: p.name.clone(),
            problems,
        })
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A policy as people write it: strings with units, the same in
/// `roomyctl policy set` flags and in the controller's `[[policies]]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct PolicySpec {
    /// Unique name.
    pub name: String,
    /// `"pool"` for a thin-pool policy; containers otherwise.
    #[serde(default)]
    pub pool: bool,
    /// Host glob.
    #[serde(default)]
    pub hosts: String,
    /// Container name glob.
    #[serde(default)]
    pub containers: String,
    /// Docker labels: `key=value` or `key`.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Use threshold, `80%` (pool: data).
    pub at: Option<String>,
    /// Free space threshold, `1G`.
    pub free: Option<String>,
    /// Inodes threshold, `90%`.
    pub inodes: Option<String>,
    /// Pool metadata threshold, `80%`.
    pub metadata_at: Option<String>,
    /// Rate-aware horizon, `20s`; `0` turns it off. Default 20s.
    pub horizon: Option<String>,
    /// Increase: `50%` or `1G`.
    pub grow: Option<String>,
    /// Least step, `256M`.
    pub min_step: Option<String>,
    /// Pool metadata increase, `256M`.
    pub grow_metadata: Option<String>,
    /// Cap, `50G`.
    pub max: Option<String>,
    /// Cooldown, `30s`, `5m`. Default 30s.
    pub cooldown: Option<String>,
    /// Pool guard on data, `90%`; `0` turns it off. Default 95%.
    pub pool_guard: Option<String>,
    /// Pool guard on metadata. Default 95%.
    pub pool_guard_metadata: Option<String>,
    /// Record only.
    #[serde(default)]
    pub dry_run: bool,
}

impl PolicySpec {
    /// The wire policy, parsed and validated.
    pub fn to_policy(&self) -> Result<Policy, PolicyError> {
        let mut problems = Vec::new();
        let mut percent = |field: &str, v: &Option<String>| -> f64 {
            match v.as_deref().map(parse_percent) {
                None => 0.0,
                Some(Ok(v)) => v,
                Some(Err(())) => {
                    problems.push(format!(
                        "{field} {:?} is not a percentage: write e.g. 80%",
                        v.as_deref().unwrap_or_default()
                    ));
                    0.0
                }
            }
        };
        let used_percent = percent("at", &self.at);
        let inodes_percent = percent("inodes", &self.inodes);
        let metadata_percent = percent("metadata_at", &self.metadata_at);
        let max_data_percent = match &self.pool_guard {
            None => DEFAULT_POOL_GUARD_PERCENT,
            g => percent("pool_guard", g),
        };
        let max_metadata_percent = match &self.pool_guard_metadata {
            None => DEFAULT_POOL_GUARD_PERCENT,
            g => percent("pool_guard_metadata", g),
        };
        let mut size = |field: &str, v: &Option<String>| -> u64 {
            match v.as_deref() {
                None => 0,
                Some(text) => match text.parse::<ByteSize>() {
                    Ok(b) => b.0,
                    Err(e) => {
                        problems.push(format!("{field}: {e}"));
                        0
                    }
                },
            }
        };
        let free_bytes = size("free", &self.free);
        let min_step_bytes = size("min_step", &self.min_step);
        let metadata_bytes = size("grow_metadata", &self.grow_metadata);
        let max_bytes = size("max", &self.max);
        let (inc_percent, inc_bytes) = match self.grow.as_deref() {
            None => (0.0, 0),
            Some(g) if g.trim_end().ends_with('%') => match parse_percent(g) {
                Ok(v) => (v, 0),
                Err(()) => {
                    problems.push(format!("grow {g:?}: write a step such as 50% or 1G"));
                    (0.0, 0)
                }
            },
            Some(g) => match g.parse::<ByteSize>() {
                Ok(b) => (0.0, b.0),
                Err(_) => {
                    problems.push(format!(
                        "grow {g:?}: write a step such as 50% or 1G (above zero)"
                    ));
                    (0.0, 0)
                }
            },
        };
        let mut seconds = |field: &str, v: &Option<String>, default: u32| -> u32 {
            match v.as_deref() {
                None => default,
                Some(text) => parse_duration(text).unwrap_or_else(|| {
                    problems.push(format!(
                        "{field} {text:?} is not a duration: write e.g. 30s, 5m or 1h"
                    ));
                    0
                }),
            }
        };
        let horizon_seconds = seconds("horizon", &self.horizon, DEFAULT_HORIZON_SECONDS);
        let cooldown_seconds = seconds("cooldown", &self.cooldown, DEFAULT_COOLDOWN_SECONDS);
        let policy = Policy {
            name: self.name.clone(),
            kind: if self.pool {
                PolicyKind::Pool
            } else {
                PolicyKind::Container
            } as i32,
            selector: Some(Selector {
                host: self.hosts.clone(),
                container: self.containers.clone(),
                labels: self.labels.clone(),
            }),
            trigger: Some(Trigger {
                used_percent,
                free_bytes,
                inodes_percent,
                metadata_percent,
                horizon_seconds,
            }),
            increase: Some(Increase {
                percent: inc_percent,
                bytes: inc_bytes,
                min_step_bytes,
                metadata_bytes,
            }),
            max_bytes,
            cooldown_seconds,
            pool_guard: Some(PoolGuard {
                max_data_percent,
                max_metadata_percent,
            }),
            dry_run: self.dry_run,
            ..Default::default()
        };
        let mut all = problems;
        if let Err(e) = validate(&policy) {
            all.extend(e.problems);
        }
        if all.is_empty() {
            Ok(policy)
        } else {
            Err(PolicyError {
                name: self.name.clone(),
                problems: all,
            })
        }
    }
}

/// `80%` or `80` → 80.0. Negative numbers parse, for validate to refuse
/// with its own words.
fn parse_percent(text: &str) -> Result<f64, ()> {
    let t = text.trim();
    let t = t.strip_suffix('%').unwrap_or(t).trim();
    t.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or(())
}

/// `30`, `30s`, `5m`, `1h`, `0`, `off` → seconds.
pub fn parse_duration(text: &str) -> Option<u32> {
    let t = text.trim().to_ascii_lowercase();
    if t == "off" {
        return Some(0);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u32 = n.parse().ok()?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Seconds for people: `30s`, `5m`, `1h30m`.
pub fn format_duration(seconds: u32) -> String {
    match seconds {
        0 => "off".into(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The policy in the words `policy set` takes: how `policy ls` and explain
/// show it.
pub fn describe(p: &Policy) -> String {
    let t = p.trigger.unwrap_or_default();
    let inc = p.increase.unwrap_or_default();
    let mut when = Vec::new();
    if t.used_percent > 0.0 {
        when.push(format!("used >= {}%", t.used_percent));
    }
    if t.free_bytes > 0 {
        when.push(format!("free < {}", format_bytes(t.free_bytes)));
    }
    if t.inodes_percent > 0.0 {
        when.push(format!("inodes >= {}%", t.inodes_percent));
    }
    if t.metadata_percent > 0.0 {
        when.push(format!("metadata >= {}%", t.metadata_percent));
    }
    if t.horizon_seconds > 0 {
        when.push(format!(
            "full within {}",
            format_duration(t.horizon_seconds)
        ));
    }
    let mut by = Vec::new();
    if inc.percent > 0.0 {
        by.push(format!("{}%", inc.percent));
    }
    if inc.bytes > 0 {
        by.push(format_bytes(inc.bytes));
    }
    let mut text = format!("grow by {} when {}", by.join(" or "), when.join(" or "));
    if inc.min_step_bytes > 0 {
        let _ = write!(text, ", at least {}", format_bytes(inc.min_step_bytes));
    }
    if p.max_bytes > 0 {
        let _ = write!(text, ", up to {}", format_bytes(p.max_bytes));
    }
    let _ = write!(text, ", cooldown {}", format_duration(p.cooldown_seconds));
    if p.dry_run {
        text.push_str(", dry run");
    }
    text
}

/// What the agent knows about a container when it decides.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// The container's size: what a growth starts from and the cap limits.
    pub size_bytes: u64,
    /// statvfs of its filesystem.
    pub used_bytes: u64,
    /// Free space available to the container.
    pub avail_bytes: u64,
    /// Inodes.
    pub inodes_total: u64,
    /// Inodes in use.
    pub inodes_used: u64,
    /// Bytes per second, measured over the last seconds; 0 when unknown.
    pub fill_rate: f64,
    /// Docker labels (overrides).
    pub labels: HashMap<String, String>,
    /// The pool, when known: the pool guard needs it.
    pub pool: Option<PoolNumbers>,
}

/// A thin pool's numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PoolNumbers {
    /// Data in use.
    pub data_used: u64,
    /// Data size.
    pub data_total: u64,
    /// Metadata in use.
    pub meta_used: u64,
    /// Metadata size.
    pub meta_total: u64,
    /// Free space where the pool can grow (loop files' filesystem or the
    /// VG); `None` when the agent cannot grow this pool.
    pub backing_free: Option<u64>,
    /// Data bytes per second.
    pub data_rate: f64,
}

impl PoolNumbers {
    /// A pool's numbers as an agent reports them; `rate` is the data fill
    /// rate when measured. Agents and explain build them here, so both
    /// decide on the same inputs.
    pub fn from_status(p: &roomy_proto::v1::PoolStatus, rate: f64) -> Self {
        PoolNumbers {
            data_used: p.data_used_bytes,
            data_total: p.data_total_bytes,
            meta_used: p.metadata_used_bytes,
            meta_total: p.metadata_total_bytes,
            // Only backings the agent knows how to grow; the simulated
            // one never runs out.
            backing_free: match p.backing.as_str() {
                "loop" | "lvm" => Some(p.backing_free_bytes),
                "sim" => Some(u64::MAX / 4),
                _ => None,
            },
            data_rate: rate,
        }
    }
}

/// What the decision function concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No trigger fired.
    Idle,
    /// Grow now.
    Grow,
    /// Dry run: would grow.
    WouldGrow,
    /// A trigger fired but the policy may not act.
    Skip,
}

impl Verdict {
    /// The word explain and events use.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Idle => "idle",
            Verdict::Grow => "grow",
            Verdict::WouldGrow => "would_grow",
            Verdict::Skip => "skip",
        }
    }
}

/// A decision, with its reason word and the numbers it rests on.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What to do.
    pub verdict: Verdict,
    /// What fired (grow) or why not (skip): the words of `Event.reason`.
    pub reason: &'static str,
    /// Size before.
    pub from_bytes: u64,
    /// Size to grow to (grow, would_grow); otherwise the current size.
    pub to_bytes: u64,
    /// One sentence for people, for events.
    pub message: String,
    /// The numbers, one line each, for explain.
    pub lines: Vec<String>,
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn round_step(step: f64) -> u64 {
    let step = step.max(0.0).min(u64::MAX as f64 / 2.0) as u64;
    step.div_ceil(STEP_ALIGN).saturating_mul(STEP_ALIGN)
}

/// Seconds until full at `rate`, if filling.
fn time_to_full(avail: u64, rate: f64) -> Option<f64> {
    (rate > 0.0).then(|| avail as f64 / rate)
}

/// Whether a rate-aware trigger (`horizon_seconds` > 0) sees full, `ttf`
/// seconds away, within its horizon.
fn within_horizon(horizon_seconds: u32, ttf: Option<f64>) -> bool {
    horizon_seconds > 0 && ttf.is_some_and(|s| s < horizon_seconds as f64)
}

/// The growth step for `size`: the largest of the policy's percent, bytes
/// and minimum, and (rate-aware) what the fill rate writes in the horizon.
fn step_for(inc: &Increase, size: u64, rate: f64, horizon: u32) -> u64 {
    let by_percent = size as f64 * inc.percent / 100.0;
    let by_rate = if horizon > 0 {
        rate * horizon as f64
    } else {
        0.0
    };
    round_step(
        by_percent
            .max(inc.bytes as f64)
            .max(inc.min_step_bytes as f64)
            .max(by_rate),
    )
}

/// Whether the cooldown holds this growth back: it does unless the fill
/// rate predicts full within the horizon (then waiting means ENOSPC).
fn cooling(cooldown: u32, last_grow_ms: Option<i64>, now_ms: i64, urgent: bool) -> Option<String> {
    let last = last_grow_ms?;
    let left_ms = last + cooldown as i64 * 1000 - now_ms;
    (left_ms > 0 && !urgent).then(|| {
        format!(
            "cooldown: last grown {:.1}s ago, {}s cooldown",
            (now_ms - last) as f64 / 1000.0,
            cooldown
        )
    })
}

/// Whether a container's `roomy.autogrow` label turns auto-grow off.
pub fn autogrow_off(labels: &HashMap<String, String>) -> bool {
    labels.get(LABEL_AUTOGROW).is_some_and(|v| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "off" | "false" | "no" | "0"
        )
    })
}

/// A container's cap: its `roomy.max-size` label when that is a size,
/// otherwise the policy's.
pub fn cap_for(policy: &Policy, labels: &HashMap<String, String>) -> u64 {
    labels
        .get(LABEL_MAX_SIZE)
        .and_then(|v| v.parse::<ByteSize>().ok())
        .map_or(policy.max_bytes, |b| b.0)
}

/// A container policy's trigger that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    /// Used space at or past `used_percent`.
    UsedPercent,
    /// Free space under `free_bytes`.
    FreeBytes,
    /// Inodes at or past `inodes_percent`.
    InodesPercent,
    /// Full within the horizon at the fill rate.
    FillRate,
}

impl Fired {
    /// The reason word events and metrics carry.
    pub fn reason(self) -> &'static str {
        match self {
            Fired::UsedPercent => "used_percent",
            Fired::FreeBytes => "free_bytes",
            Fired::InodesPercent => "inodes_percent",
            Fired::FillRate => "fill_rate",
        }
    }
}

/// Which of a container policy's triggers fires on `obs`, if any, by
/// numbers alone: what [`decide`] branches on, and what the sampler asks
/// every 250 ms (see [`idle`]) without formatting a word.
pub fn trigger(policy: &Policy, obs: &Observation) -> Option<Fired> {
    let t = policy.trigger.unwrap_or_default();
    let used_pct = pct(obs.used_bytes, obs.used_bytes + obs.avail_bytes);
    let urgent = within_horizon(
        t.horizon_seconds,
        time_to_full(obs.avail_bytes, obs.fill_rate),
    );
    if t.used_percent > 0.0 && used_pct >= t.used_percent {
        Some(Fired::UsedPercent)
    } else if t.free_bytes > 0 && obs.avail_bytes < t.free_bytes {
        Some(Fired::FreeBytes)
    } else if t.inodes_percent > 0.0 && pct(obs.inodes_used, obs.inodes_total) >= t.inodes_percent {
        Some(Fired::InodesPercent)
    } else if urgent {
        Some(Fired::FillRate)
    } else {
        None
    }
}

/// Whether [`decide`] would answer [`Verdict::Idle`]: auto-grow is not off
/// by label and no trigger fires. The cheap question a sampler asks of
/// every container at every sample; `decide` only for the rest.
pub fn idle(policy: &Policy, obs: &Observation) -> bool {
    !autogrow_off(&obs.labels) && trigger(policy, obs).is_none()
}

/// How many bytes written into the filesystem `obs` saw could make one of
/// the policy's triggers fire, at the least: while less than that has been
/// written, [`trigger`] cannot have changed its answer, and the sampler
/// need not read the filesystem again (it bounds what was written with the
/// host's write counters). 0 where no such bound holds: a trigger fires
/// now, a fill rate is measured (the rate-aware trigger moves with time,
/// not bytes), or an inodes trigger is set (files cost inodes, not
/// written bytes). `u64::MAX` when no trigger is set.
pub fn write_headroom(policy: &Policy, obs: &Observation) -> u64 {
    let t = policy.trigger.unwrap_or_default();
    if trigger(policy, obs).is_some()
        || t.inodes_percent > 0.0
        || (t.horizon_seconds > 0 && obs.fill_rate != 0.0)
    {
        return 0;
    }
    let mut room = u64::MAX;
    if t.used_percent > 0.0 {
        // Writing moves bytes from avail to used; their sum stays.
        let total = obs.used_bytes.saturating_add(obs.avail_bytes);
        let at = (total as f64 * t.used_percent / 100.0).floor() as u64;
        room = room.min(at.saturating_sub(obs.used_bytes));
    }
    if t.free_bytes > 0 {
        room = room.min(obs.avail_bytes.saturating_sub(t.free_bytes));
    }
    room
}

/// The one decision: given a container policy, what the agent sees, when
/// the policy last grew this container and the time, what to do.
pub fn decide(
    policy: &Policy,
    obs: &Observation,
    last_grow_ms: Option<i64>,
    now_ms: i64,
) -> Decision {
    let t = policy.trigger.unwrap_or_default();
    let inc = policy.increase.unwrap_or_default();
    let guard = policy.pool_guard.unwrap_or_default();
    let size = obs.size_bytes;
    let mut lines = vec![format!("policy {}: {}", policy.name, describe(policy))];
    let fs_total = obs.used_bytes + obs.avail_bytes;
    let used_pct = pct(obs.used_bytes, fs_total);
    lines.push(format!(
        "size {}; filesystem {} used of {} ({:.1}%), {} free",
        format_bytes(size),
        format_bytes(obs.used_bytes),
        format_bytes(fs_total),
        used_pct,
        format_bytes(obs.avail_bytes)
    ));
    let ttf = time_to_full(obs.avail_bytes, obs.fill_rate);
    lines.push(match ttf {
        Some(s) => format!(
            "filling at {}/s: full in {:.1}s",
            format_bytes(obs.fill_rate as u64),
            s
        ),
        None => "not filling".to_string(),
    });
    let decision = |verdict, reason, to, message: String, mut lines: Vec<String>| {
        lines.push(message.clone());
        Decision {
            verdict,
            reason,
            from_bytes: size,
            to_bytes: to,
            message,
            lines,
        }
    };

    if autogrow_off(&obs.labels) {
        if let Some(v) = obs.labels.get(LABEL_AUTOGROW) {
            return decision(
                Verdict::Skip,
                "disabled",
                size,
                format!("label {LABEL_AUTOGROW}={v}: auto-grow is off for this container"),
                lines,
            );
        }
    }

    // Also past another trigger: a fill rate that fills within the
    // horizon overrides the cooldown below.
    let urgent = within_horizon(t.horizon_seconds, ttf);
    let fired = trigger(policy, obs).map(|fired| {
        let why = match fired {
            Fired::UsedPercent => format!("used {used_pct:.1}% >= {}%", t.used_percent),
            Fired::FreeBytes => format!(
                "free {} < {}",
                format_bytes(obs.avail_bytes),
                format_bytes(t.free_bytes)
            ),
            Fired::InodesPercent => format!(
                "inodes {:.1}% >= {}%",
                pct(obs.inodes_used, obs.inodes_total),
                t.inodes_percent
            ),
            Fired::FillRate => format!(
                "full in {:.1}s at {}/s, within the {}s horizon",
                ttf.unwrap_or_default(),
                format_bytes(obs.fill_rate as u64),
                t.horizon_seconds
            ),
        };
        (fired.reason(), why)
    });
    let Some((reason, why)) = fired else {
        return decision(
            Verdict::Idle,
            "",
            size,
            "no trigger fired: nothing to do".into(),
            lines,
        );
    };

    let cap = cap_for(policy, &obs.labels);
    if let Some(v) = obs.labels.get(LABEL_MAX_SIZE) {
        lines.push(if cap == policy.max_bytes {
            format!(
                "label {LABEL_MAX_SIZE}={v} is not a size; the policy's cap {} holds",
                format_bytes(cap)
            )
        } else {
            format!(
                "label {LABEL_MAX_SIZE}={v} sets the cap to {}",
                format_bytes(cap)
            )
        });
    }
    if size >= cap {
        return decision(
            Verdict::Skip,
            "cap_reached",
            size,
            format!(
                "{why}, but the container is at its cap {}: not growing",
                format_bytes(cap)
            ),
            lines,
        );
    }
    let step = step_for(&inc, size, obs.fill_rate.max(0.0), t.horizon_seconds);
    let to = size.saturating_add(step).min(cap);

    if let Some(cool) = cooling(policy.cooldown_seconds, last_grow_ms, now_ms, urgent) {
        return decision(
            Verdict::Skip,
            "cooldown",
            size,
            format!("{why}; {cool}"),
            lines,
        );
    }

    if let Some(pool) = obs.pool {
        let after = pct(pool.data_used.saturating_add(to - size), pool.data_total);
        let meta = pct(pool.meta_used, pool.meta_total);
        lines.push(format!(
            "pool data {:.1}% used, {:.1}% if the growth fills; metadata {:.1}%",
            pct(pool.data_used, pool.data_total),
            after,
            meta
        ));
        let data_limit = guard.max_data_percent;
        let meta_limit = guard.max_metadata_percent;
        if data_limit > 0.0 && after > data_limit {
            return decision(
                Verdict::Skip,
                "pool_guard",
                size,
                format!(
                    "{why}, but growing to {} could take the pool's data to {after:.1}%, past the guard's {data_limit}%: grow the pool first",
                    format_bytes(to)
                ),
                lines,
            );
        }
        if meta_limit > 0.0 && meta > meta_limit {
            return decision(
                Verdict::Skip,
                "pool_guard",
                size,
                format!(
                    "{why}, but the pool's metadata is {meta:.1}% used, past the guard's {meta_limit}%: grow the pool's metadata first"
                ),
                lines,
            );
        }
    }
    let capped = if to == cap { " (the cap)" } else { "" };
    let message = format!(
        "{why}: grow {} -> {}{capped}",
        format_bytes(size),
        format_bytes(to)
    );
    let verdict = if policy.dry_run {
        Verdict::WouldGrow
    } else {
        Verdict::Grow
    };
    decision(verdict, reason, to, message, lines)
}

/// A pool decision: data and metadata each may grow.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolDecision {
    /// What to do.
    pub verdict: Verdict,
    /// As [`Decision::reason`].
    pub reason: &'static str,
    /// New data size, when data grows.
    pub data_to: Option<u64>,
    /// New metadata size, when metadata grows.
    pub meta_to: Option<u64>,
    /// One sentence for people.
    pub message: String,
    /// The numbers, one per line.
    pub lines: Vec<String>,
}

/// The decision for a pool policy.
pub fn decide_pool(
    policy: &Policy,
    pool: &PoolNumbers,
    last_grow_ms: Option<i64>,
    now_ms: i64,
) -> PoolDecision {
    let t = policy.trigger.unwrap_or_default();
    let inc = policy.increase.unwrap_or_default();
    let data_pct = pct(pool.data_used, pool.data_total);
    let meta_pct = pct(pool.meta_used, pool.meta_total);
    let data_free = pool.data_total.saturating_sub(pool.data_used);
    let lines = vec![
        format!("policy {}: {}", policy.name, describe(policy)),
        format!(
            "pool data {} used of {} ({data_pct:.1}%), metadata {} of {} ({meta_pct:.1}%)",
            format_bytes(pool.data_used),
            format_bytes(pool.data_total),
            format_bytes(pool.meta_used),
            format_bytes(pool.meta_total)
        ),
    ];
    let ttf = time_to_full(data_free, pool.data_rate);
    let urgent = within_horizon(t.horizon_seconds, ttf);
    let data_fires = (t.used_percent > 0.0 && data_pct >= t.used_percent)
        || (t.free_bytes > 0 && data_free < t.free_bytes)
        || urgent;
    let meta_fires = t.metadata_percent > 0.0 && meta_pct >= t.metadata_percent;
    let out = |verdict, reason, data_to, meta_to, message: String, mut lines: Vec<String>| {
        lines.push(message.clone());
        PoolDecision {
            verdict,
            reason,
            data_to,
            meta_to,
            message,
            lines,
        }
    };
    if !data_fires && !meta_fires {
        return out(
            Verdict::Idle,
            "",
            None,
            None,
            "no trigger fired: nothing to do".into(),
            lines,
        );
    }
    let reason = if meta_fires && !data_fires {
        "metadata_percent"
    } else if urgent && !(t.used_percent > 0.0 && data_pct >= t.used_percent) {
        "fill_rate"
    } else {
        "used_percent"
    };
    let cap = if policy.max_bytes > 0 {
        policy.max_bytes
    } else {
        u64::MAX
    };
    let mut data_to = None;
    let mut capped = false;
    if data_fires {
        if pool.data_total >= cap {
            capped = true;
        } else {
            let step = step_for(
                &inc,
                pool.data_total,
                pool.data_rate.max(0.0),
                t.horizon_seconds,
            );
            data_to = Some(pool.data_total.saturating_add(step).min(cap));
        }
    }
    let mut meta_to = None;
    if meta_fires && pool.meta_total < MAX_POOL_METADATA_BYTES {
        let step = round_step(
            (pool.meta_total as f64 * inc.percent / 100.0).max(inc.metadata_bytes as f64),
        );
        meta_to = Some(
            pool.meta_total
                .saturating_add(step)
                .min(MAX_POOL_METADATA_BYTES),
        );
    }
    let what = format!(
        "data {data_pct:.1}% (threshold {}%), metadata {meta_pct:.1}% (threshold {}%)",
        t.used_percent, t.metadata_percent
    );
    if data_to.is_none() && meta_to.is_none() {
        let why = if capped {
            format!("pool data is at the cap {}", format_bytes(cap))
        } else {
            "pool metadata is at dm-thin's largest size".to_string()
        };
        return out(
            Verdict::Skip,
            "cap_reached",
            None,
            None,
            format!("{what}: {why}: not growing"),
            lines,
        );
    }
    if let Some(cool) = cooling(policy.cooldown_seconds, last_grow_ms, now_ms, urgent) {
        return out(
            Verdict::Skip,
            "cooldown",
            None,
            None,
            format!("{what}; {cool}"),
            lines,
        );
    }
    let need =
        data_to.map_or(0, |to| to - pool.data_total) + meta_to.map_or(0, |to| to - pool.meta_total);
    match pool.backing_free {
        None => {
            return out(
                Verdict::Skip,
                "backing_space",
                data_to,
                meta_to,
                format!("{what}: this pool's backing cannot be grown by Roomy"),
                lines,
            )
        }
        Some(free) if need > free => {
            return out(
                Verdict::Skip,
                "backing_space",
                data_to,
                meta_to,
                format!(
                "{what}: growing needs {} but its backing has {} free: add space under the pool",
                format_bytes(need),
                format_bytes(free)
            ),
                lines,
            )
        }
        Some(_) => {}
    }
    let mut parts = Vec::new();
    if let Some(to) = data_to {
        parts.push(format!(
            "data {} -> {}",
            format_bytes(pool.data_total),
            format_bytes(to)
        ));
    }
    if let Some(to) = meta_to {
        parts.push(format!(
            "metadata {} -> {}",
            format_bytes(pool.meta_total),
            format_bytes(to)
        ));
    }
    let verdict = if policy.dry_run {
        Verdict::WouldGrow
    } else {
        Verdict::Grow
    };
    out(
        verdict,
        reason,
        data_to,
        meta_to,
        format!("{what}: grow {}", parts.join(", ")),
        lines,
    )
}

#[cfg(test)]
mod tests;
