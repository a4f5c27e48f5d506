//! Value parsers for numeric flags: every count and size says what it accepts when it is given something else
//! (a negative number, a fraction, zero where zero means nothing), instead of clap's generic "invalid digit".
//! Flags that use them also set `allow_negative_numbers`, so that `-n -5` reaches the parser rather than being
//! taken for an unknown flag.

/// A whole number of 0 or more (token counts, top-k, ...).
pub fn count(s: &str) -> Result<usize, String> {
    whole(s, 0)
}

/// A whole number of 1 or more (threads, context sizes, windows, repetitions, ...).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    whole(s, 1)
}

/// A seed: any whole number from 0 to 2^64 - 1.
pub fn seed(s: &str) -> Result<u64, String> {
    s.trim().parse::<u64>().map_err(|_| format!("must be a whole number from 0 to {}", u64::MAX))
}

fn whole(s: &str, min: usize) -> Result<usize, String> {
    let t = s.trim();
    let what = if min == 0 { "a whole number of 0 or more" } else { "a whole number of 1 or more" };
    if t.starts_with('-') {
        return Err(format!("must be {what}, not negative"));
    }
    if let Ok(x) = t.parse::<f64>() {
        if x.fract() != 0.0 && x.is_finite() {
            return Err(format!("must be {what}, not a fraction"));
        }
    }
    match t.parse::<usize>() {
        Ok(v) if v >= min => Ok(v),
        Ok(v) => Err(format!("must be {what}, not {v}")),
        Err(_) if t.parse::<f64>().is_ok() => Err(format!("must be {what} written in digits (no exponent)")),
        Err(_) => Err(format!("must be {what}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(count("0"), Ok(0));
        assert_eq!(count(" 17 "), Ok(17));
        assert!(count("-5").expect_err("refused").contains("not negative"));
        assert!(count("2.5").expect_err("refused").contains("fraction"));
        assert!(count("1e3").expect_err("refused").contains("digits"));
        assert!(count("abc").expect_err("refused").contains("whole number"));
        assert!(at_least_one("0").expect_err("refused").contains("1 or more"));
        assert_eq!(at_least_one("1"), Ok(1));
        assert!(seed("-1").is_err());
        assert_eq!(seed("18446744073709551615"), Ok(u64::MAX));
    }
}
