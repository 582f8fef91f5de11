//! Writing to stdout that ends quietly when the reader goes away.
//!
//! Rust ignores SIGPIPE, so `println!` panics when stdout is a pipe whose
//! reader exited (`roomyctl completions bash | head`, `roomyctl events
//! --follow | grep -m1 …`). A closed pipe means nobody wants the rest: stop
//! with exit 0, as `head`'s caller expects. Resetting SIGPIPE to its default
//! instead would also reach the gRPC sockets' writes.

use std::io::{self, Write};

/// `print!` that stops the program quietly on a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => { $crate::print::emit(format_args!($($arg)*)) };
}

/// `println!` that stops the program quietly on a closed pipe.
macro_rules! outln {
    () => { $crate::print::emit(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::print::emit(format_args!("{}\n", format_args!($($arg)*))) };
}

pub fn emit(args: std::fmt::Arguments) {
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        fail(e);
    }
}

/// `value` as indented JSON and a newline, written as it is serialized:
/// no whole document in memory first (`ls -o json` of 100,000 rows was
/// 80 MB of text after a 1 GiB tree of values).
pub fn emit_json(value: &impl serde::Serialize) {
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let written = serde_json::to_writer_pretty(&mut out, value)
        .map_err(io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        fail(e);
    }
}

fn fail(e: io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("roomyctl: failed: cannot write to stdout: {e}");
    std::process::exit(1);
}
