//! mountinfo lines, whose paths a container's owner can shape (bind mounts,
//! volume names): parse or skip, never panic; unescaping never grows text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use roomy_formats::mountinfo;

fuzz_target!(|text: &str| {
    for line in text.lines() {
        if let Some(entry) = mountinfo::parse_line(line) {
            assert!(!entry.devno.contains(' '));
        }
    }
    let under = mountinfo::mounts_under(text, Path::new("/var/lib/roomy/mnt"));
    assert!(under.iter().all(|p| p.starts_with("/var/lib/roomy/mnt")));
    let _ = mountinfo::find_device(text, "253:4");
    // The one-pass table a list uses answers as the per-device lookup does.
    for (devno, point) in mountinfo::first_points(text) {
        assert_eq!(mountinfo::find_device(text, &devno), Some(point));
    }
    let _ = mountinfo::holding(text, "7:3", Path::new("/var/lib/docker/overlay2"));
    assert!(mountinfo::unescape(text).len() <= text.len());
});
