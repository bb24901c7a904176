//! Kubernetes resource quantities (`k8s.io/apimachinery` `resource.Quantity`):
//! parsing, the arithmetic the ingester needs, and the string form Kubernetes
//! writes.
//!
//! # Syntax
//!
//! A quantity is `<sign?><number><suffix>`: the number is digits with an
//! optional `.` (`1`, `1.5`, `.5`, `1.`), the suffix one of
//! `n u m "" k M G T P E` (decimal SI), `Ki Mi Gi Ti Pi Ei` (binary SI) or
//! `e<int>` / `E<int>` (decimal exponent). The scanner and the suffix
//! interpretation follow Kubernetes', quirks included, so that every string
//! Kubernetes accepts parses here with the same value and every string it
//! rejects is rejected: `+`, `-`, `.` and `Ki` are zero; `Pi` and `Ei`
//! without digits are errors; `1E` is 10^18 (suffix `E`) but `1E3` is 1000
//! (exponent); an exponent is read as an int64 and then wrapped to int32.
//!
//! # Value
//!
//! As in Kubernetes, the value is exact decimal, rounded up (away from zero)
//! to a multiple of 10^-9, and binary-SI input is capped at 2^63-1 in
//! magnitude. Unlike Kubernetes, which keeps arbitrarily many digits, a
//! quantity here keeps at most 38 significant digits (an `u128` mantissa
//! with a base-10 exponent), which covers every value an int64 count can
//! hold with nine decimals to spare:
//! - parsing a number with more significant digits rounds it up (away from
//!   zero) to 38 digits;
//! - [`Quantity::add`] is exact while the exact sum has at most 38
//!   significant digits, and is otherwise rounded to the nearest 37-digit
//!   value.
//!
//! Nothing here panics, whatever the input.
//!
//! # Integer views
//!
//! [`Quantity::value`] and [`Quantity::milli_value`] round away from zero,
//! as Kubernetes' `Value()` and `MilliValue()` do for the values they can
//! represent, and **saturate** at `i64::MIN` / `i64::MAX` where Kubernetes
//! silently returns 0 or a wrapped number (for example `MilliValue()` of
//! `1E` is 0 in Kubernetes and `i64::MAX` here).
//!
//! # String form
//!
//! [`Quantity::canonical`] is Kubernetes' canonical form: no fractional
//! digits, the largest suffix of the quantity's format that loses nothing,
//! the format remembered from parsing (`1.5` → `1500m`, `2000` → `2k`,
//! `1.5Gi` → `1536Mi`, `1e3` → `1e3`); binary values below 1024 in
//! magnitude or with a fraction are written in decimal SI (`0.5Ki` → `512`).
//! Two deliberate differences where Kubernetes writes a wrong value: decimal
//! SI beyond the `E` suffix is written as `1000E` (or, past 30 extra digits,
//! as `1e48`) instead of dropping the suffix, and binary values of 1024 Ei and
//! more keep the `Ei` suffix. A binary value too large for 128 bits is
//! written in decimal SI.
//!
//! [`fmt::Display`] (`to_string`) is Kubernetes' `String()`, the text it
//! writes into protobuf: like Kubernetes, it returns the parsed text itself
//! when the parser judged it canonical (`1.050`, `+1`, `1E3` come back as
//! written) and the canonical form otherwise; any arithmetic result uses the
//! canonical form.

use std::cmp::Ordering;
use std::fmt;
use std::ops::{Add, AddAssign};
use std::str::FromStr;

/// How a quantity is written; remembered from parsing, kept by addition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `12e6`
    DecimalExponent,
    /// `12Mi` (12 × 2^20)
    BinarySI,
    /// `12M` (12 × 10^6)
    DecimalSI,
}

/// Why a string is not a quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum QuantityError {
    #[error("the quantity is empty")]
    Empty,
    #[error("a quantity is a signed decimal number followed by an optional suffix")]
    FormatWrong,
    #[error("the numeric part of the quantity has no digits")]
    Numeric,
    #[error("unknown quantity suffix")]
    Suffix,
}

/// Most significant digits a quantity keeps.
const MAX_DIGITS: usize = 38;
/// Largest mantissa: 38 nines.
const MAX_MANTISSA: u128 = 99_999_999_999_999_999_999_999_999_999_999_999_999;
/// Values are multiples of 10^NANO.
const NANO: i64 = -9;
/// Binary-SI input is capped at this magnitude (int64's maximum).
const BINARY_CAP: u128 = i64::MAX as u128;
/// Characters the scanner accepts at the start of a suffix.
const SUFFIX_CHARS: &[u8] = b"eEinumkKMGTP";
/// Decimal SI beyond `E` is written with up to this many extra zeros.
const MAX_EXTRA_ZEROS: i64 = 30;

/// A Kubernetes resource quantity. Equality and ordering are numeric
/// (`1000m == 1`), as Kubernetes' `Cmp`/`Equal`.
#[derive(Debug, Clone)]
pub struct Quantity {
    negative: bool,
    /// Magnitude is `mantissa × 10^exponent`; the mantissa has no trailing
    /// zeros and at most 38 digits; zero is `0 × 10^0`.
    mantissa: u128,
    exponent: i64,
    format: Format,
    /// The parsed text, when Kubernetes would reuse it as the string form.
    as_written: Option<Box<str>>,
}

impl Quantity {
    /// Zero, in decimal SI.
    pub fn zero() -> Quantity {
        Quantity {
            negative: false,
            mantissa: 0,
            exponent: 0,
            format: Format::DecimalSI,
            as_written: None,
        }
    }

    /// `value` units in the given format.
    pub fn new(value: i64, format: Format) -> Quantity {
        Quantity::from_parts(value < 0, u128::from(value.unsigned_abs()), 0, format)
    }

    /// `value` thousandths in the given format.
    pub fn new_milli(value: i64, format: Format) -> Quantity {
        Quantity::from_parts(value < 0, u128::from(value.unsigned_abs()), -3, format)
    }

    /// Parses a quantity as Kubernetes' `ParseQuantity` does (see the module
    /// documentation for the rules and where they differ from Kubernetes).
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        parse(s)
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// `Less` below zero, `Equal` at zero, `Greater` above.
    pub fn sign(&self) -> Ordering {
        if self.mantissa == 0 {
            Ordering::Equal
        } else if self.negative {
            Ordering::Less
        } else {
            Ordering::Greater
        }
    }

    /// The value in units, rounded away from zero (`1.5` → 2, `-1.5` → -2,
    /// `1n` → 1), saturating at the bounds of `i64`.
    pub fn value(&self) -> i64 {
        self.scaled_value(0)
    }

    /// The value in thousandths, rounded away from zero (`1.5` → 1500,
    /// `1n` → 1), saturating at the bounds of `i64`.
    pub fn milli_value(&self) -> i64 {
        self.scaled_value(-3)
    }

    /// The value in units of 10^`scale`, rounded away from zero, saturating.
    pub fn scaled_value(&self, scale: i64) -> i64 {
        if self.mantissa == 0 {
            return 0;
        }
        let shift = self.exponent.saturating_sub(scale);
        let magnitude = if shift >= 0 {
            u32::try_from(shift)
                .ok()
                .and_then(pow10)
                .and_then(|p| p.checked_mul(self.mantissa))
                .unwrap_or(u128::MAX)
        } else {
            match u32::try_from(shift.unsigned_abs()).ok().and_then(pow10) {
                Some(p) => self.mantissa / p + u128::from(!self.mantissa.is_multiple_of(p)),
                // 10^d exceeds any mantissa: 0 < |value| < 1.
                None => 1,
            }
        };
        saturate(self.negative, magnitude)
    }

    /// The sum. If `self` is zero the result takes `other`'s format,
    /// otherwise `self`'s, as in Kubernetes. Exact up to 38 significant
    /// digits (see the module documentation).
    #[allow(clippy::should_implement_trait)] // also implemented as `+`
    pub fn add(&self, other: &Quantity) -> Quantity {
        let format = if self.is_zero() {
            other.format
        } else {
            self.format
        };
        let a = (self.mantissa, self.exponent);
        let b = (other.mantissa, other.exponent);
        let (negative, (mantissa, exponent)) = if self.negative == other.negative {
            (self.negative, add_magnitudes(a, b))
        } else {
            match cmp_magnitudes(a, b) {
                Ordering::Less => (other.negative, sub_magnitudes(b, a)),
                _ => (self.negative, sub_magnitudes(a, b)),
            }
        };
        Quantity::from_parts(negative, mantissa, exponent, format)
    }

    /// Kubernetes' canonical form (see the module documentation); unlike
    /// `to_string`, never the text as written.
    pub fn canonical(&self) -> String {
        if self.mantissa == 0 {
            return "0".to_string();
        }
        let sign = if self.negative { "-" } else { "" };
        if self.format == Format::BinarySI
            && cmp_magnitudes((self.mantissa, self.exponent), (1024, 0)) != Ordering::Less
            && self.exponent >= 0
        {
            let whole = u32::try_from(self.exponent)
                .ok()
                .and_then(pow10)
                .and_then(|p| p.checked_mul(self.mantissa));
            if let Some(mut v) = whole {
                let mut power = 0;
                while power < BINARY_SUFFIXES.len() - 1 && v % 1024 == 0 {
                    v /= 1024;
                    power += 1;
                }
                return format!("{sign}{v}{}", BINARY_SUFFIXES[power]);
            }
        }
        // Decimal: the exponent goes down to a multiple of three.
        let extra = self.exponent.rem_euclid(3);
        let exp3 = self.exponent - extra;
        let mut digits = self.mantissa.to_string();
        for _ in 0..extra {
            digits.push('0');
        }
        let exponent_form = |digits: &str| {
            if exp3 == 0 {
                format!("{sign}{digits}")
            } else {
                format!("{sign}{digits}e{exp3}")
            }
        };
        if self.format == Format::DecimalExponent {
            return exponent_form(&digits);
        }
        let suffix = match exp3 {
            -9 => "n",
            -6 => "u",
            -3 => "m",
            0 => "",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            18 => "E",
            e if e > 18 && e - 18 <= MAX_EXTRA_ZEROS => {
                for _ in 18..e {
                    digits.push('0');
                }
                "E"
            }
            _ => return exponent_form(&digits),
        };
        format!("{sign}{digits}{suffix}")
    }

    fn from_parts(negative: bool, mantissa: u128, exponent: i64, format: Format) -> Quantity {
        let (mantissa, exponent) = normalise(mantissa, exponent);
        Quantity {
            negative: negative && mantissa != 0,
            mantissa,
            exponent,
            format,
            as_written: None,
        }
    }
}

const BINARY_SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

impl Default for Quantity {
    fn default() -> Self {
        Quantity::zero()
    }
}

impl fmt::Display for Quantity {
    /// Kubernetes' `String()`: the parsed text when Kubernetes would reuse
    /// it, otherwise [`Quantity::canonical`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.as_written {
            Some(s) => f.write_str(s),
            None => f.write_str(&self.canonical()),
        }
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    /// Numeric order, exact.
    fn cmp(&self, other: &Self) -> Ordering {
        let by_sign = self.sign().cmp(&other.sign());
        if by_sign != Ordering::Equal {
            return by_sign;
        }
        let by_magnitude = cmp_magnitudes(
            (self.mantissa, self.exponent),
            (other.mantissa, other.exponent),
        );
        if self.negative {
            by_magnitude.reverse()
        } else {
            by_magnitude
        }
    }
}

impl Add for Quantity {
    type Output = Quantity;
    fn add(self, other: Quantity) -> Quantity {
        Quantity::add(&self, &other)
    }
}

impl<'a> Add<&'a Quantity> for &'a Quantity {
    type Output = Quantity;
    fn add(self, other: &'a Quantity) -> Quantity {
        Quantity::add(self, other)
    }
}

impl AddAssign<&Quantity> for Quantity {
    fn add_assign(&mut self, other: &Quantity) {
        *self = Quantity::add(self, other);
    }
}

// ---------------------------------------------------------------------------
// Parsing

fn parse(s: &str) -> Result<Quantity, QuantityError> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(QuantityError::Empty);
    }
    if s == "0" {
        return Ok(Quantity {
            as_written: Some(s.into()),
            ..Quantity::zero()
        });
    }

    // Sign.
    let mut pos = 0;
    let mut negative = false;
    match b[0] {
        b'-' => {
            negative = true;
            pos = 1;
        }
        b'+' => pos = 1,
        _ => {}
    }
    let sign_end = pos;

    // Leading zeros; nothing but zeros is zero.
    while pos < b.len() && b[pos] == b'0' {
        pos += 1;
    }
    if pos == b.len() {
        return Ok(Quantity::zero());
    }

    // Integer digits, then an optional fraction.
    let num_start = pos;
    while pos < b.len() && b[pos].is_ascii_digit() {
        pos += 1;
    }
    let num: &[u8] = if pos == num_start {
        b"0"
    } else {
        &b[num_start..pos]
    };
    let mut denom: &[u8] = &[];
    if pos < b.len() && b[pos] == b'.' {
        pos += 1;
        let start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            pos += 1;
        }
        denom = &b[start..pos];
    }
    let has_digits = b[sign_end..pos].iter().any(u8::is_ascii_digit);

    // Suffix: letters, then an optional sign, then digits, then the end.
    let suffix_start = pos;
    while pos < b.len() && SUFFIX_CHARS.contains(&b[pos]) {
        pos += 1;
    }
    if pos < b.len() && (b[pos] == b'-' || b[pos] == b'+') {
        pos += 1;
    }
    while pos < b.len() && b[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos < b.len() {
        return Err(QuantityError::FormatWrong);
    }
    let (base, exponent, format) = interpret_suffix(&s[suffix_start..])?;

    let denom_len = i64::try_from(denom.len()).unwrap_or(i64::MAX);
    let mut shifted = Vec::with_capacity(num.len() + denom.len());
    shifted.extend(num.iter().chain(denom).map(|d| d - b'0'));

    let parsed = if base == 10 {
        let scale = i64::from(exponent).saturating_sub(denom_len);
        // Kubernetes' int64 fast path: it reuses the text as the string form
        // when that looks canonical.
        let fast = shifted.len() <= 18 && scale >= NANO;
        if !fast && !has_digits {
            return Err(QuantityError::Numeric);
        }
        let reuse_text =
            fast && scale % 3 == 0 && !shifted.ends_with(&[0, 0, 0]) && shifted.first() != Some(&0);
        let mut q = from_digits(negative, &shifted, scale, format, None);
        if reuse_text {
            q.as_written = Some(s.into());
        }
        q
    } else {
        // Kubernetes' fast path needs an integer and a "precision" of
        // 15 - len(num) - exponent*3/10 - 1 that is not negative.
        let fast = denom.is_empty() && (num.len() as i64) + i64::from(exponent) * 3 / 10 <= 14;
        if !fast && !has_digits {
            return Err(QuantityError::Numeric);
        }
        // On the fast path the integer has at most 11 digits.
        let reuse_text = fast && !digits_value(num).is_multiple_of(8);
        let scaled = mul_pow2(&shifted, exponent);
        let mut q = from_digits(negative, &scaled, -denom_len, format, Some(BINARY_CAP));
        if q.format == Format::BinarySI
            && !q.is_zero()
            && cmp_magnitudes((q.mantissa, q.exponent), (1, 0)) == Ordering::Less
        {
            q.format = Format::DecimalSI;
        }
        if reuse_text {
            q.as_written = Some(s.into());
        }
        q
    };
    Ok(parsed)
}

/// (base, exponent, format) of a suffix, as Kubernetes interprets it.
fn interpret_suffix(suffix: &str) -> Result<(u32, i32, Format), QuantityError> {
    let decimal = |e| Ok((10, e, Format::DecimalSI));
    let binary = |e| Ok((2, e, Format::BinarySI));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        _ => {
            let rest = suffix.strip_prefix(['e', 'E']).filter(|r| !r.is_empty());
            match rest.map(str::parse::<i64>) {
                // Kubernetes keeps the low 32 bits.
                Some(Ok(e)) => Ok((10, e as i32, Format::DecimalExponent)),
                _ => Err(QuantityError::Suffix),
            }
        }
    }
}

/// The value of at most 19 decimal digits (wrapping beyond; callers pass
/// short slices).
fn digits_value(ascii: &[u8]) -> u64 {
    ascii.iter().fold(0u64, |acc, d| {
        acc.wrapping_mul(10)
            .wrapping_add(u64::from(d.wrapping_sub(b'0')))
    })
}

/// Decimal digits (values 0..=9, most significant first) times 2^power.
fn mul_pow2(digits: &[u8], power: i32) -> Vec<u8> {
    let factor: u128 = 1u128 << power.clamp(0, 64);
    let mut out = Vec::with_capacity(digits.len() + 20);
    let mut carry: u128 = 0;
    for &d in digits.iter().rev() {
        let v = u128::from(d) * factor + carry;
        out.push((v % 10) as u8);
        carry = v / 10;
    }
    while carry > 0 {
        out.push((carry % 10) as u8);
        carry /= 10;
    }
    out.reverse();
    out
}

/// Builds a quantity from the exact value `digits × 10^exponent`: rounds it
/// up (away from zero) to a multiple of 10^-9 and to 38 significant digits,
/// then caps its magnitude at `cap` if given.
fn from_digits(
    negative: bool,
    digits: &[u8],
    exponent: i64,
    format: Format,
    cap: Option<u128>,
) -> Quantity {
    let start = digits.iter().position(|&d| d != 0).unwrap_or(digits.len());
    let mut sig: Vec<u8> = digits[start..].to_vec();
    let mut exponent = exponent;
    strip_trailing_zeros(&mut sig, &mut exponent);
    if sig.is_empty() {
        return Quantity {
            format,
            ..Quantity::zero()
        };
    }
    if exponent < NANO {
        let drop = usize::try_from(NANO.saturating_sub(exponent)).unwrap_or(usize::MAX);
        round_up_dropping(&mut sig, drop);
        exponent = NANO;
        strip_trailing_zeros(&mut sig, &mut exponent);
    }
    if sig.len() > MAX_DIGITS {
        let drop = sig.len() - MAX_DIGITS;
        round_up_dropping(&mut sig, drop);
        exponent = exponent.saturating_add(i64::try_from(drop).unwrap_or(i64::MAX));
        strip_trailing_zeros(&mut sig, &mut exponent);
    }
    // At most 38 digits now (a carry past 38 nines leaves a single 1).
    let mut mantissa = sig.iter().fold(0u128, |acc, &d| {
        acc.saturating_mul(10).saturating_add(u128::from(d))
    });
    if let Some(cap) = cap {
        if cmp_magnitudes((mantissa, exponent), (cap, 0)) == Ordering::Greater {
            mantissa = cap;
            exponent = 0;
        }
    }
    Quantity::from_parts(negative, mantissa, exponent, format)
}

/// Moves trailing zeros of a significand into its exponent.
fn strip_trailing_zeros(sig: &mut Vec<u8>, exponent: &mut i64) {
    let keep = sig.iter().rposition(|&d| d != 0).map_or(0, |i| i + 1);
    let zeros = sig.len() - keep;
    sig.truncate(keep);
    *exponent = exponent.saturating_add(i64::try_from(zeros).unwrap_or(i64::MAX));
}

/// Drops the last `drop` digits of a non-zero significand whose last digit is
/// not zero, rounding the rest up (away from zero).
fn round_up_dropping(sig: &mut Vec<u8>, drop: usize) {
    if drop == 0 {
        return;
    }
    if drop >= sig.len() {
        sig.clear();
        sig.push(1);
        // The caller's exponent moves by `drop`; the lone 1 then sits at
        // exactly the rounding position.
        return;
    }
    sig.truncate(sig.len() - drop);
    // The dropped digits end in a non-zero digit, so round up.
    for d in sig.iter_mut().rev() {
        if *d == 9 {
            *d = 0;
        } else {
            *d += 1;
            return;
        }
    }
    sig.insert(0, 1);
}

// ---------------------------------------------------------------------------
// Magnitude arithmetic on (mantissa, exponent) pairs.

fn pow10(n: u32) -> Option<u128> {
    10u128.checked_pow(n)
}

fn digit_count(m: u128) -> i64 {
    m.checked_ilog10().map_or(1, |l| i64::from(l) + 1)
}

/// The position just above the most significant digit.
fn order(m: u128, e: i64) -> i64 {
    digit_count(m).saturating_add(e)
}

/// Strips trailing zeros and brings the mantissa within 38 digits
/// (rounding half up); zero becomes (0, 0).
fn normalise(mut m: u128, mut e: i64) -> (u128, i64) {
    if m == 0 {
        return (0, 0);
    }
    while m > MAX_MANTISSA {
        m = m / 10 + u128::from(m % 10 >= 5);
        e = e.saturating_add(1);
    }
    while m.is_multiple_of(10) {
        m /= 10;
        e = e.saturating_add(1);
    }
    (m, e)
}

fn cmp_magnitudes(a: (u128, i64), b: (u128, i64)) -> Ordering {
    match (a.0 == 0, b.0 == 0) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Less,
        (false, true) => return Ordering::Greater,
        _ => {}
    }
    let (oa, ob) = (order(a.0, a.1), order(b.0, b.1));
    if oa != ob {
        return oa.cmp(&ob);
    }
    // Same order of magnitude: aligning adds at most as many digits as the
    // other mantissa has, so it fits.
    if a.1 >= b.1 {
        align(a.0, a.1 - b.1).map_or(Ordering::Greater, |x| x.cmp(&b.0))
    } else {
        align(b.0, b.1 - a.1).map_or(Ordering::Less, |x| a.0.cmp(&x))
    }
}

/// `m × 10^shift`, if it fits.
fn align(m: u128, shift: i64) -> Option<u128> {
    u32::try_from(shift)
        .ok()
        .and_then(pow10)
        .and_then(|p| p.checked_mul(m))
}

/// `m × 10^e` expressed in units of 10^t, rounded half up.
fn rescale(m: u128, e: i64, t: i64) -> u128 {
    if e >= t {
        align(m, e - t).unwrap_or(u128::MAX)
    } else {
        match u32::try_from(t - e).ok().and_then(pow10) {
            Some(p) => {
                let r = m % p;
                m / p + u128::from(r != 0 && r >= p - r)
            }
            None => 0,
        }
    }
}

fn add_magnitudes(a: (u128, i64), b: (u128, i64)) -> (u128, i64) {
    if a.0 == 0 {
        return b;
    }
    if b.0 == 0 {
        return a;
    }
    let low = a.1.min(b.1);
    let exact = align(a.0, a.1 - low)
        .zip(align(b.0, b.1 - low))
        .and_then(|(x, y)| x.checked_add(y))
        .filter(|&s| s <= MAX_MANTISSA);
    match exact {
        Some(sum) => normalise(sum, low),
        None => {
            let t = order(a.0, a.1)
                .max(order(b.0, b.1))
                .saturating_sub(MAX_DIGITS as i64 - 1);
            normalise(rescale(a.0, a.1, t).saturating_add(rescale(b.0, b.1, t)), t)
        }
    }
}

/// `big - small`, where `big >= small`.
fn sub_magnitudes(big: (u128, i64), small: (u128, i64)) -> (u128, i64) {
    if small.0 == 0 {
        return big;
    }
    let low = big.1.min(small.1);
    let exact = align(big.0, big.1 - low)
        .zip(align(small.0, small.1 - low))
        .map(|(x, y)| x.saturating_sub(y));
    match exact {
        Some(diff) => normalise(diff, low),
        None => {
            let t = order(big.0, big.1).saturating_sub(MAX_DIGITS as i64 - 1);
            normalise(
                rescale(big.0, big.1, t).saturating_sub(rescale(small.0, small.1, t)),
                t,
            )
        }
    }
}

fn saturate(negative: bool, magnitude: u128) -> i64 {
    if negative {
        if magnitude >= 1u128 << 63 {
            i64::MIN
        } else {
            -(magnitude as i64)
        }
    } else {
        i64::try_from(magnitude).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(s: &str) -> Quantity {
        match Quantity::parse(s) {
            Ok(q) => q,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    /// (input, canonical form, milli value, value)
    const CASES: &[(&str, &str, i64, i64)] = &[
        ("0", "0", 0, 0),
        ("1", "1", 1000, 1),
        ("500m", "500m", 500, 1),
        ("1.5", "1500m", 1500, 2),
        ("0.5", "500m", 500, 1),
        (".5", "500m", 500, 1),
        ("2Gi", "2Gi", 2_147_483_648_000, 2_147_483_648),
        ("1G", "1G", 1_000_000_000_000, 1_000_000_000),
        ("1e3", "1e3", 1_000_000, 1000),
        ("1E3", "1e3", 1_000_000, 1000),
        ("1e+3", "1e3", 1_000_000, 1000),
        ("1e-3", "1e-3", 1, 1),
        ("1.5e3", "1500", 1_500_000, 1500),
        ("12e6", "12e6", 12_000_000_000, 12_000_000),
        ("100Ki", "100Ki", 102_400_000, 102_400),
        ("+1", "1", 1000, 1),
        ("-2", "-2", -2000, -2),
        ("-1.5", "-1500m", -1500, -2),
        ("1E", "1E", i64::MAX, 1_000_000_000_000_000_000),
        (
            "12345678901234567m",
            "12345678901234567m",
            12_345_678_901_234_567,
            12_345_678_901_235,
        ),
        ("1000", "1k", 1_000_000, 1000),
        ("2000", "2k", 2_000_000, 2000),
        ("1500m", "1500m", 1500, 2),
        ("1024", "1024", 1_024_000, 1024),
        ("1024Ki", "1Mi", 1_048_576_000, 1_048_576),
        ("1.5Gi", "1536Mi", 1_610_612_736_000, 1_610_612_736),
        ("0.5Gi", "512Mi", 536_870_912_000, 536_870_912),
        ("0.5Ki", "512", 512_000, 512),
        ("1Ki", "1Ki", 1_024_000, 1024),
        ("1.1Ki", "1126400m", 1_126_400, 1127),
        ("1.0001Ki", "1024102400u", 1_024_103, 1025),
        ("1023", "1023", 1_023_000, 1023),
        ("1n", "1n", 1, 1),
        ("1u", "1u", 1, 1),
        ("0.0000000001", "1n", 1, 1),
        ("1e-10", "1e-9", 1, 1),
        ("0.1m", "100u", 1, 1),
        ("-0.1m", "-100u", -1, -1),
        ("100m", "100m", 100, 1),
        ("1.G", "1G", 1_000_000_000_000, 1_000_000_000),
        ("000123", "123", 123_000, 123),
        ("1.050", "1050m", 1050, 2),
        ("1Ei", "1Ei", i64::MAX, 1_152_921_504_606_846_976),
        ("7Ei", "7Ei", i64::MAX, 8_070_450_532_247_928_832),
        // 8Ei is 2^63: binary SI is capped at 2^63-1.
        ("8Ei", "9223372036854775807", i64::MAX, i64::MAX),
        ("-8Ei", "-9223372036854775807", i64::MIN, -i64::MAX),
        ("1.5Ti", "1536Gi", 1_649_267_441_664_000, 1_649_267_441_664),
        (
            "3Pi",
            "3Pi",
            3_377_699_720_527_872_000,
            3_377_699_720_527_872,
        ),
        ("1e18", "1e18", i64::MAX, 1_000_000_000_000_000_000),
        (
            "9.223372036854775807E",
            "9223372036854775807",
            i64::MAX,
            i64::MAX,
        ),
        ("1e19", "10e18", i64::MAX, i64::MAX),
        ("-1e19", "-10e18", i64::MIN, i64::MIN),
        ("1000E", "1000E", i64::MAX, i64::MAX),
        ("1e50", "100e48", i64::MAX, i64::MAX),
        // Exponents wrap to 32 bits, as in Kubernetes: 9999999999 mod 2^32.
        ("1e9999999999", "10e1410065406", i64::MAX, i64::MAX),
        ("1e-9999999999", "1e-9", 1, 1),
        ("-", "0", 0, 0),
        ("+", "0", 0, 0),
        (".", "0", 0, 0),
        ("-0", "0", 0, 0),
        ("0.0", "0", 0, 0),
        ("Ki", "0", 0, 0),
        ("Ti", "0", 0, 0),
        ("0Ei", "0", 0, 0),
        ("k", "0", 0, 0),
        (".e-9", "0", 0, 0),
    ];

    #[test]
    fn parses_canonicalises_and_scales() {
        for &(input, canonical, milli, value) in CASES {
            let parsed = q(input);
            assert_eq!(parsed.canonical(), canonical, "canonical of {input:?}");
            assert_eq!(parsed.milli_value(), milli, "milli of {input:?}");
            assert_eq!(parsed.value(), value, "value of {input:?}");
            // The canonical form reads back as the same number.
            assert_eq!(q(canonical), parsed, "round trip of {input:?}");
        }
    }

    /// Inputs from Kubernetes' own parser tests, with the value and format
    /// Kubernetes gives them (values written as plain decimals).
    #[test]
    fn matches_kubernetes_parse_results() {
        use Format::*;
        let cases: &[(&str, &str, Format)] = &[
            ("0n", "0", DecimalSI),
            ("0Ki", "0", BinarySI),
            ("0Ti", "0", BinarySI),
            ("0T", "0", DecimalSI),
            ("8Ki", "8192", BinarySI),
            ("7Mi", "7340032", BinarySI),
            ("6Gi", "6442450944", BinarySI),
            ("5Ti", "5497558138880", BinarySI),
            ("4Pi", "4503599627370496", BinarySI),
            ("3Ei", "3458764513820540928", BinarySI),
            ("100Ti", "109951162777600", BinarySI),
            ("5n", "0.000000005", DecimalSI),
            ("50k", "50000", DecimalSI),
            ("300T", "300000000000000", DecimalSI),
            ("1E", "1000000000000000000", DecimalSI),
            ("1E-3", "0.001", DecimalExponent),
            ("1E18", "1000000000000000000", DecimalExponent),
            ("100.035k", "100035", DecimalSI),
            ("0.0005k", "0.5", DecimalSI),
            ("0.00050k", "0.5", DecimalSI),
            ("0.05000", "0.05", DecimalSI),
            ("0.5e-2", "0.005", DecimalExponent),
            ("10.035M", "10035000", DecimalSI),
            ("1.3E+6", "1300000", DecimalExponent),
            ("1.53E12", "1530000000000", DecimalExponent),
            ("1.7E18", "1700000000000000000", DecimalExponent),
            ("7.123456M", "7123456", DecimalSI),
            ("6.987654321G", "6987654321", DecimalSI),
            ("1.01E", "1010000000000000000", DecimalSI),
            ("3.001n", "0.000000004", DecimalSI),
            ("1.1E-9", "0.000000002", DecimalExponent),
            ("0.0000000005", "0.000000001", DecimalSI),
            ("0.5e-9", "0.000000001", DecimalExponent),
            ("0.9n", "0.000000001", DecimalSI),
            ("0.00000012345", "0.000000124", DecimalSI),
            ("0.00000012354", "0.000000124", DecimalSI),
            ("9Ei", "9223372036854775807", BinarySI),
            ("9223372036854775807Ki", "9223372036854775807", BinarySI),
            ("12E", "12000000000000000000", DecimalSI),
            ("100.035Ki", "102435.84", BinarySI),
            ("0.5Mi", "524288", BinarySI),
            ("0.05Gi", "53687091.2", BinarySI),
            ("0.025Ti", "27487790694.4", BinarySI),
            ("0.000000000001Ki", "0.000000002", DecimalSI),
            (".0001k", "0.1", DecimalSI),
            ("1.", "1", DecimalSI),
            ("1.G", "1000000000", DecimalSI),
        ];
        for &(input, value, format) in cases {
            for (prefix, negate) in [("", false), ("+", false), ("-", true)] {
                let text = format!("{prefix}{input}");
                let got = q(&text);
                let mut want = q(value);
                if negate {
                    want = &Quantity::zero() + &q(&format!("-{value}"));
                }
                assert_eq!(got, want, "value of {text:?}");
                assert_eq!(got.format(), format, "format of {text:?}");
            }
        }
        for input in [
            "1.1.M", "1+1.0M", "0.1mi", "0.1am", "aoeu", ".5i", "1i", "-3.01i", "-3.01e-", " 1",
            "1 ",
        ] {
            assert!(Quantity::parse(input).is_err(), "{input:?}");
        }
    }

    /// Kubernetes' string-form examples: each canonical text is kept as
    /// written on parse; each alternate spelling comes out canonical.
    #[test]
    fn matches_kubernetes_string_forms() {
        let cases: &[(&str, &str)] = &[
            ("1Gi", "1024Mi"),
            ("300Mi", "307200Ki"),
            ("6Ki", ""),
            ("1001Gi", "1025024Mi"),
            ("1Ti", "1024Gi"),
            ("5", "5000m"),
            ("500m", "0.5"),
            ("1G", "1000M"),
            ("1G", "0.001T"),
            ("1m", "1000u"),
            ("80m", ""),
            ("1080m", "1.08"),
            ("1080m", "1080000000n"),
            ("300M", ""),
            ("1T", ""),
            ("1234567M", ""),
            ("3k", ""),
            ("1025", ""),
            ("1e9", ".001e12"),
            ("1e-3", "0.001e0"),
            ("1e-9", "1000e-12"),
            ("80e-3", ""),
            ("300e6", ""),
            ("3e3", ""),
            ("0", "00"),
            ("1n", ""),
            ("1080n", ""),
            ("1u", ""),
            ("1080u", ""),
        ];
        for &(canonical, alternate) in cases {
            let parsed = q(canonical);
            assert_eq!(parsed.to_string(), canonical);
            assert_eq!(parsed.canonical(), canonical);
            assert!(
                parsed.as_written.is_some(),
                "{canonical:?} is kept as written"
            );
            if canonical != "0" {
                let negative = q(&format!("-{canonical}"));
                assert_eq!(negative.canonical(), format!("-{canonical}"));
            }
            if !alternate.is_empty() {
                let other = q(alternate);
                assert!(other.as_written.is_none(), "{alternate:?} is not kept");
                assert_eq!(other.to_string(), canonical, "{alternate:?}");
            }
        }
    }

    #[test]
    fn formats_are_remembered() {
        assert_eq!(q("1").format(), Format::DecimalSI);
        assert_eq!(q("1m").format(), Format::DecimalSI);
        assert_eq!(q("1E").format(), Format::DecimalSI);
        assert_eq!(q("1Ki").format(), Format::BinarySI);
        assert_eq!(q("1e3").format(), Format::DecimalExponent);
        assert_eq!(q("1E3").format(), Format::DecimalExponent);
        // A binary value strictly between -1 and 1 becomes decimal.
        assert_eq!(q("0.0001Ki").format(), Format::DecimalSI);
        assert_eq!(q("0Ki").format(), Format::BinarySI);
    }

    #[test]
    fn display_reuses_the_text_where_kubernetes_does() {
        for (input, shown) in [
            ("0", "0"),
            ("+1", "+1"),
            ("01", "01"),
            ("1E3", "1E3"),
            ("1e+3", "1e+3"),
            ("1.050", "1.050"),
            ("1.G", "1.G"),
            ("1Ki", "1Ki"),
            ("+1Ki", "+1Ki"),
            ("100m", "100m"),
            ("10", "10"),
            // Not reused: a multiple of eight in binary, "000" endings,
            // leading zeros after the point, scales that are not multiples
            // of three, the slow path.
            ("8Ki", "8Ki"),
            ("1024Ki", "1Mi"),
            ("1000", "1k"),
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("1.0", "1"),
            ("0.0000000001", "1n"),
            ("-0", "0"),
            ("1234567890123456789", "1234567890123456789"),
            ("12345678901234567890", "12345678901234567890"),
        ] {
            assert_eq!(q(input).to_string(), shown, "{input:?}");
        }
        // Arithmetic always yields the canonical form.
        assert_eq!((&q("+1") + &q("0")).to_string(), "1");
    }

    #[test]
    fn rejects_malformed_input() {
        use QuantityError::*;
        for (input, err) in [
            ("", Empty),
            (" 1", FormatWrong),
            ("1 ", FormatWrong),
            ("abc", FormatWrong),
            ("0x10", FormatWrong),
            ("1.5.5", FormatWrong),
            ("1e3.5", FormatWrong),
            ("1Gi ", FormatWrong),
            ("--1", Suffix),
            ("1,5", FormatWrong),
            ("١", FormatWrong),
            ("1e", Suffix),
            ("1ki", Suffix),
            ("1KI", FormatWrong),
            ("1m5", Suffix),
            ("1Mi5", Suffix),
            ("1EE3", Suffix),
            ("1e+", Suffix),
            ("1-", Suffix),
            ("1i", Suffix),
            ("1e99999999999999999999", Suffix),
            // No digits where Kubernetes leaves its int64 fast path.
            ("Pi", Numeric),
            ("Ei", Numeric),
            ("-Ei", Numeric),
            (".Pi", Numeric),
            (".e-10", Numeric),
            ("-e-10", Numeric),
        ] {
            assert_eq!(
                Quantity::parse(input).map(|q| q.canonical()),
                Err(err),
                "{input:?}"
            );
        }
    }

    #[test]
    fn rounds_up_to_nanos() {
        assert_eq!(q("1.0000000001").canonical(), "1000000001n");
        assert_eq!(q("0.0000000015").canonical(), "2n");
        assert_eq!(q("-0.0000000015").canonical(), "-2n");
        assert_eq!(q("0.9999999999").canonical(), "1");
        assert_eq!(q("0.0000000000000000000000000000001").canonical(), "1n");
        // Binary fractions are exact before the rounding.
        assert_eq!(q("0.001Ki").canonical(), "1024m");
        assert_eq!(q("0.0000000001Ki").canonical(), "103n");
    }

    #[test]
    fn very_long_numbers_keep_38_digits_rounded_up() {
        let forty = "1234567890123456789012345678901234567891";
        let parsed = q(forty);
        assert_eq!(
            parsed.canonical(),
            "1234567890123456789012345678901234567900"
        );
        assert_eq!(parsed.value(), i64::MAX);
        // A long run of digits is fine.
        let long = format!("1.{}", "0".repeat(100_000));
        assert_eq!(q(&long).canonical(), "1");
        let long_binary = format!("0.{}1Ki", "0".repeat(10_000));
        assert_eq!(q(&long_binary).canonical(), "1n");
        assert_eq!(q(&"9".repeat(200)).canonical(), "100e198");
    }

    #[test]
    fn adds_with_kubernetes_formats() {
        let sum = |a: &str, b: &str| (&q(a) + &q(b)).canonical();
        assert_eq!(sum("500m", "1.5"), "2");
        assert_eq!(sum("1", "500m"), "1500m");
        assert_eq!(sum("1Gi", "512Mi"), "1536Mi");
        assert_eq!(sum("1Mi", "1Mi"), "2Mi");
        assert_eq!(sum("2Gi", "1G"), "3147483648");
        assert_eq!(sum("1G", "2Gi"), "3147483648");
        assert_eq!(sum("1k", "1Ki"), "2024");
        assert_eq!(sum("1Ki", "1k"), "2024");
        assert_eq!(sum("1e3", "1"), "1001");
        assert_eq!(sum("1e3", "1e3"), "2e3");
        // Zero takes the other operand's format.
        assert_eq!(sum("0", "1Gi"), "1Gi");
        assert_eq!(sum("0", "1e3"), "1e3");
        assert_eq!(sum("1Gi", "0"), "1Gi");
        // Signs.
        assert_eq!(sum("-1", "1"), "0");
        assert_eq!(sum("1", "-2"), "-1");
        assert_eq!(sum("-1.5", "-1.5"), "-3");
        assert_eq!(sum("-1Gi", "512Mi"), "-512Mi");
        // Sums may exceed the binary cap that applies to parsing.
        assert_eq!(sum("8Ei", "8Ei"), "18446744073709551614");
        assert_eq!(sum("4Ei", "4Ei"), "8Ei");
        let mut x = q("4Ei");
        for _ in 0..8 {
            x = &x + &x;
        }
        assert_eq!(x.canonical(), "1024Ei");
        // Exact while 38 digits suffice.
        assert_eq!(sum("1e30", "1"), "1000000000000000000000000000001");
        assert_eq!(
            sum("1e28", "1n"),
            "10000000000000000000000000000000000001e-9"
        );
        // Beyond, rounded.
        assert_eq!(sum("1e30", "1n"), "1e30");
        assert_eq!(sum("1e100", "1"), "10e99");
        assert_eq!(sum("1e100", "-1"), "10e99");
        assert_eq!(sum("1e9999999999", "1e9999999999"), "20e1410065406");
        let mut acc = Quantity::zero();
        for _ in 0..1000 {
            acc += &q("99999999999999999999999999999999999999");
        }
        assert_eq!(acc, q("1e41"));
        assert_eq!(acc.canonical(), format!("100{}E", "0".repeat(21)));
        assert_eq!(acc.format(), Format::DecimalSI);
    }

    #[test]
    fn compares_numerically() {
        assert!(q("1Gi") > q("1G"));
        assert_eq!(q("1000m"), q("1"));
        assert_eq!(q("1k"), q("1e3"));
        assert_eq!(q("1Ki"), q("1024"));
        assert!(q("-1") < q("0"));
        assert!(q("-2") < q("-1"));
        assert!(q("1e100") > q("1E"));
        assert!(q("2") > q("1.999999999"));
        assert!(q("1n") > q("0"));
        assert!(q("-1n") < q("0"));
        assert!(q("1e9999999999") > q("1e100"));
        assert_eq!(q("0").cmp(&q("-0")), Ordering::Equal);
        assert_eq!(q("0.1").cmp(&q("100m")), Ordering::Equal);
    }

    #[test]
    fn constructors() {
        assert_eq!(Quantity::new(1536, Format::BinarySI).canonical(), "1536");
        assert_eq!(Quantity::new(2048, Format::BinarySI).canonical(), "2Ki");
        assert_eq!(Quantity::new(i64::MIN, Format::DecimalSI).value(), i64::MIN);
        assert_eq!(
            Quantity::new_milli(1500, Format::DecimalSI).canonical(),
            "1500m"
        );
        assert_eq!(Quantity::new_milli(-1, Format::DecimalSI).value(), -1);
        assert_eq!(Quantity::default(), Quantity::zero());
        assert_eq!(Quantity::zero().sign(), Ordering::Equal);
        assert_eq!(q("-1").sign(), Ordering::Less);
    }

    fn arbitrary_quantity_text() -> impl Strategy<Value = String> {
        "[+-]?[0-9]{0,22}(\\.[0-9]{0,12})?(|n|u|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]{1,3})"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parse_never_panics(s in any::<String>()) {
            if let Ok(v) = Quantity::parse(&s) {
                let _ = (v.canonical(), v.to_string(), v.value(), v.milli_value(), &v + &v);
            }
        }

        #[test]
        fn parse_never_panics_on_near_misses(s in "[-+0-9.eEinumkKMGTP ]{0,30}") {
            if let Ok(v) = Quantity::parse(&s) {
                let _ = (v.canonical(), v.to_string(), v.value(), v.milli_value(), &v + &v);
            }
        }

        #[test]
        fn canonical_form_reads_back(s in arbitrary_quantity_text()) {
            if let Ok(v) = Quantity::parse(&s) {
                let c = v.canonical();
                let back = Quantity::parse(&c);
                prop_assert_eq!(back.as_ref().ok(), Some(&v), "{} -> {}", s, c);
                // Canonicalising is idempotent, except that a binary value
                // written without a suffix reads back as decimal (as in
                // Kubernetes: 2000 in binary SI is "2000", which reads back
                // as "2k").
                if v.format() != Format::BinarySI {
                    prop_assert_eq!(back.map(|b| b.canonical()).ok(), Some(c.clone()));
                }
                // So is Kubernetes' String().
                prop_assert_eq!(Quantity::parse(&v.to_string()).ok(), Some(v));
            }
        }

        #[test]
        fn integer_views_match_exact_arithmetic(n in -1_000_000_000_000_000i64..1_000_000_000_000_000) {
            prop_assert_eq!(q(&format!("{n}m")).milli_value(), n);
            prop_assert_eq!(q(&format!("{n}")).value(), n);
            prop_assert_eq!(q(&format!("{n}")).milli_value(), n.saturating_mul(1000));
            // Value() of thousandths rounds away from zero.
            let expected = if n % 1000 == 0 { n / 1000 } else { n / 1000 + n.signum() };
            prop_assert_eq!(q(&format!("{n}m")).value(), expected);
        }

        #[test]
        fn addition_and_order_match_exact_arithmetic(a in -1_000_000_000_000i64..1_000_000_000_000,
                                                     b in -1_000_000_000_000i64..1_000_000_000_000) {
            let (qa, qb) = (q(&format!("{a}m")), q(&format!("{b}u")));
            prop_assert_eq!((&qa + &qb).scaled_value(-6), a * 1000 + b);
            prop_assert_eq!((&qb + &qa).scaled_value(-6), a * 1000 + b);
            prop_assert_eq!(qa.cmp(&qb), (a * 1000).cmp(&b));
        }

        #[test]
        fn binary_values_are_exact(n in 0i64..1_000_000, power in 0usize..4) {
            let suffix = ["Ki", "Mi", "Gi", "Ti"][power];
            let v = q(&format!("{n}{suffix}"));
            prop_assert_eq!(v.value(), n << (10 * (power + 1)));
        }

        #[test]
        fn huge_sums_do_not_panic(a in arbitrary_quantity_text(), b in arbitrary_quantity_text()) {
            if let (Ok(x), Ok(y)) = (Quantity::parse(&a), Quantity::parse(&b)) {
                let s = &x + &y;
                let _ = (s.canonical(), s.value(), s.milli_value(), s.cmp(&x));
                let mut acc = Quantity::zero();
                for _ in 0..50 {
                    acc += &s;
                }
                let _ = acc.canonical();
            }
        }
    }
}
