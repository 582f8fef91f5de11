//! `16G`, `+4G`, `1.5T`...: whatever people type, a size parses or is
//! refused with a message, and what parses prints, never panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomy_proto::{format_bytes, ByteSize, SizeRequest};

fuzz_target!(|text: &str| {
    match text.parse::<ByteSize>() {
        Ok(size) => {
            let _ = format_bytes(size.0);
        }
        Err(e) => assert!(!e.to_string().is_empty(), "{text:?}: a refusal says why"),
    }
    match text.parse::<SizeRequest>() {
        Ok(request) => {
            let _ = request.target(ByteSize(1 << 30));
        }
        Err(e) => assert!(!e.to_string().is_empty(), "{text:?}: a refusal says why"),
    }
});
