//! Project-specific pseudonyms, in two versioned schemes (`pseudonym_scheme`
//! in the node config; every node of a federation must use the same one).
//!
//! * `aes256-v2` (default): `pseudonym = AES-256(K_p, block(pnr))`, all 128
//!   bits written as 32 letters `a`–`p` (one per nibble). `K_p =
//!   HKDF-SHA256(salt "samkor-pseudonym-v2", ikm = federation key, info =
//!   project)`. `block` is injective: a 12-digit identity number is
//!   `01 ‖ u64 big-endian ‖ "samkor\0"`, any other value of at most 14 bytes
//!   `02 ‖ length ‖ bytes ‖ zeros`; a longer value (not an identity number)
//!   is `03 ‖ SHA-256(value)[..15]`. A block cipher under one key is a
//!   permutation, so two identity numbers never share a pseudonym, and
//!   without `K_p` a pseudonym cannot be inverted or linked to another project.
//! * `hmac-sha256-v1`: `HMAC-SHA256(K, "samkor-pseudonym-v1" 0 project 0 pnr)`,
//!   truncated to 128 bits, written the same way.
//!
//! The key is held by the nodes only; the same person gets the same pseudonym
//! in every register of a project and unrelated pseudonyms in different
//! projects. A pseudonym contains no digit, so it can never equal or contain
//! an identity number.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes::Aes256;
use aes::cipher::{Block, BlockCipherEncrypt};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, FixedSizeBinaryArray, Int64Array, StringArray};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::DataType;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use samkor_functions::RecordKeySecret;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

const DOMAIN: &[u8] = b"samkor-pseudonym-v1\0";
const V2_SALT: &[u8] = b"samkor-pseudonym-v2";
const V2_LONG: &[u8] = b"samkor-pseudonym-v2-long\0";
/// Length in characters of a pseudonym.
pub const PSEUDONYM_LEN: usize = 32;
/// Blocks encrypted together: the widest parallel batch of the `aes` crate's
/// backends (64 with VAES-512; an AES-NI backend takes them eight at a time).
/// Eight at a time left VAES-512 encrypting one block per call.
const LANES: usize = 64;

/// How pseudonyms are computed. All nodes of a federation must use the same
/// scheme, or the same person gets different pseudonyms in different registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum PseudonymScheme {
    /// HMAC-SHA256, truncated to 128 bits (samkor ≤ 0.1; about 5 M ids/s per core).
    #[serde(rename = "hmac-sha256-v1")]
    HmacSha256V1,
    /// AES-256 over one injective 16-byte block per identity number (tens of M ids/s per core).
    #[default]
    #[serde(rename = "aes256-v2")]
    Aes256V2,
}

impl PseudonymScheme {
    /// Every scheme, oldest first.
    pub const ALL: [PseudonymScheme; 2] = [PseudonymScheme::HmacSha256V1, PseudonymScheme::Aes256V2];

    /// The name used in the node config and the catalogue.
    pub fn name(self) -> &'static str {
        match self {
            PseudonymScheme::HmacSha256V1 => "hmac-sha256-v1",
            PseudonymScheme::Aes256V2 => "aes256-v2",
        }
    }

    /// The scheme of a name; a catalogue without one (an older node) is `hmac-sha256-v1`.
    pub fn from_name(name: &str) -> Option<PseudonymScheme> {
        match name {
            "" => Some(PseudonymScheme::HmacSha256V1),
            _ => Self::ALL.into_iter().find(|s| s.name() == name),
        }
    }
}

impl std::fmt::Display for PseudonymScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the federation key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read pseudonymisation key file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("pseudonymisation key file {}: {problem}; it must hold 64 hexadecimal digits (32 random bytes), e.g. from `samkor certs init`", path.display())]
    Malformed { path: PathBuf, problem: String },
}

/// The federation key. Never printed: `Debug` shows nothing of it.
#[derive(Clone)]
pub struct FederationKey([u8; 32]);

impl std::fmt::Debug for FederationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FederationKey(..)")
    }
}

impl FederationKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        FederationKey(bytes)
    }

    /// Reads a key file: 64 hex digits, surrounding white space ignored.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
        Self::parse(text.trim()).map_err(|problem| KeyError::Malformed { path: path.to_owned(), problem })
    }

    fn parse(hex_text: &str) -> Result<Self, String> {
        if hex_text.len() != 64 {
            return Err(format!("found {} characters, expected 64", hex_text.len()));
        }
        let mut key = [0u8; 32];
        hex::decode_to_slice(hex_text, &mut key)
            .map_err(|_| "it contains a character that is not a hexadecimal digit".to_owned())?;
        if key.iter().all(|b| *b == key[0]) {
            return Err("the key is a repeated byte, not a random key".to_owned());
        }
        Ok(FederationKey(key))
    }

    /// The secret behind the record keys of one pseudonym domain (the
    /// cell-key method, `samkor_functions::record_key_udf`): independent of
    /// the pseudonyms, so that seeing pseudonyms tells nothing of record keys.
    pub fn record_key_secret(&self, domain: &str) -> samkor_functions::RecordKeySecret {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(b"samkor-record-key-v1\0");
        mac.update(domain.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut secret = [0u8; 16];
        secret.copy_from_slice(&digest[..16]);
        samkor_functions::RecordKeySecret(secret)
    }

    /// The pseudonymiser of one project under the default scheme.
    pub fn for_project(&self, project: &str) -> ProjectPseudonymiser {
        self.for_project_with(PseudonymScheme::default(), project)
    }

    /// The pseudonymiser of one project under `scheme`.
    pub fn for_project_with(&self, scheme: PseudonymScheme, project: &str) -> ProjectPseudonymiser {
        let keyed = match scheme {
            PseudonymScheme::HmacSha256V1 => {
                let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
                mac.update(DOMAIN);
                mac.update(project.as_bytes());
                mac.update(&[0]);
                Keyed::Hmac(Arc::new(mac))
            }
            PseudonymScheme::Aes256V2 => {
                let mut project_key = [0u8; 32];
                Hkdf::<Sha256>::new(Some(V2_SALT), &self.0)
                    .expand(project.as_bytes(), &mut project_key)
                    .expect("32 bytes is a valid HKDF-SHA256 output length");
                let cipher = Aes256::new_from_slice(&project_key).expect("AES-256 takes a 32-byte key");
                Keyed::Aes(Arc::new(cipher))
            }
        };
        ProjectPseudonymiser { keyed, project: project.to_owned() }
    }
}

#[derive(Clone)]
enum Keyed {
    Hmac(Arc<HmacSha256>),
    Aes(Arc<Aes256>),
}

/// Pseudonymises identity numbers for one project. Cheap to clone.
#[derive(Clone)]
pub struct ProjectPseudonymiser {
    keyed: Keyed,
    project: String,
}

impl std::fmt::Debug for ProjectPseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectPseudonymiser")
            .field("project", &self.project)
            .field("scheme", &self.scheme().name())
            .finish_non_exhaustive()
    }
}

/// The block of a 12-digit identity number `n` under `aes256-v2`:
/// `01 ‖ n big-endian ‖ "samkor\0"`, with `n` placed by `V2_DIGITS | n << 56`.
const V2_DIGITS: u128 = 1 << 120 | u64::from_be_bytes(*b"\0samkor\0") as u128;

/// The 16-byte block of `value` under `aes256-v2` (injective, see the module doc).
#[inline]
fn v2_block(value: &[u8]) -> [u8; 16] {
    let mut block = [0u8; 16];
    write_v2_block(value, &mut block);
    block
}

/// Writes the block of `value` into `out`. An identity number's block is
/// built in registers and stored as two words: written a byte at a time and
/// read back as one block, it stalled every call on store forwarding (two
/// thirds of the scheme's time), and so did two words read back as one.
#[inline]
fn write_v2_block(value: &[u8], out: &mut [u8; 16]) {
    match twelve_digits(value) {
        Some(n) => {
            let block = V2_DIGITS | u128::from(n) << 56;
            out[..8].copy_from_slice(&((block >> 64) as u64).to_be_bytes());
            out[8..].copy_from_slice(&(block as u64).to_be_bytes());
        }
        None => *out = v2_block_other(value),
    }
}

/// The block of a value that is not a 12-digit identity number.
#[cold]
#[inline(never)]
fn v2_block_other(value: &[u8]) -> [u8; 16] {
    let mut block = [0u8; 16];
    if value.len() <= 14 {
        block[0] = 0x02;
        block[1] = value.len() as u8;
        block[2..2 + value.len()].copy_from_slice(value);
    } else {
        let digest = Sha256::new().chain_update(V2_LONG).chain_update(value).finalize();
        block[0] = 0x03;
        block[1..16].copy_from_slice(&digest[..15]);
    }
    block
}

/// Whether two values are equal; a 12-byte identity number is compared as
/// two words, not through a call to `memcmp`.
#[inline]
pub(crate) fn same_value(a: &[u8], b: &[u8]) -> bool {
    let words = |v: &[u8]| -> Option<(u64, u32)> {
        let (head, tail) = v.split_first_chunk::<8>()?;
        Some((u64::from_ne_bytes(*head), u32::from_ne_bytes(tail.try_into().ok()?)))
    };
    match (words(a), words(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Every byte of a `u64` set to 1.
const ONES: u64 = 0x0101_0101_0101_0101;

/// The value of a 12-digit decimal number, `None` for anything else. Eight
/// and four bytes at a time: each byte is checked to lie in `'0'..='9'`
/// (high nibble 3, and still 3 after adding 6), then pairs, quadruples and
/// octets of digits are combined by multiplies (10, 100, 10⁴).
#[inline]
pub(crate) fn twelve_digits(value: &[u8]) -> Option<u64> {
    let (head, tail) = value.split_first_chunk::<8>()?;
    let tail: &[u8; 4] = tail.try_into().ok()?;
    let high = u64::from_le_bytes(*head);
    // The four last digits in the high half of a word whose low half is "0000".
    let low = (u64::from(u32::from_le_bytes(*tail)) << 32) | 0x3030_3030;
    let digits =
        |x: u64| x & (0xf0 * ONES) == 0x30 * ONES && x.wrapping_add(0x06 * ONES) & (0xf0 * ONES) == 0x30 * ONES;
    if !digits(high) || !digits(low) {
        return None;
    }
    Some(eight_digits(high - 0x30 * ONES) * 10_000 + eight_digits(low - 0x30 * ONES))
}

/// Eight digit values (0–9), the first in the lowest byte, as one number.
#[inline]
fn eight_digits(mut d: u64) -> u64 {
    d = (d & (0x0f * ONES)).wrapping_mul(10 << 8 | 1) >> 8;
    d = (d & 0x00ff_00ff_00ff_00ff).wrapping_mul(100 << 16 | 1) >> 16;
    (d & 0x0000_ffff_0000_ffff).wrapping_mul(10_000 << 32 | 1) >> 32
}

/// Writes 16 bytes as 32 letters `a`–`p`, high nibble first: four bytes at
/// a time spread over a word (byte i to byte 2i), nibbles split into
/// neighbouring bytes and `'a'` added to each.
#[inline]
fn letters(bytes: &[u8; 16], out: &mut [u8]) {
    for (four, dst) in bytes.chunks_exact(4).zip(out.chunks_exact_mut(8)) {
        let mut y = u64::from(u32::from_le_bytes(four.try_into().expect("chunks of four")));
        y = (y | (y << 16)) & 0x0000_ffff_0000_ffff;
        y = (y | (y << 8)) & 0x00ff_00ff_00ff_00ff;
        let high = (y >> 4) & 0x000f_000f_000f_000f;
        let low = (y & 0x000f_000f_000f_000f) << 8;
        dst.copy_from_slice(&(high + low + 0x61 * ONES).to_le_bytes());
    }
}

impl ProjectPseudonymiser {
    pub fn project(&self) -> &str {
        &self.project
    }

    pub fn scheme(&self) -> PseudonymScheme {
        match self.keyed {
            Keyed::Hmac(_) => PseudonymScheme::HmacSha256V1,
            Keyed::Aes(_) => PseudonymScheme::Aes256V2,
        }
    }

    /// Writes the pseudonym of `pnr` into `out`.
    #[inline]
    pub fn write(&self, pnr: &str, out: &mut [u8; PSEUDONYM_LEN]) {
        letters(&self.block(pnr.as_bytes()), out);
    }

    /// The pseudonym of one identity number.
    pub fn pseudonym(&self, pnr: &str) -> String {
        let mut out = [0u8; PSEUDONYM_LEN];
        self.write(pnr, &mut out);
        String::from_utf8(out.to_vec()).expect("letters a-p are ASCII")
    }

    /// The 16 bytes behind the pseudonym of `pnr` (its text form is these
    /// bytes as letters).
    #[inline]
    fn block(&self, pnr: &[u8]) -> [u8; 16] {
        match &self.keyed {
            Keyed::Hmac(keyed) => {
                let mut mac = (**keyed).clone();
                mac.update(pnr);
                mac.finalize().into_bytes()[..16].try_into().expect("a digest of 32 bytes")
            }
            Keyed::Aes(cipher) => {
                let mut block = Block::<Aes256>::from(v2_block(pnr));
                cipher.encrypt_block(&mut block);
                block.0
            }
        }
    }

    /// Calls `emit(rows, bytes)` with the 16 pseudonym bytes of every run of
    /// equal consecutive values of a string column (Utf8, LargeUtf8 or
    /// Utf8View), in row order: a register sorted by person has its rows of
    /// one person computed once. A null row gets the bytes of an empty value
    /// (the caller keeps the null).
    fn each_run(&self, column: &dyn Array, emit: impl FnMut(Range<usize>, &[u8; 16])) -> Result<(), String> {
        match column.data_type() {
            DataType::Utf8 => self.runs_of(column.as_string::<i32>().iter(), emit),
            DataType::LargeUtf8 => self.runs_of(column.as_string::<i64>().iter(), emit),
            DataType::Utf8View => self.runs_of(column.as_string_view().iter(), emit),
            other => return Err(format!("the person column has type {other}, expected a string")),
        }
        Ok(())
    }

    fn runs_of<'a>(
        &self,
        values: impl Iterator<Item = Option<&'a str>>,
        mut emit: impl FnMut(Range<usize>, &[u8; 16]),
    ) {
        let cipher = match &self.keyed {
            Keyed::Aes(cipher) => cipher,
            Keyed::Hmac(_) => {
                // One HMAC per run of equal values.
                let (mut start, mut last, mut row) = (0, None::<&str>, 0);
                for v in values {
                    let v = v.unwrap_or_default();
                    if let Some(l) = last.filter(|l| !same_value(l.as_bytes(), v.as_bytes())) {
                        emit(start..row, &self.block(l.as_bytes()));
                        start = row;
                    }
                    last = Some(v);
                    row += 1;
                }
                if let Some(l) = last {
                    emit(start..row, &self.block(l.as_bytes()));
                }
                return;
            }
        };
        // `aes256-v2`: a run is equal consecutive values (the block is
        // injective, so equal values are equal blocks; the block is built
        // only when the value changes); up to LANES runs encrypted together.
        let mut blocks = [Block::<Aes256>::default(); LANES];
        let mut starts = [0usize; LANES + 1];
        let (mut filled, mut last, mut row): (usize, &[u8], usize) = (0, &[], 0);
        let mut flush = |blocks: &mut [Block<Aes256>], starts: &[usize]| {
            cipher.encrypt_blocks(blocks);
            for (i, block) in blocks.iter().enumerate() {
                emit(starts[i]..starts[i + 1], &block.0);
            }
        };
        for v in values {
            let v = v.unwrap_or_default().as_bytes();
            if filled == 0 || !same_value(v, last) {
                if filled == LANES {
                    starts[LANES] = row;
                    flush(&mut blocks, &starts);
                    filled = 0;
                }
                write_v2_block(v, &mut blocks[filled].0);
                starts[filled] = row;
                filled += 1;
                last = v;
            }
            row += 1;
        }
        starts[filled] = row;
        flush(&mut blocks[..filled], &starts[..=filled]);
    }

    /// Pseudonymises a string column (Utf8, LargeUtf8 or Utf8View); nulls
    /// stay null. Returns a Utf8 array: letters written straight into its
    /// buffer, 32 bytes per row (a null row keeps its 32 bytes, unused).
    pub fn pseudonymise(&self, column: &dyn Array) -> Result<ArrayRef, String> {
        let n = column.len();
        // Appended in row order (the runs come in order and cover every
        // row): the buffer is written once, not zeroed first.
        let mut out = Vec::with_capacity(n * PSEUDONYM_LEN);
        self.each_run(column, |rows, block| {
            let mut text = [0u8; PSEUDONYM_LEN];
            letters(block, &mut text);
            rows.for_each(|_| out.extend_from_slice(&text));
        })?;
        if out.len() != n * PSEUDONYM_LEN {
            return Err(format!("{} pseudonym bytes written for {n} rows", out.len()));
        }
        let offsets =
            OffsetBuffer::new(ScalarBuffer::from((0..=n).map(|i| (i * PSEUDONYM_LEN) as i32).collect::<Vec<_>>()));
        let array = StringArray::try_new(offsets, Buffer::from(out), column.logical_nulls())
            .expect("letters a-p are valid UTF-8 and offsets are monotone");
        Ok(Arc::new(array))
    }

    /// The 16 pseudonym bytes (`samkor_functions::pseudonym_bytes_udf`) of
    /// a string column of identity numbers, without writing the text. Nulls
    /// stay null.
    pub fn pseudonym_bytes(&self, column: &dyn Array) -> Result<FixedSizeBinaryArray, String> {
        let mut out = vec![0u8; column.len() * 16];
        self.each_run(column, |rows, block| {
            for row in rows {
                out[row * 16..row * 16 + 16].copy_from_slice(block);
            }
        })?;
        FixedSizeBinaryArray::try_new(16, Buffer::from(out), column.logical_nulls()).map_err(|e| e.to_string())
    }

    /// The record keys (`samkor_functions::record_key_udf`) of a string
    /// column of identity numbers: the same keys as of their pseudonyms,
    /// without writing the pseudonyms (see [`crate::counting`]). Nulls stay null.
    pub fn record_keys(&self, secret: &RecordKeySecret, column: &dyn Array) -> Result<Int64Array, String> {
        let mut keys = vec![0i64; column.len()];
        // The runs' bytes, hashed together (`record_keys_of_bytes`) a batch at a time.
        let (mut runs, mut bytes, mut hashed) = (Vec::with_capacity(LANES), Vec::with_capacity(LANES), [0i64; LANES]);
        let mut hash = |runs: &mut Vec<Range<usize>>, bytes: &mut Vec<[u8; 16]>| {
            let hashed = &mut hashed[..bytes.len()];
            secret.record_keys_of_bytes(bytes, hashed);
            for (rows, key) in runs.drain(..).zip(hashed.iter()) {
                match rows.len() {
                    1 => keys[rows.start] = *key,
                    _ => keys[rows].fill(*key),
                }
            }
            bytes.clear();
        };
        self.each_run(column, |rows, block| {
            runs.push(rows);
            bytes.push(*block);
            if bytes.len() == LANES {
                hash(&mut runs, &mut bytes);
            }
        })?;
        hash(&mut runs, &mut bytes);
        Ok(Int64Array::new(ScalarBuffer::from(keys), column.logical_nulls()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{StringArray, StringViewArray};

    fn key() -> FederationKey {
        FederationKey::parse("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f").expect("key")
    }

    #[test]
    fn stable_within_project_unlinkable_across() {
        let k = key();
        let a = k.for_project("P1");
        let b = k.for_project("P2");
        let p = a.pseudonym("191212121212");
        assert_eq!(p, k.for_project("P1").pseudonym("191212121212"));
        assert_ne!(p, b.pseudonym("191212121212"));
        assert_ne!(p, a.pseudonym("191212121213"));
        assert_eq!(p.len(), PSEUDONYM_LEN);
        assert!(p.bytes().all(|c| (b'a'..=b'p').contains(&c)), "{p}");
        // A different key gives different pseudonyms.
        let other = FederationKey::from_bytes([7; 32]).for_project("P1");
        assert_ne!(p, other.pseudonym("191212121212"));
        // Known answer, so that a change of scheme is noticed (it would relink every project).
        assert_eq!(p, a.pseudonym("191212121212"));
        assert_eq!(p.len(), 32);
    }

    #[test]
    fn known_answers_per_scheme() {
        let k = key();
        let v1 = k.for_project_with(PseudonymScheme::HmacSha256V1, "P1").pseudonym("191212121212");
        let v2 = k.for_project_with(PseudonymScheme::Aes256V2, "P1").pseudonym("191212121212");
        // Fixed values: a change of either scheme would relink every project.
        assert_eq!(v1, "abhamelknfmibmmenfogjpmhphfdibeb");
        assert_eq!(v2, "enhpmkpibfhnhmofhcpegpfanlfafnjm");
        assert_eq!(k.for_project("P1").pseudonym("191212121212"), v2, "aes256-v2 is the default");
        assert_eq!(PseudonymScheme::from_name(""), Some(PseudonymScheme::HmacSha256V1));
        for s in PseudonymScheme::ALL {
            assert_eq!(PseudonymScheme::from_name(s.name()), Some(s));
        }
        assert_eq!(PseudonymScheme::from_name("aes256"), None);
    }

    #[test]
    fn v2_blocks_are_injective_across_kinds() {
        let values = [
            "191212121212",
            "191212121213",
            "19121212-1212",
            "",
            "0",
            "00000000000",
            "000000000000",
            "abcdefghijklmn",
            "abcdefghijklmno",
            "abcdefghijklmnop",
            "1912121212120",
        ];
        // An identity number's block is the documented layout.
        let mut layout = [0u8; 16];
        layout[0] = 0x01;
        layout[1..9].copy_from_slice(&191212121212u64.to_be_bytes());
        layout[9..16].copy_from_slice(b"samkor\0");
        assert_eq!(v2_block(b"191212121212"), layout);
        let blocks: std::collections::HashSet<[u8; 16]> = values.iter().map(|v| v2_block(v.as_bytes())).collect();
        assert_eq!(blocks.len(), values.len());
        // A zero-padded short value and its padding are told apart by the length byte.
        assert_ne!(v2_block(b"ab"), v2_block(b"ab\0"));
        let a = key().for_project("P");
        assert_ne!(a.pseudonym("191212121212"), a.pseudonym("19121212-1212"));
    }

    #[test]
    fn batched_column_equals_one_by_one_under_both_schemes() {
        for scheme in PseudonymScheme::ALL {
            let a = key().for_project_with(scheme, "P");
            // 21 rows: two full batches of eight and a partial one, nulls in between.
            let values: Vec<Option<String>> = (0..21u64)
                .map(|i| {
                    (i % 5 != 3).then(|| {
                        if i % 7 == 6 {
                            format!("long-value-{i}-not-a-number")
                        } else {
                            format!("{:012}", 194001010000 + i)
                        }
                    })
                })
                .collect();
            let col = StringArray::from(values.clone());
            let out = a.pseudonymise(&col).expect("strings");
            let out = out.as_string::<i32>();
            assert_eq!(out.len(), values.len());
            for (i, v) in values.iter().enumerate() {
                match v {
                    Some(v) => assert_eq!(out.value(i), a.pseudonym(v), "{scheme} row {i}"),
                    None => assert!(out.is_null(i), "{scheme} row {i}"),
                }
            }
            let view = datafusion::arrow::array::StringViewArray::from(
                values.iter().map(|v| v.as_deref()).collect::<Vec<_>>(),
            );
            assert_eq!(a.pseudonymise(&view).expect("view").as_string::<i32>(), out);
        }
    }

    #[test]
    fn runs_of_equal_values_give_each_row_its_pseudonym_and_record_key() {
        let secret = RecordKeySecret([4; 16]);
        for scheme in PseudonymScheme::ALL {
            let a = key().for_project_with(scheme, "P");
            // 450 rows in runs of up to three equal values (more than LANES
            // runs, so runs meet the batch edges), nulls, empty and other values between.
            let values: Vec<Option<String>> = (0..450u64)
                .map(|i| match i % 23 {
                    4 | 5 => None,
                    7 => Some(format!("x{}", i / 2)),
                    11 => Some(String::new()),
                    // Twelve bytes that are not twelve digits, twice in a row.
                    13 | 14 => Some(format!("19400101x{:03}", i / 20)),
                    _ => Some(format!("{:012}", 194001010000 + (i / 3) * 7919)),
                })
                .collect();
            let pseudonyms = a.pseudonymise(&StringArray::from(values.clone())).expect("strings");
            for (i, v) in values.iter().enumerate() {
                match v {
                    Some(v) => assert_eq!(pseudonyms.as_string::<i32>().value(i), a.pseudonym(v), "{scheme} row {i}"),
                    None => assert!(pseudonyms.is_null(i), "{scheme} row {i}"),
                }
            }
            let view = StringViewArray::from(values.clone());
            let from_views = a.record_keys(&secret, &view).expect("string views");
            let col = StringArray::from(values.clone());
            let keys = a.record_keys(&secret, &col).expect("strings");
            assert_eq!(from_views, keys, "{scheme}: the same keys from string views");
            let bytes = a.pseudonym_bytes(&col).expect("strings");
            for (i, v) in values.iter().enumerate() {
                match v {
                    Some(v) => assert_eq!(letters_of(bytes.value(i)), a.pseudonym(v), "{scheme} row {i}"),
                    None => assert!(bytes.is_null(i), "{scheme} row {i}"),
                }
            }
            for (i, v) in values.iter().enumerate() {
                match v {
                    Some(v) => {
                        assert_eq!(keys.value(i), secret.record_key(a.pseudonym(v).as_bytes()), "{scheme} row {i}")
                    }
                    None => assert!(keys.is_null(i), "{scheme} row {i}"),
                }
            }
        }
    }

    fn letters_of(bytes: &[u8]) -> String {
        let mut out = [0u8; PSEUDONYM_LEN];
        letters(bytes.try_into().expect("16 bytes"), &mut out);
        String::from_utf8(out.to_vec()).expect("ASCII")
    }

    #[test]
    fn twelve_digits_reads_exactly_twelve_decimal_digits() {
        let reference = |v: &[u8]| {
            (v.len() == 12 && v.iter().all(u8::is_ascii_digit))
                .then(|| v.iter().fold(0u64, |n, &c| n * 10 + u64::from(c - b'0')))
        };
        let mut cases: Vec<Vec<u8>> =
            ["191212121212", "000000000000", "999999999999", "19121212121", "1912121212120", ""]
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect();
        // Every position holding each byte just outside and at the ends of '0'..='9'.
        for pos in 0..12 {
            for b in [b'/', b'0', b'9', b':', b'?', 0x00, 0x80, 0xb0, 0xff, b'a'] {
                let mut v = b"194001010000".to_vec();
                v[pos] = b;
                cases.push(v);
            }
        }
        for v in &cases {
            assert_eq!(twelve_digits(v), reference(v), "{v:?}");
        }
        for i in 0..10_000u64 {
            let v = format!("{:012}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 1_000_000_000_000);
            assert_eq!(twelve_digits(v.as_bytes()), reference(v.as_bytes()), "{v}");
        }
    }

    #[test]
    fn project_boundary_is_unambiguous() {
        let k = key();
        assert_ne!(k.for_project("P1").pseudonym("2191212121212"), k.for_project("P12").pseudonym("191212121212"));
    }

    #[test]
    fn arrays_keep_nulls() {
        let a = key().for_project("P");
        let col = StringArray::from(vec![Some("191212121212"), None]);
        let out = a.pseudonymise(&col).expect("strings");
        let out = out.as_string::<i32>();
        assert_eq!(out.value(0), a.pseudonym("191212121212"));
        assert!(out.is_null(1));
        let e = a.pseudonymise(&datafusion::arrow::array::Int32Array::from(vec![1])).unwrap_err();
        assert_eq!(e, "the person column has type Int32, expected a string");
    }

    #[test]
    fn malformed_keys_are_refused_with_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("federation.key");
        std::fs::write(&path, "abc\n").expect("write");
        let e = FederationKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("found 3 characters, expected 64"), "{e}");
        std::fs::write(&path, "zz".repeat(32)).expect("write");
        let e = FederationKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("not a hexadecimal digit"), "{e}");
        std::fs::write(&path, "00".repeat(32)).expect("write");
        let e = FederationKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("repeated byte"), "{e}");
        let e = FederationKey::load(&dir.path().join("missing.key")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read pseudonymisation key file "), "{e}");
        assert_eq!(format!("{:?}", key()), "FederationKey(..)");
    }
}
