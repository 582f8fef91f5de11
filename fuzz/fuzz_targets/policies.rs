//! Policy specs as the controller's config file holds them, and the globs
//! in their selectors: a spec is refused with reasons or becomes a policy
//! that validates, describes itself and decides without panicking; a glob
//! matches in bounded time whatever it is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomy_policy::{decide, describe, glob_match, glob_problem, validate, Observation, PolicySpec};

fuzz_target!(|text: &str| {
    // The glob half: pattern, then a name to match.
    let (pattern, name) = text.split_once('\n').unwrap_or((text, "web-1"));
    let _ = glob_problem(pattern);
    let _ = glob_match(pattern, name);

    let Ok(spec) = toml::from_str::<PolicySpec>(text) else {
        return;
    };
    let Ok(policy) = spec.to_policy() else { return };
    validate(&policy).expect("to_policy gives valid policies");
    let _ = describe(&policy);
    for (size, used) in [(1u64 << 30, 900u64 << 20), (0, 0), (u64::MAX, u64::MAX)] {
        let obs = Observation {
            size_bytes: size,
            used_bytes: used,
            avail_bytes: size.saturating_sub(used),
            inodes_total: 1000,
            inodes_used: 10,
            ..Default::default()
        };
        let _ = decide(&policy, &obs, Some(0), 60_000);
    }
});
