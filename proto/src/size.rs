//! Sizes as people write them, with the rules of Docker's
//! `--storage-opt size=`: `K`, `M`, `G`, `T` (with or without `B`/`iB`,
//! any case) are powers of 1024, a bare number is bytes, and a leading `+`
//! means "this much more".

use std::fmt;
use std::str::FromStr;

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// What a size string asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRequest {
    /// `16G`: grow to exactly this size.
    Absolute(ByteSize),
    /// `+4G`: grow by this much.
    Grow(ByteSize),
}

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number with a known unit.
    #[error("size {0:?} is not a size: write a number with a unit, e.g. 16G or +4G (K, M, G, T are powers of 1024)")]
    Unparsable(String),
    /// Zero bytes, or zero growth.
    #[error(
        "size {0:?} is zero: give a size larger than the container's current one, e.g. 16G or +4G"
    )]
    Zero(String),
    /// Does not fit in 64 bits.
    #[error("size {0:?} is too large")]
    TooLarge(String),
    /// A fraction of a byte, e.g. `0.1K`.
    #[error("size {0:?} is not a whole number of bytes: use a smaller unit")]
    Fractional(String),
}

const UNITS: [(&str, u32); 5] = [("", 0), ("k", 1), ("m", 2), ("g", 3), ("t", 4)];

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let unparsable = || SizeError::Unparsable(text.to_string());
        let s = text.trim().to_ascii_lowercase();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return Err(unparsable());
        }
        let unit = unit.trim();
        let unit = unit
            .strip_suffix("ib")
            .or_else(|| unit.strip_suffix('b'))
            .unwrap_or(unit);
        let power = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, p)| *p)
            .ok_or_else(unparsable)?;
        let multiplier = 1024u128.pow(power);

        // Exact integer arithmetic: "1.5G" is 1.5 * 2^30 with no float rounding.
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if frac.contains('.') {
            return Err(unparsable());
        }
        let whole: u128 = whole.parse().map_err(|_| unparsable())?;
        let frac_digits = u32::try_from(frac.len()).map_err(|_| unparsable())?;
        if frac_digits > 12 {
            return Err(unparsable());
        }
        let frac_value: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| unparsable())?
        };
        let scale = 10u128.pow(frac_digits);
        let frac_bytes = frac_value * multiplier;
        if !frac_bytes.is_multiple_of(scale) {
            return Err(SizeError::Fractional(text.to_string()));
        }
        let bytes = whole
            .checked_mul(multiplier)
            .and_then(|b| b.checked_add(frac_bytes / scale))
            .ok_or_else(|| SizeError::TooLarge(text.to_string()))?;
        let bytes = u64::try_from(bytes).map_err(|_| SizeError::TooLarge(text.to_string()))?;
        Ok(ByteSize(bytes))
    }
}

impl FromStr for SizeRequest {
    type Err = SizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let (grow, rest) = match trimmed.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let size: ByteSize = rest.parse().map_err(|e| match e {
            SizeError::Unparsable(_) => SizeError::Unparsable(text.to_string()),
            other => other,
        })?;
        if size.0 == 0 {
            return Err(SizeError::Zero(text.to_string()));
        }
        Ok(if grow {
            SizeRequest::Grow(size)
        } else {
            SizeRequest::Absolute(size)
        })
    }
}

impl SizeRequest {
    /// The absolute size this request asks for, given the current size.
    /// `None` when `current + growth` overflows.
    pub fn target(self, current: ByteSize) -> Option<ByteSize> {
        match self {
            SizeRequest::Absolute(size) => Some(size),
            SizeRequest::Grow(by) => current.0.checked_add(by.0).map(ByteSize),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_bytes(self.0))
    }
}

/// Bytes for people: `4 GiB`, `1.5 GiB`, `512 MiB`, `1000 B`.
/// Exact values print without decimals; others with up to two.
pub fn format_bytes(bytes: u64) -> String {
    const NAMES: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut index = 0;
    while index + 1 < NAMES.len() && bytes >= 1u64 << (10 * (index + 1)) {
        index += 1;
    }
    let unit = 1u64 << (10 * index);
    if bytes.is_multiple_of(unit) {
        format!("{} {}", bytes / unit, NAMES[index])
    } else {
        let value = bytes as f64 / unit as f64;
        let text = format!("{value:.2}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        format!("{text} {}", NAMES[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    #[test]
    fn parses_docker_style_sizes() {
        let cases: &[(&str, u64)] = &[
            ("16G", 16 * G),
            ("16g", 16 * G),
            ("16GB", 16 * G),
            ("16GiB", 16 * G),
            ("16 gib", 16 * G),
            ("512M", 512 << 20),
            ("1T", 1 << 40),
            ("4k", 4096),
            ("1.5G", 3 * G / 2),
            ("1000", 1000),
            ("1000b", 1000),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(*bytes)), "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        for text in [
            "", "G", "abc", "16X", "1..5G", ".5G", "5.G", "-4G", "16 G B", "1e3",
        ] {
            assert!(
                matches!(text.parse::<ByteSize>(), Err(SizeError::Unparsable(_))),
                "{text} should be unparsable"
            );
        }
        assert!(matches!(
            "0.1K".parse::<ByteSize>(),
            Err(SizeError::Fractional(_))
        ));
        assert!(matches!(
            "99999999999T".parse::<ByteSize>(),
            Err(SizeError::TooLarge(_))
        ));
    }

    #[test]
    fn requests_are_absolute_or_growth_and_never_zero() {
        assert_eq!("16G".parse(), Ok(SizeRequest::Absolute(ByteSize(16 * G))));
        assert_eq!("+4G".parse(), Ok(SizeRequest::Grow(ByteSize(4 * G))));
        assert!(matches!(
            "0".parse::<SizeRequest>(),
            Err(SizeError::Zero(_))
        ));
        assert!(matches!(
            "+0G".parse::<SizeRequest>(),
            Err(SizeError::Zero(_))
        ));
        let err = "+x".parse::<SizeRequest>().unwrap_err();
        assert_eq!(err, SizeError::Unparsable("+x".into()));
        assert!(err.to_string().contains("e.g. 16G or +4G"));
    }

    #[test]
    fn target_adds_growth_and_catches_overflow() {
        let current = ByteSize(2 * G);
        assert_eq!(
            SizeRequest::Grow(ByteSize(2 * G)).target(current),
            Some(ByteSize(4 * G))
        );
        assert_eq!(
            SizeRequest::Absolute(ByteSize(G)).target(current),
            Some(ByteSize(G))
        );
        assert_eq!(SizeRequest::Grow(ByteSize(u64::MAX)).target(current), None);
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_bytes(4 * G), "4 GiB");
        assert_eq!(format_bytes(3 * G / 2), "1.5 GiB");
        assert_eq!(format_bytes(512 << 20), "512 MiB");
        assert_eq!(format_bytes(1000), "1000 B");
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes((10 * G) / 3), "3.33 GiB");
    }
}
