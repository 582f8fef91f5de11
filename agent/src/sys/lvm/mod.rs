//! LVM's own tools (`lvextend`, `vgs`), for direct-lvm pools and
//! filesystems on logical volumes: never a raw table reload under LVM's
//! feet. Names as device-mapper shows them map back to VG/LV here; the
//! commands run in one long-lived `lvm` shell ([`shell`]) where it can.

pub mod shell;

use serde_json::Value;

use crate::error::AgentError;
use shell::ShellError;

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

/// Run an LVM command: in the shell ([`shell`]) when it can, else as a
/// process of its own. Its errors become the error; the answer is its JSON
/// document (reports under `report`), `Null` from a process that printed
/// no JSON.
pub fn lvm(args: &[&str]) -> Result<Value, AgentError> {
    let failed = |detail: &str| {
        AgentError::kernel(
            "lvm",
            args.last().copied().unwrap_or(""),
            format!("{} failed: {}", args.join(" "), detail.trim()),
        )
    };
    match shell::run(args) {
        Ok(answer) if answer.ok => return Ok(answer.doc),
        Ok(answer) => return Err(failed(&shell::errors(&answer.doc))),
        Err(ShellError::Lost(why)) => {
            return Err(failed(&format!(
                "{why}; whether it ran is unknown: check with lvs before running it again"
            )))
        }
        Err(ShellError::Unavailable(_)) => {}
    }
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .map_err(|e| AgentError::io("run", args[0], e))?;
    if !out.status.success() {
        return Err(failed(&String::from_utf8_lossy(&out.stderr)));
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

/// Free bytes of a volume group.
pub fn vg_free(vg: &str) -> Result<u64, AgentError> {
    let doc = lvm(&[
        "vgs",
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        "vg_free",
        vg,
    ])?;
    let free = &doc["report"][0]["vg"][0]["vg_free"];
    free.as_str()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| {
            AgentError::Internal(format!("vgs answered {free} for the free space of {vg}"))
        })
}
