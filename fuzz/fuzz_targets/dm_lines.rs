//! Device-mapper table and status lines as the agent reads them back from
//! the kernel (what another tool, or a tampered pool, may have loaded): a
//! container's thin table is one thin target that writes back to itself,
//! or is refused; a pool's table and status give consistent byte counts,
//! or an error. Never a panic or an overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomy_agent::backend::devicemapper::table::{PoolUsage, ThinTable};

fuzz_target!(|text: &str| {
    // Line 1: the table's params; line 2: the status's; line 3: a length.
    let mut lines = text.splitn(3, '\n');
    let (table, status) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    let length = lines.next().and_then(|l| l.trim().parse().ok()).unwrap_or(1u64 << 21);
    let line = |target: &str, params: &str| (0, length, target.to_string(), params.to_string());

    if let Ok(thin) = ThinTable::from_lines("c", &[line("thin", table)]) {
        let back = ThinTable::from_lines("c", &thin.to_lines()).expect("a parsed table writes back");
        assert_eq!(back, thin);
        assert_eq!(thin.bytes() / 512, length);
        let _ = thin.with_bytes(thin.bytes().saturating_add(1 << 30));
    }
    let pool = [line("thin-pool", table)];
    if let Ok(usage) = PoolUsage::from_lines("p", &pool, &[line("thin-pool", status)]) {
        assert!(usage.data_free() <= usage.data_total);
        assert!(matches!(usage.when_full, "queue" | "error" | ""));
    }
});
