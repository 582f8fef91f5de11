//! Docker's devicemapper metadata files: a rewrite of `size` keeps every
//! other field, and what is refused is refused without a rewrite.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomy_formats::docker_metadata::DeviceRecord;

fuzz_target!(|text: &[u8]| {
    let Ok(record) = DeviceRecord::parse(text) else {
        return;
    };
    let _ = record.device_id();
    match record.with_size(4 << 30) {
        Ok(Some(new)) => {
            let again = DeviceRecord::parse(&new).expect("a rewrite parses");
            assert_eq!(again.size(), Ok(4 << 30));
            assert_eq!(again.device_id(), record.device_id());
            // Only `size` changed: set it back and it is the record again.
            let back = again
                .with_size(record.size().unwrap())
                .unwrap()
                .expect("a different size rewrites");
            assert_eq!(DeviceRecord::parse(&back).unwrap(), record);
        }
        Ok(None) => assert_eq!(record.size(), Ok(4 << 30)),
        Err(_) => assert!(record.size().is_err()),
    }
});
