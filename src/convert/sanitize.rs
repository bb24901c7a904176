//! Makes text fit a Postgres column: removes U+0000 (Postgres rejects it in
//! text, varchar and jsonb) and truncates to a byte limit at a character
//! boundary. Nothing else; the converter decides which limit applies where.
//!
//! Upstream loses whole rows to both problems: a NUL fails the statement, and
//! its byte-wise truncation can split a character and produce invalid UTF-8.

/// What had to be done to a string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    pub invalid_utf8: bool,
    pub nul_removed: bool,
    pub truncated: bool,
}

impl Changes {
    /// What was done, as the actions counted in `strings_sanitised_total`.
    pub fn actions(self) -> impl Iterator<Item = Action> {
        [
            (self.invalid_utf8, Action::InvalidUtf8Replaced),
            (self.nul_removed, Action::NulRemoved),
            (self.truncated, Action::Truncated),
        ]
        .into_iter()
        .filter_map(|(done, action)| done.then_some(action))
    }
}

/// One thing sanitising can do to a string (the `action` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    InvalidUtf8Replaced,
    NulRemoved,
    Truncated,
}

impl Action {
    pub const ALL: [Action; 3] = [
        Action::InvalidUtf8Replaced,
        Action::NulRemoved,
        Action::Truncated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::InvalidUtf8Replaced => "invalid_utf8_replaced",
            Action::NulRemoved => "nul_removed",
            Action::Truncated => "truncated",
        }
    }
}

/// Decodes text that arrived as bytes, replacing invalid UTF-8 sequences
/// with U+FFFD, then cleans it as [`clean`] does.
pub fn clean_bytes(b: &[u8], max_bytes: usize) -> (String, Changes) {
    match std::str::from_utf8(b) {
        Ok(s) => clean(s, max_bytes),
        Err(_) => {
            let lossy = String::from_utf8_lossy(b);
            let (s, mut c) = clean(&lossy, max_bytes);
            c.invalid_utf8 = true;
            (s, c)
        }
    }
}

/// Removes every U+0000, then keeps the longest prefix of whole characters
/// that fits in `max_bytes` bytes.
pub fn clean(s: &str, max_bytes: usize) -> (String, Changes) {
    let mut changes = Changes::default();
    let mut out: String = if s.contains('\0') {
        changes.nul_removed = true;
        s.chars().filter(|&c| c != '\0').collect()
    } else {
        s.to_owned()
    };
    if out.len() > max_bytes {
        changes.truncated = true;
        let cut = floor_char_boundary(&out, max_bytes);
        out.truncate(cut);
    }
    (out, changes)
}

/// Like [`clean_bytes`], but the limit counts characters (for `varchar(n)`
/// columns that upstream never cuts, where the cut must match what Postgres
/// measures).
pub fn clean_bytes_chars(b: &[u8], max_chars: usize) -> (String, Changes) {
    let (mut s, mut changes) = clean_bytes(b, usize::MAX);
    if let Some((cut, _)) = s.char_indices().nth(max_chars) {
        changes.truncated = true;
        s.truncate(cut);
    }
    (s, changes)
}

/// Removes every U+0000 and applies no length limit (for text and jsonb
/// columns without one).
pub fn strip_nul(s: &str) -> (String, Changes) {
    clean(s, usize::MAX)
}

/// The largest index `<= max` that falls on a character boundary.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    let mut i = max;
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn removes_nul_everywhere() {
        let (s, c) = clean("\0a\0b\0", 10);
        assert_eq!(s, "ab");
        assert!(c.nul_removed && !c.truncated);
    }

    #[test]
    fn untouched_when_it_fits() {
        let (s, c) = clean("héllo", 6);
        assert_eq!(s, "héllo");
        assert_eq!(c, Changes::default());
    }

    #[test]
    fn cuts_at_character_boundaries_across_4096() {
        // For each width, put a multi-byte character across the 4096-byte cut.
        for ch in ['é', '中', '😀'] {
            let w = ch.len_utf8();
            for offset in 1..w {
                let prefix = "a".repeat(4096 - offset);
                let input = format!("{prefix}{ch}tail");
                let (s, c) = clean(&input, 4096);
                assert!(c.truncated);
                assert_eq!(s, prefix, "{ch} at offset {offset}");
                assert!(s.len() <= 4096);
            }
            // Exactly fitting character is kept.
            let prefix = "a".repeat(4096 - w);
            let input = format!("{prefix}{ch}tail");
            let (s, _) = clean(&input, 4096);
            assert_eq!(s, format!("{prefix}{ch}"));
        }
    }

    #[test]
    fn nul_removed_before_measuring() {
        let (s, c) = clean("ab\0\0\0cd", 4);
        assert_eq!(s, "abcd");
        assert!(c.nul_removed && !c.truncated);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_rejected() {
        let (s, c) = clean_bytes(b"ok\xff\xfe\0end", 100);
        assert_eq!(s, "ok\u{fffd}\u{fffd}end");
        assert!(c.invalid_utf8 && c.nul_removed && !c.truncated);
        let (s, c) = clean_bytes("fine".as_bytes(), 100);
        assert_eq!((s.as_str(), c), ("fine", Changes::default()));
    }

    #[test]
    fn character_limit_counts_characters_not_bytes() {
        let (s, c) = clean_bytes_chars("é".repeat(63).as_bytes(), 63);
        assert_eq!((s, c), ("é".repeat(63), Changes::default()));
        let (s, c) = clean_bytes_chars(format!("{}\0中x", "a".repeat(62)).as_bytes(), 63);
        assert_eq!(s, format!("{}中", "a".repeat(62)));
        assert!(c.nul_removed && c.truncated && !c.invalid_utf8);
        let (s, c) = clean_bytes_chars(b"\xff", 0);
        assert_eq!(s, "");
        assert!(c.invalid_utf8 && c.truncated);
    }

    #[test]
    fn zero_limit_gives_empty() {
        assert_eq!(clean("abc", 0).0, "");
    }

    proptest! {
        #[test]
        fn output_is_a_bounded_nul_free_prefix(input in any::<String>(), max in 0usize..64) {
            let (out, changes) = clean(&input, max);
            let stripped: String = input.chars().filter(|&c| c != '\0').collect();
            prop_assert!(out.len() <= max);
            prop_assert!(!out.contains('\0'));
            prop_assert!(stripped.starts_with(&out));
            // Longest such prefix: the next character would not have fitted.
            if out.len() < stripped.len() {
                let next = stripped[out.len()..].chars().next().map(char::len_utf8).unwrap_or(0);
                prop_assert!(out.len() + next > max);
                prop_assert!(changes.truncated);
            }
            prop_assert_eq!(changes.nul_removed, input.contains('\0'));
        }
    }
}
