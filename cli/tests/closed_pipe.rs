//! `roomyctl … | head`: when the reader of stdout is gone, roomyctl stops
//! with exit 0 and says nothing, instead of panicking.

use std::process::{Command, Stdio};

#[test]
fn a_closed_stdout_ends_roomyctl_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomyctl"))
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start roomyctl");
    // Close the read end before roomyctl writes: its first write gets EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for roomyctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "stderr: {stderr}");
}
