//! An upper bound on what this host has written so far, from one read of
//! `/proc/vmstat`: the sampler's reason to leave a filesystem unread when
//! nothing written since could have brought it to its trigger.
//!
//! Two counters, both monotonic since boot:
//! - `nr_dirtied`: pages newly dirtied in the page cache. Every buffered
//!   `write` and every store through a shared mapping dirties its pages
//!   before it returns, and XFS and ext4 reserve the blocks (delayed
//!   allocation) in that same call, which is when statfs and the quota
//!   counters move. Re-dirtying a dirty page is not counted again, and it
//!   takes no new block either.
//! - `pgpgout`: KiB submitted to block devices for writing (`submit_bio`):
//!   this covers `O_DIRECT` writes, which bypass the page cache. Writeback
//!   of pages already counted in `nr_dirtied` counts again here, and so do
//!   stacked devices (a loop device's file): an overcount, which only
//!   costs a sample.
//!
//! Not covered: space taken without writing data (`fallocate`), and
//! metadata that lives outside the page cache (inode clusters, directory
//! blocks on XFS). The sampler bounds both by reading every filesystem at
//! least every `Cadence::idle` anyway, and samples at every pass a
//! container whose policy has an inodes trigger.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, OnceLock};

/// `/proc/vmstat`, kept open, and the buffer its text is read into.
///
/// Why: the sampler asks four times a second and the inventory stream once.
/// `read_to_string` opens, stats, reads three times and closes each time:
/// six syscalls, which under emulation (every syscall a page-table switch
/// and, for the clock reads around them, an emulated timer) showed in the
/// idle agent's profile. Kept open, one `pread` from offset 0 usually
/// holds both counters (they sit in the first page the kernel formats); a
/// kernel that prints them later is read on until both are seen.
struct Reader {
    file: Option<File>,
    buf: Vec<u8>,
}

static VMSTAT: Mutex<Reader> = Mutex::new(Reader {
    file: None,
    buf: Vec::new(),
});

/// Bytes this host may have written since boot (see the module doc).
pub fn written_bound() -> io::Result<u64> {
    let mut r = VMSTAT.lock().unwrap_or_else(|e| e.into_inner());
    let read = read_counters(&mut r);
    if read.is_err() {
        // Opened afresh at the next call.
        r.file = None;
    }
    read
}

fn read_counters(r: &mut Reader) -> io::Result<u64> {
    if r.file.is_none() {
        r.file = Some(File::open("/proc/vmstat")?);
    }
    let Reader { file, buf } = r;
    read_from(file.as_ref().expect("opened above"), buf, 4096)
}

/// The bound from `file`, read from its start in `chunk`-byte preads into
/// `buf` until both counters are seen.
fn read_from(file: &File, buf: &mut Vec<u8>, chunk: usize) -> io::Result<u64> {
    buf.clear();
    loop {
        let start = buf.len();
        buf.resize(start + chunk, 0);
        let n = file.read_at(&mut buf[start..], start as u64)?;
        buf.truncate(start + n);
        // Only whole lines: a chunk may end inside a number.
        let whole = if n == 0 {
            buf.len()
        } else {
            buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
        };
        let text = std::str::from_utf8(&buf[..whole])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        match parse(text, page_size()) {
            Ok(bound) => return Ok(bound),
            Err(e) if n == 0 => return Err(e),
            Err(_) => {}
        }
    }
}

fn page_size() -> u64 {
    static SIZE: OnceLock<u64> = OnceLock::new();
    *SIZE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4096, |n| n as u64)
    })
}

fn parse(vmstat: &str, page: u64) -> io::Result<u64> {
    let (mut dirtied, mut out) = (None, None);
    for line in vmstat.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        let slot = match key {
            "nr_dirtied" => &mut dirtied,
            "pgpgout" => &mut out,
            _ => continue,
        };
        *slot = value.trim().parse::<u64>().ok();
    }
    match (dirtied, out) {
        (Some(d), Some(o)) => Ok(d
            .saturating_mul(page)
            .saturating_add(o.saturating_mul(1024))),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "/proc/vmstat has no nr_dirtied or pgpgout line",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The kept file, read again, answers as a fresh read of the whole
    /// file does (the counters only grow, so between the two reads).
    #[test]
    fn the_kept_file_reads_what_a_fresh_read_does() {
        for _ in 0..3 {
            let kept_before = written_bound().unwrap();
            let fresh = parse(
                &std::fs::read_to_string("/proc/vmstat").unwrap(),
                page_size(),
            )
            .unwrap();
            let kept_after = written_bound().unwrap();
            assert!(
                kept_before <= fresh && fresh <= kept_after,
                "{kept_before} <= {fresh} <= {kept_after}"
            );
        }
    }

    /// Counters past the first read, and reads that end inside a line.
    #[test]
    fn counters_anywhere_in_the_file_are_found() {
        let mut text = String::new();
        for i in 0..300 {
            text.push_str(&format!("nr_filler_{i} {i}\n"));
        }
        text.push_str("nr_dirtied 12345\npgpgout 678\n");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmstat");
        std::fs::write(&path, &text).unwrap();
        let file = File::open(&path).unwrap();
        let mut buf = Vec::new();
        let want = 12345 * page_size() + 678 * 1024;
        for chunk in [7, 4096, 1 << 16] {
            assert_eq!(
                read_from(&file, &mut buf, chunk).unwrap(),
                want,
                "chunk {chunk}"
            );
        }
        std::fs::write(&path, "nr_dirtied 1\n").unwrap();
        let err = read_from(&file, &mut buf, 4096).unwrap_err();
        assert!(err.to_string().contains("pgpgout"), "{err}");
    }

    #[test]
    fn the_two_counters_in_bytes() {
        let text = "nr_free_pages 1000\nnr_dirtied 10\nnr_written 9\npgpgin 5\npgpgout 3\n";
        assert_eq!(parse(text, 4096).unwrap(), 10 * 4096 + 3 * 1024);
        let err = parse("nr_dirtied 10\n", 4096).unwrap_err();
        assert!(err.to_string().contains("pgpgout"), "{err}");
    }

    /// The premise, on the kernel the tests run on: 8 MiB written through
    /// the page cache and 1 MiB with O_DIRECT each move the bound by at
    /// least what they wrote.
    #[test]
    fn writes_move_the_bound_by_at_least_their_size() {
        // The source tree: on a disk, where /tmp may be tmpfs.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let before = written_bound().unwrap();
        let mut f = std::fs::File::create(dir.path().join("buffered")).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..8 {
            f.write_all(&chunk).unwrap();
        }
        let buffered = written_bound().unwrap();
        assert!(
            buffered - before >= 8 << 20,
            "8 MiB written, the bound moved {} bytes",
            buffered - before
        );
        f.sync_all().unwrap();

        use std::os::unix::fs::OpenOptionsExt;
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.path().join("direct"));
        // tmpfs refuses O_DIRECT: the buffered half above is the test then.
        let Ok(mut direct) = direct else { return };
        let aligned = AlignedMiB::new();
        let start = written_bound().unwrap();
        if direct.write_all(aligned.as_slice()).is_err() {
            return;
        }
        let after = written_bound().unwrap();
        assert!(
            after - start >= 1 << 20,
            "1 MiB written with O_DIRECT, the bound moved {} bytes",
            after - start
        );
    }

    /// O_DIRECT wants a buffer aligned to the logical block size.
    struct AlignedMiB(Vec<u8>, usize);

    impl AlignedMiB {
        fn new() -> Self {
            let v = vec![0x33u8; (1 << 20) + 4096];
            let off = v.as_ptr().align_offset(4096);
            AlignedMiB(v, off)
        }

        fn as_slice(&self) -> &[u8] {
            &self.0[self.1..self.1 + (1 << 20)]
        }
    }
}
