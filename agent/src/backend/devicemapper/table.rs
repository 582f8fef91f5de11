//! Device-mapper tables and statuses as values: a container's thin table and
//! its pool's status, parsed from and written back to the kernel's text form.
//! Pure (no ioctls), so every rule here is tested without root.

use devicemapper::{
    Device, Sectors, ThinPoolNoSpacePolicy, ThinPoolStatus, ThinPoolStatusSummary,
    ThinPoolTargetParams, ThinTargetParams, SECTOR_SIZE,
};

use crate::error::AgentError;

/// One dm table line: `(start, length, target type, params)`, as the
/// devicemapper crate hands it over.
pub type RawLine = (u64, u64, String, String);

/// The live table of a container's thin device: one `thin` target from
/// sector 0, as Docker creates it (`0 <sectors> thin <pool maj:min> <id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinTable {
    /// Length of the device in sectors.
    pub length: Sectors,
    /// Pool and thin device id.
    pub params: ThinTargetParams,
}

impl ThinTable {
    /// A table mapping `bytes` of thin device `thin_id` in `pool`.
    pub fn new(pool: Device, thin_id: u64, bytes: u64) -> Result<Self, AgentError> {
        let thin_id = devicemapper::ThinDevId::new_u64(thin_id).map_err(|e| {
            AgentError::Internal(format!("thin device id {thin_id} is out of range: {e}"))
        })?;
        Ok(ThinTable {
            length: bytes_to_sectors(bytes)?,
            params: ThinTargetParams::new(pool, thin_id, None),
        })
    }

    /// Parse what the kernel reports for a device, refusing anything but a
    /// single thin target from sector 0 (Roomy never rewrites other tables).
    pub fn from_lines(device: &str, lines: &[RawLine]) -> Result<Self, AgentError> {
        let unexpected = |why: &str| AgentError::UnexpectedTable {
            device: device.to_string(),
            why: why.to_string(),
        };
        // dm-thin answers "Fail" for every thin device, table or status, once
        // its pool has failed: say that, not that the table is odd.
        if let [(_, _, target, params)] = lines {
            if target == "thin" && params == "Fail" {
                return Err(AgentError::PoolUnhealthy {
                    pool: format!("of {device}"),
                    mode: "fail".into(),
                });
            }
        }
        let [(start, length, target, params)] = lines else {
            return Err(unexpected(&format!(
                "{} targets, expected one",
                lines.len()
            )));
        };
        if *start != 0 {
            return Err(unexpected("the thin target does not start at sector 0"));
        }
        if target != "thin" {
            return Err(unexpected(&format!(
                "target type {target:?}, expected thin"
            )));
        }
        let params: ThinTargetParams = format!("thin {params}")
            .parse()
            .map_err(|e| unexpected(&format!("unreadable thin params {params:?}: {e}")))?;
        if params.external_origin_dev.is_some() {
            return Err(unexpected("thin device with an external origin"));
        }
        // So that bytes() cannot overflow, whatever the kernel says.
        if length.checked_mul(SECTOR_SIZE as u64).is_none() {
            return Err(unexpected("a length beyond 2^64 bytes"));
        }
        Ok(ThinTable {
            length: Sectors(*length),
            params,
        })
    }

    /// The same device, `bytes` long.
    pub fn with_bytes(&self, bytes: u64) -> Result<Self, AgentError> {
        Ok(ThinTable {
            length: bytes_to_sectors(bytes)?,
            params: self.params.clone(),
        })
    }

    /// Length in bytes.
    pub fn bytes(&self) -> u64 {
        *self.length * SECTOR_SIZE as u64
    }

    /// The one line to hand to `table_load`.
    pub fn to_lines(&self) -> Vec<RawLine> {
        use devicemapper::TargetParams;
        vec![(0, *self.length, "thin".to_string(), self.params.param_str())]
    }
}

/// Bytes to sectors, refusing sizes that are not whole sectors.
pub fn bytes_to_sectors(bytes: u64) -> Result<Sectors, AgentError> {
    crate::backend::shared::bytes_to_sectors(bytes).map(Sectors)
}

/// A pool's table params (what follows `thin-pool`), parsed, with a data
/// block size whose byte count fits in 64 bits.
pub fn pool_params(pool: &str, tparams: &str) -> Result<ThinPoolTargetParams, AgentError> {
    let unexpected = |why: String| AgentError::UnexpectedTable {
        device: pool.to_string(),
        why,
    };
    // devicemapper-rs slices the feature words by the count the line gives,
    // and panics when the line holds fewer: check it first.
    let words: Vec<&str> = tparams.split(' ').collect();
    if let Some(count) = words.get(4) {
        let held = words.len().saturating_sub(5);
        if !count.parse::<usize>().is_ok_and(|n| n <= held) {
            return Err(unexpected(format!(
                "pool table {tparams:?} counts {count} feature words and holds {held}"
            )));
        }
    }
    let params: ThinPoolTargetParams = format!("thin-pool {tparams}")
        .parse()
        .map_err(|e| unexpected(format!("unreadable pool table {tparams:?}: {e}")))?;
    if (*params.data_block_size)
        .checked_mul(SECTOR_SIZE as u64)
        .is_none()
    {
        return Err(unexpected(format!(
            "a data block of {} sectors",
            *params.data_block_size
        )));
    }
    Ok(params)
}

/// What the pool has, in bytes, from its table and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// Data space in bytes.
    pub data_total: u64,
    /// Data space used by all thin devices, in bytes.
    pub data_used: u64,
    /// Metadata blocks used / total (4 KiB each).
    pub meta_used: u64,
    /// Metadata blocks in total.
    pub meta_total: u64,
    /// `rw`, `ro`, `out_of_data_space`, `needs_check`, `fail`, `error`.
    pub mode: &'static str,
    /// What a write to a full pool gets: `queue` (held) or `error` (failed
    /// at once: the table's `error_if_no_space`); empty when failed.
    pub when_full: &'static str,
}

impl PoolUsage {
    /// Free data bytes.
    pub fn data_free(&self) -> u64 {
        self.data_total.saturating_sub(self.data_used)
    }

    /// Read the pool from its table line (for the data block size) and its
    /// status line.
    pub fn from_lines(
        pool: &str,
        table: &[RawLine],
        status: &[RawLine],
    ) -> Result<Self, AgentError> {
        let unexpected = |why: String| AgentError::UnexpectedTable {
            device: pool.to_string(),
            why,
        };
        let (Some((_, _, ttype, tparams)), Some((_, _, stype, sparams))) =
            (table.first(), status.first())
        else {
            return Err(unexpected("the pool has no table".into()));
        };
        if ttype != "thin-pool" || stype != "thin-pool" {
            return Err(unexpected(format!(
                "target type {ttype:?}, expected thin-pool"
            )));
        }
        let params = pool_params(pool, tparams)?;
        // devicemapper-rs indexes both halves of "used/total" (fields 1
        // and 2, split on single spaces as it does) without checking them.
        if !(sparams.starts_with("Error") || sparams.starts_with("Fail"))
            && sparams
                .split(' ')
                .skip(1)
                .take(2)
                .any(|f| f.split('/').count() != 2)
        {
            return Err(unexpected(format!(
                "pool status {sparams:?} lacks used/total block counts"
            )));
        }
        let status: ThinPoolStatus = sparams
            .parse()
            .map_err(|e| unexpected(format!("unreadable pool status {sparams:?}: {e}")))?;
        // pool_params made sure one block's bytes fit in 64 bits.
        let block_bytes = *params.data_block_size * SECTOR_SIZE as u64;
        let bytes = |blocks: u64| {
            block_bytes.checked_mul(blocks).ok_or_else(|| {
                unexpected(format!(
                    "{blocks} data blocks of {} sectors do not fit in 64 bits",
                    *params.data_block_size
                ))
            })
        };
        Ok(match status {
            ThinPoolStatus::Working(w) => PoolUsage {
                data_total: bytes(*w.usage.total_data)?,
                data_used: bytes(*w.usage.used_data)?,
                meta_used: *w.usage.used_meta,
                meta_total: *w.usage.total_meta,
                mode: if w.needs_check {
                    "needs_check"
                } else {
                    match w.summary {
                        ThinPoolStatusSummary::Good => "rw",
                        ThinPoolStatusSummary::ReadOnly => "ro",
                        ThinPoolStatusSummary::OutOfSpace => "out_of_data_space",
                    }
                },
                when_full: match w.no_space_policy {
                    ThinPoolNoSpacePolicy::Error => "error",
                    ThinPoolNoSpacePolicy::Queue => "queue",
                },
            },
            ThinPoolStatus::Error => PoolUsage::failed("error"),
            ThinPoolStatus::Fail => PoolUsage::failed("fail"),
        })
    }

    fn failed(mode: &'static str) -> Self {
        PoolUsage {
            data_total: 0,
            data_used: 0,
            meta_used: 0,
            meta_total: 0,
            mode,
            when_full: "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(len: u64, target: &str, params: &str) -> RawLine {
        (0, len, target.to_string(), params.to_string())
    }

    #[test]
    fn reads_and_writes_dockers_thin_table() {
        let table = ThinTable::from_lines("c", &[line(4194304, "thin", "253:0 4")]).unwrap();
        assert_eq!(table.bytes(), 2 << 30);
        assert_eq!(
            table.params.pool,
            Device {
                major: 253,
                minor: 0
            }
        );
        let grown = table.with_bytes(4 << 30).unwrap();
        assert_eq!(grown.to_lines(), vec![line(8388608, "thin", "253:0 4")]);
        assert_eq!(
            ThinTable::new(
                Device {
                    major: 253,
                    minor: 0
                },
                4,
                4 << 30
            )
            .unwrap(),
            grown
        );
    }

    #[test]
    fn refuses_tables_it_must_not_rewrite() {
        for lines in [
            vec![],
            vec![line(8, "linear", "8:1 0")],
            vec![line(8, "thin", "253:0 4"), line(8, "thin", "253:0 5")],
            vec![line(8, "thin", "253:0 4 8:3")],
            vec![(8, 8, "thin".to_string(), "253:0 4".to_string())],
            vec![line(8, "thin", "garbage")],
        ] {
            let err = ThinTable::from_lines("dev", &lines).unwrap_err();
            assert!(
                matches!(err, AgentError::UnexpectedTable { .. }),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn sizes_must_be_whole_sectors() {
        assert_eq!(bytes_to_sectors(1024).unwrap(), Sectors(2));
        assert!(bytes_to_sectors(1000).is_err());
        assert!(bytes_to_sectors(0).is_err());
    }

    #[test]
    fn reads_pool_usage_in_bytes() {
        // Docker's loop-lvm pool: 64 KiB blocks (128 sectors).
        let table = [line(
            209715200,
            "thin-pool",
            "7:1 7:0 128 32768 1 skip_block_zeroing",
        )];
        let status = [line(
            209715200,
            "thin-pool",
            "3 200/524288 1600/1638400 - rw discard_passdown queue_if_no_space - 1024",
        )];
        let usage = PoolUsage::from_lines("pool", &table, &status).unwrap();
        assert_eq!(usage.data_total, 1638400 * 65536);
        assert_eq!(usage.data_used, 1600 * 65536);
        assert_eq!(usage.data_free(), (1638400 - 1600) * 65536);
        assert_eq!((usage.meta_used, usage.meta_total), (200, 524288));
        assert_eq!(usage.mode, "rw");
        assert_eq!(usage.when_full, "queue");

        // lvm2's --errorwhenfull y, or a table with error_if_no_space.
        let erroring = [line(
            209715200,
            "thin-pool",
            "3 200/524288 1638400/1638400 - out_of_data_space discard_passdown error_if_no_space - 1024",
        )];
        let usage = PoolUsage::from_lines("pool", &table, &erroring).unwrap();
        assert_eq!(
            (usage.mode, usage.when_full),
            ("out_of_data_space", "error")
        );
        let checked = [line(
            209715200,
            "thin-pool",
            "3 200/524288 1600/1638400 - ro discard_passdown queue_if_no_space needs_check 1024",
        )];
        assert_eq!(
            PoolUsage::from_lines("pool", &table, &checked)
                .unwrap()
                .mode,
            "needs_check"
        );

        let full = [line(
            209715200,
            "thin-pool",
            "3 200/524288 1638400/1638400 - out_of_data_space discard_passdown queue_if_no_space - 1024",
        )];
        assert_eq!(
            PoolUsage::from_lines("pool", &table, &full).unwrap().mode,
            "out_of_data_space"
        );
        let failed = [line(209715200, "thin-pool", "Fail")];
        assert_eq!(
            PoolUsage::from_lines("pool", &table, &failed).unwrap().mode,
            "fail"
        );
    }

    #[test]
    fn fuzzed_tables_are_refused_not_panicked_on() {
        // fuzz/artifacts/dm_lines: a pool table that counts more features
        // than it lists.
        let table = [line(1 << 21, "thin-pool", "33:1 3:3 33 3 3 ;1 38")];
        let status = [line(1 << 21, "thin-pool", "")];
        assert!(PoolUsage::from_lines("p", &table, &status).is_err());
        assert!(
            ThinTable::from_lines("c", &[line(1 << 21, "thin", "33:1 3:3 33 3 3 ;1 38")]).is_err()
        );
    }
}
