//! One long-lived `lvm` shell, LVM's own interface for a caller that runs
//! many commands: lvmdbusd drives it the same way, with the `lvmdbusd`
//! command profile lvm2 ships (JSON reports, a status line per command).
//! A command in the shell skips the process start, library loading and
//! configuration parse of a fresh `lvm` process: in the VM an `lvextend`
//! swapped the pool's table about 0.6 s after its start as a process and
//! about 0.15 s after the line reached the shell.
//!
//! Protocol: one command per line on the shell's stdin; with
//! `LVM_REPORT_FD=1` each command answers with one JSON document on
//! stdout, its report (if any) and a log whose `shell` status entry says
//! `success` or `failure`; `lastlog` then gives the failed command's
//! errors. A reader thread turns stdout into documents, so a caller waits
//! on a channel, never on a half-read pipe.

use std::io::{BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::Mutex;

use serde_json::Value;

/// Why the shell did not answer a command: the caller may run the
/// command as a process instead only when it was never sent.
#[derive(Debug)]
pub enum ShellError {
    /// The shell cannot be used here (did not start, or did not speak the
    /// protocol when probed): nothing was sent.
    Unavailable(String),
    /// The shell went away after the command was sent: whether it ran is
    /// unknown, so it must not be run again blindly.
    Lost(String),
}

/// The answer to one command.
#[derive(Debug)]
pub struct Answer {
    /// `success` in the shell's status entry.
    pub ok: bool,
    /// The whole document: `report` and `log`.
    pub doc: Value,
}

struct Session {
    child: Child,
    stdin: ChildStdin,
    answers: Receiver<Value>,
}

impl Session {
    fn start() -> Result<Session, String> {
        let mut child = Command::new("lvm")
            .env("LVM_COMMAND_PROFILE", "lvmdbusd")
            .env("LVM_REPORT_FD", "1")
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // With the command log on, messages go into the documents.
            .stderr(Stdio::null())
            // Out of the agent's process group: a Ctrl-C meant for the
            // agent must not interrupt an lvextend; the agent's exit ends
            // the shell anyway (EOF on its stdin).
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start lvm: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("lvm started without pipes".into());
        };
        let (tx, answers) = mpsc::channel();
        std::thread::Builder::new()
            .name("lvm-shell".into())
            .spawn(move || {
                let docs = serde_json::Deserializer::from_reader(BufReader::new(stdout))
                    .into_iter::<Value>();
                // Ends at EOF or at output that is not JSON: the receiver
                // then sees the sender gone.
                for doc in docs.map_while(Result::ok) {
                    if tx.send(doc).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("cannot start the lvm shell's reader: {e}"))?;
        let mut session = Session {
            child,
            stdin,
            answers,
        };
        // The profile may be missing or the shell may speak otherwise (an
        // older lvm2): a harmless command must answer with a status.
        match session.ask("version") {
            Ok(_) => Ok(session),
            Err(why) => {
                session.close();
                Err(format!("the lvm shell did not answer as expected: {why}"))
            }
        }
    }

    fn ask(&mut self, line: &str) -> Result<Answer, String> {
        writeln!(self.stdin, "{line}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| format!("writing to the lvm shell: {e}"))?;
        let doc = self
            .answers
            .recv()
            .map_err(|_| "the lvm shell exited".to_string())?;
        let ok = status(&doc).ok_or_else(|| format!("an answer without a status: {doc}"))?;
        Ok(Answer { ok, doc })
    }

    /// End the shell: EOF on its stdin lets it finish what it runs and
    /// exit; a thread reaps it so no zombie stays behind.
    fn close(self) {
        let Session {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        let _ = std::thread::Builder::new()
            .name("lvm-shell-reap".into())
            .spawn(move || child.wait());
    }
}

/// The shell's status entry of a command's document: `Some(true)` for
/// success, `Some(false)` for failure, `None` when there is none.
pub fn status(doc: &Value) -> Option<bool> {
    doc.get("log")?
        .as_array()?
        .iter()
        .rev()
        .find(|e| e["log_type"] == "status" && e["log_context"] == "shell")
        .map(|e| e["log_message"] == "success")
}

/// The error messages of a `lastlog` document, joined.
pub fn errors(doc: &Value) -> String {
    let messages: Vec<&str> = doc
        .get("log")
        .and_then(Value::as_array)
        .map(|log| {
            log.iter()
                .filter(|e| e["log_type"] == "error")
                .filter_map(|e| e["log_message"].as_str())
                .collect()
        })
        .unwrap_or_default();
    if messages.is_empty() {
        "no error message".into()
    } else {
        messages.join("; ")
    }
}

/// Words the shell splits a line into as the caller meant them: no blanks,
/// quotes, backslashes or comment signs (LVM names and sizes have none).
pub fn plain_words(args: &[&str]) -> bool {
    args.iter().all(|a| {
        !a.is_empty()
            && a.chars()
                .all(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | '\\' | '#'))
    })
}

enum State {
    NotStarted,
    Running(Session),
    /// Could not start or did not speak the protocol: commands run as
    /// processes from then on (said once in the log).
    Unusable,
}

static SHELL: Mutex<State> = Mutex::new(State::NotStarted);

/// Run one command in the shell, starting it on first use. A failed
/// command's answer carries its errors (from `lastlog`).
pub fn run(args: &[&str]) -> Result<Answer, ShellError> {
    if !plain_words(args) {
        return Err(ShellError::Unavailable(
            "an argument the shell would split differently".into(),
        ));
    }
    let mut state = SHELL.lock().unwrap_or_else(|p| p.into_inner());
    if let State::NotStarted = *state {
        *state = match Session::start() {
            Ok(s) => {
                tracing::info!(pid = s.child.id(), "lvm shell started");
                State::Running(s)
            }
            Err(why) => {
                tracing::warn!(
                    %why,
                    "LVM commands run as processes, each paying lvm's start; the shell needs lvm2's command profile lvmdbusd in LVM's profile directory (/etc/lvm/profile)"
                );
                State::Unusable
            }
        };
    }
    let State::Running(session) = &mut *state else {
        return Err(ShellError::Unavailable(
            "the lvm shell is not usable here".into(),
        ));
    };
    // `-qq` answers any prompt "no" at once: in the shell a prompt would
    // wait for a line on stdin, where no answer comes (a process of its
    // own reads EOF there and takes "no" the same way).
    let line = format!("{} -qq {}", args[0], args[1..].join(" "));
    let answer = session.ask(&line);
    let answer = match answer {
        Ok(a) if !a.ok => session.ask("lastlog").map(|log| Answer {
            ok: false,
            doc: log.doc,
        }),
        other => other,
    };
    answer.map_err(|why| {
        // Started again at the next command.
        if let State::Running(s) = std::mem::replace(&mut *state, State::NotStarted) {
            s.close();
        }
        ShellError::Lost(why)
    })
}

/// The running shell's process id, if one runs (tests, diagnostics).
pub fn pid() -> Option<u32> {
    match &*SHELL.lock().unwrap_or_else(|p| p.into_inner()) {
        State::Running(s) => Some(s.child.id()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(kind: &str, context: &str, message: &str) -> Value {
        json!({"log_type": kind, "log_context": context, "log_message": message})
    }

    #[test]
    fn the_shell_status_entry_decides_success() {
        let ok = json!({"report": [{"vg": []}], "log": [entry("status", "shell", "success")]});
        let failed = json!({"log": [
            entry("status", "processing", "success"),
            entry("status", "shell", "failure"),
        ]});
        // A processing step's success is not the command's.
        let only_processing = json!({"log": [entry("status", "processing", "success")]});
        assert_eq!(status(&ok), Some(true));
        assert_eq!(status(&failed), Some(false));
        assert_eq!(status(&only_processing), None);
        assert_eq!(status(&json!({"report": []})), None);
    }

    #[test]
    fn lastlog_errors_are_joined_and_an_empty_log_says_so() {
        let log = json!({"log": [
            entry("error", "processing", "Volume group \"x\" not found"),
            entry("print", "processing", "noise"),
            entry("error", "processing", "Cannot process volume group x"),
            entry("status", "shell", "failure"),
        ]});
        assert_eq!(
            errors(&log),
            "Volume group \"x\" not found; Cannot process volume group x"
        );
        assert_eq!(errors(&json!({"log": []})), "no error message");
    }

    #[test]
    fn only_words_the_shell_keeps_whole_go_to_it() {
        assert!(plain_words(&[
            "lvextend",
            "-L",
            "1073741824b",
            "docker/thin-pool_x.1+"
        ]));
        for bad in ["my vg/lv", "a\"b", "a'b", "a\\b", "a#b", "a\nb", ""] {
            assert!(!plain_words(&["lvs", bad]), "{bad:?}");
        }
    }

    /// With the real lvm2 (no device-mapper needed for this): a refused
    /// command's message comes back through `lastlog`, and the next command
    /// goes to the same shell process.
    #[test]
    fn a_refused_command_says_why_and_the_shell_stays() {
        let err = crate::sys::lvm::vg_free("roomy-test-no-such-vg")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Volume group \"roomy-test-no-such-vg\" not found"),
            "{err}"
        );
        let first = pid().expect("the lvm shell runs (lvm2 with its lvmdbusd profile)");
        assert!(crate::sys::lvm::vg_free("roomy-test-no-such-vg").is_err());
        assert_eq!(pid(), Some(first));
    }
}
