//! `HOST/CONTAINER` targets: parse or refuse; what parses prints back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomy_proto::{valid_host_name, Target};

fuzz_target!(|text: &str| {
    let _ = valid_host_name(text);
    if let Ok(target) = text.parse::<Target>() {
        let shown = target.to_string();
        let again: Target = shown.parse().expect("a printed target parses");
        assert_eq!(again.to_string(), shown);
    }
});
