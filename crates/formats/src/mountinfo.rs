//! `/proc/self/mountinfo` (proc(5)): `ID PARENT MAJ:MIN ROOT POINT OPTIONS
//! [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`, one mount per line, with
//! space, tab, newline and backslash in paths escaped as `\ooo`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One line of mountinfo, the fields Roomy reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the filesystem.
    pub devno: String,
    /// Where it is mounted.
    pub point: PathBuf,
    /// Filesystem type, e.g. `xfs`.
    pub fstype: String,
    /// What was mounted (a device path, for block filesystems).
    pub source: String,
    /// The filesystem's own options, e.g. `rw,attr2,inode64,prjquota`.
    pub super_options: String,
}

/// Parse one mountinfo line; `None` for a line without the fields.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let (head, tail) = line.split_once(" - ")?;
    let mut head = head.split(' ');
    let devno = head.nth(2)?.to_string();
    let _root = head.next()?;
    let point = PathBuf::from(unescape(head.next()?));
    let mut tail = tail.split(' ');
    Some(MountEntry {
        devno,
        point,
        fstype: tail.next()?.to_string(),
        source: unescape(tail.next()?),
        super_options: tail.next().unwrap_or("").to_string(),
    })
}

/// `major:minor` and the (escaped) mount point of one line.
fn device_and_point(line: &str) -> Option<(&str, &str)> {
    let mut fields = line.split(' ');
    let devno = fields.nth(2)?;
    let _root = fields.next()?;
    Some((devno, fields.next()?))
}

/// Where device `devno` (`major:minor`) is mounted: the first match.
pub fn find_device(mountinfo: &str, devno: &str) -> Option<PathBuf> {
    mountinfo
        .lines()
        .filter_map(device_and_point)
        .find(|(found, _)| *found == devno)
        .map(|(_, point)| PathBuf::from(unescape(point)))
}

/// Every device's mount point as [`find_device`] gives it, from one pass
/// over the table: for many lookups in the same table (a list of 200
/// containers scanned 400 lines for each).
pub fn first_points(mountinfo: &str) -> HashMap<String, PathBuf> {
    let mut points = HashMap::new();
    for (devno, point) in mountinfo.lines().filter_map(device_and_point) {
        if !points.contains_key(devno) {
            points.insert(devno.to_string(), PathBuf::from(unescape(point)));
        }
    }
    points
}

/// Mount points at or under `dir`, deepest first (the order they must be
/// unmounted in).
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(parse_line)
        .map(|m| m.point)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// The mount of device `devno` that holds `path`: the one whose mount point
/// is the longest prefix of it.
pub fn holding(mountinfo: &str, devno: &str, path: &Path) -> Option<MountEntry> {
    mountinfo
        .lines()
        .filter_map(parse_line)
        .filter(|m| m.devno == devno && path.starts_with(&m.point))
        .max_by_key(|m| m.point.as_os_str().len())
}

/// Undo mountinfo's `\ooo` escapes. An escape past `\377` is not one the
/// kernel writes; it is kept as it stands rather than wrapped into a byte.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u16, |v, b| v * 8 + u16::from(b - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        match octal {
            Some(value) => {
                out.push(value);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_under_the_scratch_dir_deepest_first() {
        let info = "\
36 25 8:1 / / rw - ext4 /dev/sda1 rw
90 36 253:4 / /var/lib/roomy/mnt/abc rw,noatime - xfs /dev/mapper/docker-8:1-1-abc rw,nouuid
91 90 0:50 / /var/lib/roomy/mnt/abc/proc rw - proc proc rw
92 36 253:5 / /var/lib/roomy/mntx rw - xfs /dev/dm-5 rw
93 36 253:6 / /var/lib/roomy/mnt/a\\040b rw - xfs /dev/dm-6 rw
";
        let got = mounts_under(info, Path::new("/var/lib/roomy/mnt"));
        assert_eq!(
            got,
            [
                PathBuf::from("/var/lib/roomy/mnt/abc/proc"),
                PathBuf::from("/var/lib/roomy/mnt/abc"),
                PathBuf::from("/var/lib/roomy/mnt/a b"),
            ]
        );
    }

    #[test]
    fn finds_the_mount_that_holds_a_path() {
        let text = "\
22 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw
90 22 7:3 / /var/lib/docker rw,relatime shared:40 - xfs /dev/loop3 rw,attr2,inode64,logbufs=8,prjquota
91 90 0:52 / /var/lib/docker/overlay2/abc/merged rw - overlay overlay rw,lowerdir=x
92 22 7:3 / /srv/bind\\040me rw - xfs /dev/loop3 rw,prjquota
";
        let m = holding(text, "7:3", Path::new("/var/lib/docker/overlay2/abc/diff")).unwrap();
        assert_eq!(m.point, PathBuf::from("/var/lib/docker"));
        assert_eq!(m.fstype, "xfs");
        assert_eq!(m.source, "/dev/loop3");
        assert!(m.super_options.split(',').any(|o| o == "prjquota"));
        let b = holding(text, "7:3", Path::new("/srv/bind me/x")).unwrap();
        assert_eq!(b.point, PathBuf::from("/srv/bind me"));
        assert_eq!(holding(text, "7:9", Path::new("/var/lib/docker")), None);
    }

    #[test]
    fn finds_a_device_and_unescapes_the_path() {
        let text = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                    95 22 253:3 / /var/lib/docker/devicemapper/mnt/ab\\040cd rw - xfs /dev/mapper/x rw,nouuid\n";
        assert_eq!(
            find_device(text, "253:3"),
            Some(PathBuf::from("/var/lib/docker/devicemapper/mnt/ab cd"))
        );
        assert_eq!(find_device(text, "253:4"), None);
    }

    #[test]
    fn first_points_agree_with_find_device() {
        // 253:3 twice: the first line wins, as in find_device.
        let text = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                    95 22 253:3 / /var/lib/docker/devicemapper/mnt/ab\\040cd rw - xfs /dev/mapper/x rw\n\
                    96 22 253:3 / /srv/again rw - xfs /dev/mapper/x rw\n\
                    short line\n";
        let points = first_points(text);
        assert_eq!(points.len(), 2);
        for devno in ["8:1", "253:3", "253:4"] {
            assert_eq!(
                points.get(devno).cloned(),
                find_device(text, devno),
                "{devno}"
            );
        }
    }

    // `\777` is 511: the old code computed it in a u8 and overflowed (a
    // panic with debug assertions). The kernel never writes it; keep it.
    #[test]
    fn escapes_past_a_byte_are_kept_as_text() {
        assert_eq!(unescape("a\\777b"), "a\\777b");
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }
}
