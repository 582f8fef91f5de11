//! XFS and ext4 superblocks: which filesystem, and how many bytes it spans.
//! The bytes come from the device (a corrupt or hostile container disk
//! included), so every field is checked before it is used in arithmetic.

/// A filesystem Roomy can grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// XFS: grows only while mounted (XFS_IOC_FSGROWFSDATA).
    Xfs,
    /// ext4: grown online while mounted (EXT4_IOC_RESIZE_FS).
    Ext4,
}

impl FsKind {
    /// `xfs` / `ext4`, as mount(8) and Docker's `dm.fs` spell them.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Xfs => "xfs",
            FsKind::Ext4 => "ext4",
        }
    }
}

/// What a superblock says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// Which filesystem.
    pub kind: FsKind,
    /// Filesystem block size in bytes: a power of two, 512 B to 64 KiB.
    pub block_size: u64,
    /// Blocks in the filesystem.
    pub blocks: u64,
}

/// How many bytes [`Superblock::parse`] reads at most.
pub const HEAD_BYTES: usize = 4096;

impl Superblock {
    /// Size of the filesystem in bytes: what the device must at least hold.
    /// Cannot overflow: `parse` refuses superblocks whose size does not fit.
    pub fn bytes(&self) -> u64 {
        self.blocks * self.block_size
    }

    /// Parse the first 4 KiB of a device. `None` when neither XFS nor ext4,
    /// or when the fields are impossible (a block size XFS or ext4 never
    /// makes, or a size past 2^64 bytes): the caller then knows nothing,
    /// rather than something wrong.
    pub fn parse(head: &[u8]) -> Option<Superblock> {
        let be32 = |at: usize| {
            head.get(at..at + 4)
                .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
        };
        let be64 = |at: usize| {
            head.get(at..at + 8)
                .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
        };
        let le32 = |at: usize| {
            head.get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        };
        let le16 = |at: usize| {
            head.get(at..at + 2)
                .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
        };
        let sane = |kind, block_size: u64, blocks: u64| {
            let valid = block_size.is_power_of_two()
                && (512..=65536).contains(&block_size)
                && blocks.checked_mul(block_size).is_some();
            valid.then_some(Superblock {
                kind,
                block_size,
                blocks,
            })
        };

        // XFS: "XFSB", sb_blocksize (be32 @4), sb_dblocks (be64 @8).
        if head.get(0..4) == Some(b"XFSB") {
            return sane(FsKind::Xfs, u64::from(be32(4)?), be64(8)?);
        }
        // ext2/3/4 superblock at 1024: s_magic 0xEF53 @0x38,
        // s_blocks_count_lo @0x04, s_log_block_size @0x18,
        // s_blocks_count_hi @0x150 when INCOMPAT_64BIT (0x80) is set.
        const SB: usize = 1024;
        if le16(SB + 0x38)? == 0xEF53 {
            let log = le32(SB + 0x18)?;
            if log > 6 {
                return None;
            }
            let lo = u64::from(le32(SB + 0x04)?);
            let incompat = le32(SB + 0x60)?;
            let hi = if incompat & 0x80 != 0 {
                u64::from(le32(SB + 0x150)?)
            } else {
                0
            };
            return sane(FsKind::Ext4, 1024 << log, (hi << 32) | lo);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xfs(block_size: u32, blocks: u64) -> Vec<u8> {
        let mut head = vec![0u8; HEAD_BYTES];
        head[0..4].copy_from_slice(b"XFSB");
        head[4..8].copy_from_slice(&block_size.to_be_bytes());
        head[8..16].copy_from_slice(&blocks.to_be_bytes());
        head
    }

    #[test]
    fn parses_hand_made_superblocks() {
        let sb = Superblock::parse(&xfs(4096, 524288)).unwrap();
        assert_eq!((sb.kind, sb.bytes()), (FsKind::Xfs, 2 << 30));

        let mut ext4 = vec![0u8; HEAD_BYTES];
        ext4[1024 + 0x38..1024 + 0x3a].copy_from_slice(&0xEF53u16.to_le_bytes());
        ext4[1024 + 0x18..1024 + 0x1c].copy_from_slice(&2u32.to_le_bytes());
        ext4[1024 + 0x04..1024 + 0x08].copy_from_slice(&1000u32.to_le_bytes());
        ext4[1024 + 0x150..1024 + 0x154].copy_from_slice(&1u32.to_le_bytes());
        // Without INCOMPAT_64BIT the high word is ignored.
        assert_eq!(Superblock::parse(&ext4).unwrap().bytes(), 1000 * 4096);
        ext4[1024 + 0x60..1024 + 0x64].copy_from_slice(&0x80u32.to_le_bytes());
        assert_eq!(Superblock::parse(&ext4).unwrap().blocks, (1 << 32) | 1000);

        assert_eq!(Superblock::parse(&[0u8; HEAD_BYTES]), None);
        assert_eq!(Superblock::parse(b"XFSB"), None);
    }

    // A corrupt XFS superblock made `bytes()` overflow (a panic with debug
    // assertions, a wrapped, wrong size without), and a zero block size
    // made a zero-byte filesystem (fuzz target `superblock` checks both).
    #[test]
    fn impossible_superblocks_say_nothing() {
        assert_eq!(Superblock::parse(&xfs(4096, u64::MAX)), None);
        assert_eq!(Superblock::parse(&xfs(0, 1000)), None);
        assert_eq!(Superblock::parse(&xfs(4095, 1000)), None);
        assert_eq!(Superblock::parse(&xfs(1 << 20, 1000)), None);
        // The largest that fits is still read.
        let max = Superblock::parse(&xfs(65536, u64::MAX / 65536)).unwrap();
        assert_eq!(max.bytes(), (u64::MAX / 65536) * 65536);
    }
}
