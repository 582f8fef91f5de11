//! LVM's own tools (`lvextend`, `vgs`), for direct-lvm pools and
//! filesystems on logical volumes: never a raw table reload under LVM's
//! feet. Names as device-mapper shows them map back to VG/LV here.

use crate::error::AgentError;

/// VG and LV of an LVM device from its dm name (`docker-thinpool`,
/// `my--vg-pool-tpool`): LVM joins them with '-' and doubles any '-' inside
/// a name; a trailing `-layer` (tpool) is dropped.
pub fn lvm_names(dm_name: &str) -> Option<(String, String)> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = dm_name.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '-' {
            if chars.peek() == Some(&'-') {
                chars.next();
                current.push('-');
            } else {
                parts.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    match parts.as_slice() {
        [vg, lv, ..] if !vg.is_empty() && !lv.is_empty() => Some((vg.clone(), lv.clone())),
        _ => None,
    }
}

/// Run an LVM tool; its stderr becomes the error.
pub fn lvm(args: &[&str]) -> Result<String, AgentError> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .map_err(|e| AgentError::io("run", args[0], e))?;
    if !out.status.success() {
        return Err(AgentError::kernel(
            "lvm",
            args.last().copied().unwrap_or(""),
            format!(
                "{} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Free bytes of a volume group.
pub fn vg_free(vg: &str) -> Result<u64, AgentError> {
    let text = lvm(&[
        "vgs",
        "--noheadings",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        "vg_free",
        vg,
    ])?;
    text.trim().parse().map_err(|_| {
        AgentError::Internal(format!("vgs printed {text:?} for the free space of {vg}"))
    })
}
