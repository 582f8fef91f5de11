//! `roomyctl man`: pages generated from the clap definitions, one per
//! subcommand, and a clear refusal that writes nothing for a bad --dir.

use std::process::Command;

fn roomyctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_roomyctl"))
        .args(args)
        .output()
        .expect("run roomyctl")
}

#[test]
fn roomyctl_1_on_stdout_names_every_subcommand() {
    let out = roomyctl(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie"),
        "not roff: {}",
        &page[..page.len().min(80)]
    );
    assert!(page.contains(".TH roomyctl 1"), "no title line");
    for sub in [
        "resize",
        "ls",
        "top",
        "pool",
        "policy",
        "certs",
        "completions",
    ] {
        assert!(page.contains(sub), "roomyctl(1) does not mention {sub}");
    }
}

#[test]
fn dir_gets_a_page_per_subcommand_that_matches_help() {
    let dir = std::env::temp_dir().join(format!("roomyctl-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = roomyctl(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for page in [
        "roomyctl.1",
        "roomyctl-resize.1",
        "roomyctl-top.1",
        "roomyctl-pool-grow.1",
    ] {
        assert!(dir.join(page).is_file(), "no {page} in {}", dir.display());
    }
    // Every long option `roomyctl resize --help` lists is on its page.
    let help = String::from_utf8_lossy(&roomyctl(&["resize", "--help"]).stdout).into_owned();
    let page = std::fs::read_to_string(dir.join("roomyctl-resize.1")).unwrap();
    let longs: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        .collect();
    assert!(!longs.is_empty(), "no options in: {help}");
    for long in longs {
        // roff escapes every '-' as "\-".
        let escaped = long.replace('-', "\\-");
        assert!(page.contains(&escaped), "roomyctl-resize.1 lacks {long}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_dir_that_is_not_there_is_refused_and_nothing_is_written() {
    let dir = std::env::temp_dir().join(format!("roomyctl-man-missing-{}", std::process::id()));
    let out = roomyctl(&["man", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not a directory") && stderr.contains("mkdir -p"),
        "{stderr}"
    );
    assert!(!dir.exists(), "{} was created", dir.display());
}
