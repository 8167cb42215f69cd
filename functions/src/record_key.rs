//! `samkor_record_key(person)`: every person's record key for the cell-key
//! method, a keyed 64-bit hash of the project pseudonym.
//!
//! The key (`RecordKeySecret`) is derived at the nodes from the federation
//! key and the pseudonym domain, so the record key of a person is the same in
//! every register of a project, unrelated across projects, and cannot be
//! computed by anyone who sees pseudonyms (researchers with microdata) but
//! not the federation key. SipHash-2-4 is a keyed pseudo-random function;
//! 64 bits make two persons of a population share a key with probability
//! about n²/2⁶⁵ (3·10⁻⁶ for ten million persons).
//!
//! The pseudonym's canonical form is its 16 bytes: the 32-letter text form
//! (`a`–`p`, one letter a nibble) and a 16-byte binary form give the same key.

use std::hash::Hasher;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use siphasher::sip::SipHasher24;

/// The function's SQL name.
pub const RECORD_KEY_FN: &str = "samkor_record_key";

/// The secret behind one project's record keys. `Debug` shows nothing of it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordKeySecret(pub [u8; 16]);

impl std::fmt::Debug for RecordKeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKeySecret(..)")
    }
}

impl RecordKeySecret {
    /// The record key of one pseudonym (text or binary form).
    pub fn record_key(&self, pseudonym: &[u8]) -> i64 {
        match canonical(pseudonym) {
            Some(bytes) => self.record_key_of_bytes(&bytes),
            None => {
                let mut h = SipHasher24::new_with_key(&self.0);
                h.write(pseudonym);
                h.finish() as i64
            }
        }
    }

    /// The record key of a pseudonym's 16 bytes (its canonical form).
    #[inline]
    pub fn record_key_of_bytes(&self, bytes: &[u8; 16]) -> i64 {
        let mut h = SipHasher24::new_with_key(&self.0);
        h.write(bytes);
        h.finish() as i64
    }

    /// `out[i]` = [`Self::record_key_of_bytes`] of `pseudonyms[i]`, eight at
    /// a time in vector registers where the CPU has them.
    pub fn record_keys_of_bytes(&self, pseudonyms: &[[u8; 16]], out: &mut [i64]) {
        crate::siphash::sip16_each(&self.0, pseudonyms, out);
    }
}

/// The 16 bytes behind a 32-letter text pseudonym.
pub(crate) fn canonical(pseudonym: &[u8]) -> Option<[u8; 16]> {
    if pseudonym.len() != 32 || !pseudonym.iter().all(|b| (b'a'..=b'p').contains(b)) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in pseudonym.chunks_exact(2).enumerate() {
        out[i] = ((pair[0] - b'a') << 4) | (pair[1] - b'a');
    }
    Some(out)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct RecordKey {
    secret: Option<RecordKeySecret>,
    signature: Signature,
}

/// The function; `None` where record keys cannot be computed (the coordinator).
pub fn record_key_udf(secret: Option<RecordKeySecret>) -> ScalarUDF {
    ScalarUDF::from(RecordKey { secret, signature: Signature::any(1, Volatility::Immutable) })
}

impl ScalarUDFImpl for RecordKey {
    fn name(&self) -> &str {
        RECORD_KEY_FN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [
                DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::FixedSizeBinary(16),
            ] => Ok(DataType::Int64),
            [DataType::Null] => Ok(DataType::Int64),
            other => plan_err!("{RECORD_KEY_FN} takes a person pseudonym, not {other:?}"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(secret) = &self.secret else {
            return exec_err!("{RECORD_KEY_FN} is computed at the nodes; this plan asked the coordinator for it");
        };
        let [arg] = args.args.as_slice() else {
            return exec_err!("{RECORD_KEY_FN} takes one argument");
        };
        let array = arg.to_array(args.number_rows)?;
        Ok(ColumnarValue::Array(record_keys(secret, &array)?))
    }
}

fn record_keys(secret: &RecordKeySecret, array: &ArrayRef) -> Result<ArrayRef> {
    let keys = match array.data_type() {
        DataType::Utf8 => keys_of(secret, array.as_string::<i32>().iter().map(|v| v.map(str::as_bytes))),
        DataType::LargeUtf8 => keys_of(secret, array.as_string::<i64>().iter().map(|v| v.map(str::as_bytes))),
        DataType::Utf8View => keys_of(secret, array.as_string_view().iter().map(|v| v.map(str::as_bytes))),
        DataType::Binary => keys_of(secret, array.as_binary::<i32>().iter()),
        DataType::FixedSizeBinary(_) => keys_of(secret, array.as_fixed_size_binary().iter()),
        DataType::Null => return Ok(Arc::new(Int64Array::new_null(array.len()))),
        other => return exec_err!("{RECORD_KEY_FN} takes a person pseudonym, not {other}"),
    };
    Ok(Arc::new(Int64Array::new(keys.into(), array.logical_nulls())))
}

/// The record key of every value (0 for a null); the pseudonyms among them
/// hashed together ([`RecordKeySecret::record_keys_of_bytes`]).
fn keys_of<'a>(secret: &RecordKeySecret, values: impl ExactSizeIterator<Item = Option<&'a [u8]>>) -> Vec<i64> {
    let mut keys = vec![0i64; values.len()];
    let (mut rows, mut bytes) = (Vec::with_capacity(keys.len()), Vec::with_capacity(keys.len()));
    for (row, v) in values.enumerate() {
        let Some(v) = v else { continue };
        // A pseudonym's text, or its 16 bytes themselves (the same key).
        match canonical(v).or_else(|| <[u8; 16]>::try_from(v).ok()) {
            Some(b) => {
                rows.push(row);
                bytes.push(b);
            }
            None => keys[row] = secret.record_key(v),
        }
    }
    let mut hashed = vec![0i64; bytes.len()];
    secret.record_keys_of_bytes(&bytes, &mut hashed);
    for (row, k) in rows.into_iter().zip(hashed) {
        keys[row] = k;
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{FixedSizeBinaryArray, StringArray};

    #[test]
    fn text_and_binary_forms_give_the_same_key() {
        let secret = RecordKeySecret([9; 16]);
        let text = "abcdefghijklmnopabcdefghijklmnop";
        let bytes = canonical(text.as_bytes()).expect("a pseudonym");
        assert_eq!(secret.record_key(text.as_bytes()), secret.record_key(&bytes));
        let a: ArrayRef = Arc::new(StringArray::from(vec![Some(text), None]));
        let b: ArrayRef = Arc::new(FixedSizeBinaryArray::try_from_iter(vec![bytes].into_iter()).expect("array"));
        let ka = record_keys(&secret, &a).expect("keys");
        let kb = record_keys(&secret, &b).expect("keys");
        let (ka, kb) =
            (ka.as_any().downcast_ref::<Int64Array>().unwrap(), kb.as_any().downcast_ref::<Int64Array>().unwrap());
        assert_eq!(ka.value(0), kb.value(0));
        assert!(ka.is_null(1));
    }

    #[test]
    fn keys_depend_on_the_secret_and_spread() {
        let a = RecordKeySecret([1; 16]);
        let b = RecordKeySecret([2; 16]);
        let p = b"ppppppppppppppppaaaaaaaaaaaaaaaa";
        assert_ne!(a.record_key(p), b.record_key(p));
        // The low 32 bits (the cell-key part) are spread evenly: mean near 2^31.
        let n = 20_000u64;
        let mean = (0..n).map(|i| (a.record_key(&i.to_le_bytes()) as u64 & 0xffff_ffff) as f64).sum::<f64>() / n as f64;
        assert!((mean / 2f64.powi(31) - 1.0).abs() < 0.02, "{mean}");
        assert_eq!(format!("{a:?}"), "RecordKeySecret(..)");
    }
}
