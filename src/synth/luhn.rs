//! The check digit of the Swedish personal identity number (personnummer).
//!
//! A 12-digit number `YYYYMMDDNNNC` carries the century, birth date, a 3-digit serial `NNN`
//! (its last digit odd for men, even for women) and a check digit `C`. The check digit is the
//! Luhn (mod 10) digit over the nine digits `YYMMDDNNN`: weights 2,1,2,1,… from the left,
//! two-digit products have their digits summed, and `C = (10 - sum % 10) % 10`.
//!
//! The public test number 19121212-1212 is valid: `is_valid("191212121212")`.

/// The Luhn check digit for nine ASCII digits `YYMMDDNNN`.
///
/// Characters that are not ASCII digits count as zero; callers pass digits only.
pub fn check_digit(nine_digits: &str) -> u8 {
    let mut sum = 0u32;
    for (i, b) in nine_digits.bytes().take(9).enumerate() {
        let d = u32::from(b.wrapping_sub(b'0'));
        let d = if d > 9 { 0 } else { d };
        let p = if i % 2 == 0 { d * 2 } else { d };
        sum += p / 10 + p % 10;
    }
    ((10 - sum % 10) % 10) as u8
}

/// Whether `pnr12` is a well-formed 12-digit identity number `YYYYMMDDNNNC`:
/// twelve ASCII digits, a real calendar date and a correct check digit.
pub fn is_valid(pnr12: &str) -> bool {
    let b = pnr12.as_bytes();
    if b.len() != 12 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let num = |r: std::ops::Range<usize>| pnr12[r].parse::<u32>().ok();
    let (Some(year), Some(month), Some(day)) = (num(0..4), num(4..6), num(6..8)) else {
        return false;
    };
    if chrono::NaiveDate::from_ymd_opt(year as i32, month, day).is_none() {
        return false;
    }
    check_digit(&pnr12[2..11]) == b[11] - b'0'
}
