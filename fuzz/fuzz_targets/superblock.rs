//! The first 4 KiB of a container's disk, which its owner controls: a
//! superblock parses into a size that fits in 64 bits, or says nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomy_formats::superblock::{Superblock, HEAD_BYTES};

fuzz_target!(|head: &[u8]| {
    // Inputs are short: the first 64 bytes go where XFS keeps its fields,
    // the rest from 1024, where ext4's superblock is, over a zeroed block.
    let mut block = vec![0u8; HEAD_BYTES];
    for (i, b) in head.iter().enumerate().take(HEAD_BYTES - 1024 + 64) {
        block[if i < 64 { i } else { 1024 + i - 64 }] = *b;
    }
    for input in [head, &block[..]] {
        if let Some(sb) = Superblock::parse(input) {
            assert!(sb.block_size.is_power_of_two());
            assert_eq!(sb.bytes() / sb.block_size, sb.blocks);
        }
    }
});
