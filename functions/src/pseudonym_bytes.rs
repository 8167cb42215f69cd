//! `samkor_pseudonym_bytes(person)`: the 16 bytes behind a pseudonym, the
//! key on which the coordinator joins registers.
//!
//! A pseudonym's 32 letters `a`–`p` write its 16 bytes a nibble each, so
//! two pseudonyms are equal exactly when their bytes are: a join on the bytes
//! matches the same rows as a join on the text, and hashes and compares half
//! as many bytes (a `FixedSizeBinary(16)` key, not a string). A node asked
//! for the bytes of a person it does not otherwise send computes them from
//! the identity number without writing the text (`samkor-node`'s
//! `counting`). Anything that is not a pseudonym is an error, never a
//! guessed key.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, FixedSizeBinaryArray};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::record_key::canonical;

/// The function's SQL name.
pub const PSEUDONYM_BYTES_FN: &str = "samkor_pseudonym_bytes";
/// Bytes behind a pseudonym.
pub const PSEUDONYM_BYTES: i32 = 16;

#[derive(Debug, PartialEq, Eq, Hash)]
struct PseudonymBytes {
    signature: Signature,
}

/// The function.
pub fn pseudonym_bytes_udf() -> ScalarUDF {
    ScalarUDF::from(PseudonymBytes { signature: Signature::any(1, Volatility::Immutable) })
}

impl ScalarUDFImpl for PseudonymBytes {
    fn name(&self) -> &str {
        PSEUDONYM_BYTES_FN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null] => {
                Ok(DataType::FixedSizeBinary(PSEUDONYM_BYTES))
            }
            other => plan_err!("{PSEUDONYM_BYTES_FN} takes a person pseudonym, not {other:?}"),
        }
    }

    /// Null exactly where the pseudonym is: a join key that cannot be null
    /// stays so (no null filters are added below the join).
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let types: Vec<DataType> = args.arg_fields.iter().map(|f| f.data_type().clone()).collect();
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        Ok(Arc::new(Field::new(self.name(), self.return_type(&types)?, nullable)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("{PSEUDONYM_BYTES_FN} takes one argument");
        };
        let array = arg.to_array(args.number_rows)?;
        Ok(ColumnarValue::Array(pseudonym_bytes(&array)?))
    }
}

/// The bytes of every pseudonym of a string column; nulls stay null.
fn pseudonym_bytes(array: &ArrayRef) -> Result<ArrayRef> {
    let mut out = vec![0u8; array.len() * PSEUDONYM_BYTES as usize];
    let mut put = |row: usize, v: Option<&str>| -> Result<()> {
        let Some(v) = v else { return Ok(()) };
        match canonical(v.as_bytes()) {
            Some(bytes) => {
                out[row * 16..row * 16 + 16].copy_from_slice(&bytes);
                Ok(())
            }
            None => exec_err!("{PSEUDONYM_BYTES_FN}: a value of the person column is not a pseudonym"),
        }
    };
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().enumerate().try_for_each(|(r, v)| put(r, v))?,
        DataType::LargeUtf8 => array.as_string::<i64>().iter().enumerate().try_for_each(|(r, v)| put(r, v))?,
        DataType::Utf8View => array.as_string_view().iter().enumerate().try_for_each(|(r, v)| put(r, v))?,
        DataType::Null => {}
        other => return exec_err!("{PSEUDONYM_BYTES_FN} takes a person pseudonym, not {other}"),
    }
    let nulls = array.logical_nulls().or_else(|| {
        (array.data_type() == &DataType::Null).then(|| datafusion::arrow::buffer::NullBuffer::new_null(array.len()))
    });
    Ok(Arc::new(FixedSizeBinaryArray::try_new(PSEUDONYM_BYTES, Buffer::from(out), nulls)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;

    #[test]
    fn letters_become_their_bytes_and_anything_else_is_an_error() {
        let p = "abcdefghijklmnopponmlkjihgfedcba";
        let a: ArrayRef = Arc::new(StringArray::from(vec![Some(p), None]));
        let out = pseudonym_bytes(&a).expect("pseudonyms");
        let out = out.as_fixed_size_binary();
        assert_eq!(out.value(0), canonical(p.as_bytes()).expect("canonical"));
        assert_eq!(out.value(0)[0], 0x01, "a = 0, b = 1");
        assert!(out.is_null(1));
        let digits: ArrayRef = Arc::new(StringArray::from(vec!["191212121212"]));
        let e = pseudonym_bytes(&digits).unwrap_err().to_string();
        assert!(e.contains("not a pseudonym") && !e.contains("1912"), "{e}");
    }
}
