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
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("roomyctl: failed: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}
