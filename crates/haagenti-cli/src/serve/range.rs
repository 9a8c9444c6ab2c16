//! The `Range` request header (RFC 9110 §14): untrusted input, parsed without panics or
//! allocation. Only single byte ranges are served; see [`parse`].
//!
//! This file depends on nothing but `core` so the fuzz crate includes it as it is.

/// What a `Range` header asks of a representation of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// Serve the whole representation (200): no range, another unit, or several ranges
    /// (RFC 9110 lets a server ignore `Range`; multipart responses are not served).
    Full,
    /// Serve bytes `start..end` (206); `start < end <= size`.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */size`: a malformed byte range, or one that starts
    /// at or past the end.
    Unsatisfiable,
}

/// Parses the value of a `Range` header for a representation of `size` bytes.
///
/// Accepted: `bytes=FIRST-LAST`, `bytes=FIRST-`, `bytes=-SUFFIX` (unit case-insensitive,
/// optional whitespace around the range). `LAST` past the end is clamped; a suffix longer
/// than the file means the whole file; numbers too large for `u64` saturate (so they are
/// past any end). `FIRST > LAST`, `-0`, a missing number or stray characters make the
/// range malformed: 416.
pub fn parse(header: &[u8], size: u64) -> RangeRequest {
    let Some(eq) = header.iter().position(|&b| b == b'=') else {
        return RangeRequest::Full;
    };
    let (unit, set) = (trim(&header[..eq]), &header[eq + 1..]);
    if !unit.eq_ignore_ascii_case(b"bytes") {
        return RangeRequest::Full;
    }
    if set.contains(&b',') {
        // Several ranges: served as the whole representation. A malformed list is still
        // only ignored, which RFC 9110 also allows.
        return RangeRequest::Full;
    }
    let spec = trim(set);
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return RangeRequest::Unsatisfiable;
    };
    let (first, last) = (&spec[..dash], &spec[dash + 1..]);
    match (number(first), number(last)) {
        // `-SUFFIX`: the last SUFFIX bytes.
        (None, Some(suffix)) if first.is_empty() => {
            if suffix == 0 || size == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial {
                    start: size - suffix.min(size),
                    end: size,
                }
            }
        }
        // `FIRST-`: from FIRST to the end.
        (Some(first), None) if last.is_empty() => satisfiable(first, size, size),
        // `FIRST-LAST`, inclusive.
        (Some(first), Some(last)) if first <= last => {
            satisfiable(first, last.saturating_add(1).min(size), size)
        }
        _ => RangeRequest::Unsatisfiable,
    }
}

fn satisfiable(start: u64, end: u64, size: u64) -> RangeRequest {
    if start >= size {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::Partial { start, end }
    }
}

/// A run of ASCII digits as a saturating `u64`; `None` when empty or not all digits.
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::RangeRequest::{Full, Partial, Unsatisfiable};
    use super::*;

    fn p(h: &str, size: u64) -> RangeRequest {
        parse(h.as_bytes(), size)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(p("bytes=0-0", 10), Partial { start: 0, end: 1 });
        assert_eq!(p("bytes=9-9", 10), Partial { start: 9, end: 10 });
        assert_eq!(p("bytes=0-", 10), Partial { start: 0, end: 10 });
        assert_eq!(p("bytes=3-", 10), Partial { start: 3, end: 10 });
        assert_eq!(p("bytes=2-5", 10), Partial { start: 2, end: 6 });
        assert_eq!(p("bytes=2-500", 10), Partial { start: 2, end: 10 });
        assert_eq!(p("Bytes= 2-5 ", 10), Partial { start: 2, end: 6 });
        assert_eq!(
            p("bytes=0-99999999999999999999999", 10),
            Partial { start: 0, end: 10 }
        );
    }

    #[test]
    fn suffix_ranges() {
        assert_eq!(p("bytes=-1", 10), Partial { start: 9, end: 10 });
        assert_eq!(p("bytes=-10", 10), Partial { start: 0, end: 10 });
        assert_eq!(p("bytes=-11", 10), Partial { start: 0, end: 10 });
        assert_eq!(
            p("bytes=-99999999999999999999999", 10),
            Partial { start: 0, end: 10 }
        );
        assert_eq!(p("bytes=-0", 10), Unsatisfiable);
        assert_eq!(p("bytes=-1", 0), Unsatisfiable);
    }

    #[test]
    fn unsatisfiable_and_malformed() {
        for h in [
            "bytes=10-",
            "bytes=10-20",
            "bytes=99999999999999999999999-",
            "bytes=5-4",
            "bytes=-",
            "bytes=",
            "bytes=a-b",
            "bytes=1-2x",
            "bytes=+1-2",
            "bytes=1--2",
            "bytes=0x1-2",
            "bytes=1",
            "bytes==1-2",
        ] {
            assert_eq!(p(h, 10), Unsatisfiable, "{h}");
        }
        assert_eq!(p("bytes=0-", 0), Unsatisfiable);
    }

    #[test]
    fn ignored() {
        for h in [
            "",
            "bytes",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=0-1, -1",
            "bytes=,",
        ] {
            assert_eq!(p(h, 10), Full, "{h}");
        }
    }

    /// Any input: no panic, and a partial range always lies inside the file.
    #[test]
    fn random_inputs_never_panic_and_stay_in_bounds() {
        let alphabet = b"bytes=-0123456789, \t=xB";
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200_000 {
            let len = (next() % 24) as usize;
            let h: Vec<u8> = (0..len)
                .map(|i| {
                    if i < 6 && next() % 4 != 0 {
                        b"bytes="[i]
                    } else {
                        alphabet[(next() % alphabet.len() as u64) as usize]
                    }
                })
                .collect();
            let size = match next() % 4 {
                0 => 0,
                1 => next() % 16,
                2 => next(),
                _ => u64::MAX,
            };
            if let Partial { start, end } = parse(&h, size) {
                assert!(start < end && end <= size, "{h:?} {size}");
            }
        }
    }
}
