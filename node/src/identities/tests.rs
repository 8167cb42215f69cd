use std::path::Path as FsPath;

use datafusion::arrow::array::{Int32Array, StringArray};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;

use super::*;

/// Writes `values` as the `pnr` column (beside a number) of a Parquet file
/// of row groups of 1 000 rows; returns it as the store lists it.
async fn write(store: &Arc<dyn ObjectStore>, file: &FsPath, values: &[Option<String>]) -> ObjectMeta {
    let schema =
        Arc::new(Schema::new(vec![Field::new("n", DataType::Int32, false), Field::new("pnr", DataType::Utf8, true)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int32Array::from_iter_values(0..values.len() as i32)),
            Arc::new(StringArray::from(values.to_vec())),
        ],
    )
    .expect("batch");
    let props = WriterProperties::builder().set_max_row_group_row_count(Some(1000)).build();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(file).expect("file"), schema, Some(props)).expect("w");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
    store.head(&Path::from_filesystem_path(file).expect("path")).await.expect("listed")
}

fn identity_numbers(n: usize, salt: u64) -> Vec<Option<String>> {
    (0..n).map(|i| (i % 11 != 5).then(|| format!("{:012}", 194001010000 + salt + i as u64))).collect()
}

fn rows(rows: &[i64]) -> Int64Array {
    Int64Array::from(rows.to_vec())
}

fn texts(array: &ArrayRef) -> Vec<Option<String>> {
    array.as_string_view().iter().map(|v| v.map(str::to_owned)).collect()
}

fn store() -> Arc<dyn ObjectStore> {
    Arc::new(LocalFileSystem::new())
}

#[tokio::test]
async fn a_files_identity_numbers_are_read_once_and_taken_by_row_number() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store();
    let values = identity_numbers(2_500, 0);
    let meta = write(&store, &dir.path().join("a.parquet"), &values).await;
    let cache = IdentityCache::new(1);
    let held = cache.columns(&store, std::slice::from_ref(&meta), "pnr").await.expect("read").expect("held");
    assert_eq!(held[0].len(), 2_500);
    assert!(cache.bytes() >= 2_500 * 16, "{}", cache.bytes());
    // Rows of three row groups, in any order, nulls included.
    let wanted = [2_499i64, 0, 5, 1_000, 1_999, 17, 17];
    let got = held[0].gather(&rows(&wanted)).expect("gather");
    assert_eq!(texts(&got), wanted.iter().map(|&r| values[r as usize].clone()).collect::<Vec<_>>());
    // Held: a second scan takes the same column, without reading the file.
    let again = cache.held_now(std::slice::from_ref(&meta), "pnr").expect("fresh").expect("held");
    assert!(Arc::ptr_eq(&held[0], &again[0]));
    // Another column of the same file is another entry (not text: not held).
    assert!(cache.columns(&store, std::slice::from_ref(&meta), "n").await.expect("read").is_none());
    assert!(cache.held_now(std::slice::from_ref(&meta), "pnr").expect("fresh").is_some());
    // Opted out: two persons, one of them in two rows asked for; a null is nobody's.
    let opted: Arc<OptOutSet> = Arc::new([194001010017u64, 194001012499].into_iter().collect());
    let kept = held[0].kept(&rows(&wanted), &opted).expect("kept");
    assert_eq!(kept.iter().map(Option::unwrap).collect::<Vec<_>>(), [false, true, true, true, true, false, false]);
    let other: Arc<OptOutSet> = Arc::new([194001010000u64].into_iter().collect());
    let kept = held[0].kept(&rows(&wanted), &other).expect("another list");
    assert_eq!(kept.iter().map(Option::unwrap).collect::<Vec<_>>(), [true, false, true, true, true, true, true]);
    let beyond = held[0].gather(&rows(&[2_500])).expect_err("beyond the file");
    assert!(beyond.to_string().contains("changed while it was read"), "{beyond}");
}

#[tokio::test]
async fn a_file_rewritten_is_read_again() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store();
    let file = dir.path().join("a.parquet");
    let before = write(&store, &file, &identity_numbers(300, 0)).await;
    let cache = IdentityCache::new(1);
    cache.columns(&store, std::slice::from_ref(&before), "pnr").await.expect("read").expect("held");
    // The same rows, other persons: the file's size or time differs.
    let values = identity_numbers(310, 7_000);
    let after = write(&store, &file, &values).await;
    assert!(
        cache.held_now(std::slice::from_ref(&after), "pnr").is_none(),
        "the old entry is not taken for the new file"
    );
    let held = cache.columns(&store, std::slice::from_ref(&after), "pnr").await.expect("read").expect("held");
    assert_eq!(texts(&held[0].gather(&rows(&[0, 309])).expect("gather")), vec![values[0].clone(), values[309].clone()]);
    assert_eq!(cache.bytes(), 310 * 24 + 2 * 310usize.div_ceil(8), "the old file's entry was replaced");
}

#[tokio::test]
async fn identity_numbers_longer_than_a_view_holds_are_decoded_in_each_scan() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store();
    let mut values = identity_numbers(100, 0);
    values[40] = Some("19400101-0040".to_owned());
    let meta = write(&store, &dir.path().join("a.parquet"), &values).await;
    let cache = IdentityCache::new(1);
    assert!(cache.columns(&store, std::slice::from_ref(&meta), "pnr").await.expect("read").is_none());
    assert_eq!(cache.bytes(), 0);
    // Remembered: not read again while the file is the same.
    assert!(matches!(cache.held_now(std::slice::from_ref(&meta), "pnr"), Some(None)));
}

#[tokio::test]
async fn the_budget_keeps_the_files_used_last() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store();
    // 1 MiB holds two files of 20 000 rows (480 000 bytes each, record keys included), not three.
    let mut metas = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        metas.push(
            write(&store, &dir.path().join(format!("{name}.parquet")), &identity_numbers(20_000, i as u64)).await,
        );
    }
    let cache = IdentityCache::new(1);
    for meta in &metas[..2] {
        cache.columns(&store, std::slice::from_ref(meta), "pnr").await.expect("read").expect("held");
    }
    // `a` used again, then `c` read: `b` leaves.
    assert!(cache.held_now(&metas[..1], "pnr").is_some());
    cache.columns(&store, &metas[2..], "pnr").await.expect("read").expect("held");
    assert!(cache.held_now(&metas[..1], "pnr").is_some() && cache.held_now(&metas[2..], "pnr").is_some());
    assert!(cache.held_now(&metas[1..2], "pnr").is_none());
    assert!(cache.bytes() <= 1 << 20, "{}", cache.bytes());
    // A scan of all three does not fit: it decodes the column instead.
    assert!(cache.columns(&store, &metas, "pnr").await.expect("read").is_none());
    assert!(cache.bytes() <= 1 << 20, "{}", cache.bytes());
    // Off.
    assert!(!IdentityCache::new(0).enabled());
}

#[tokio::test]
async fn record_keys_are_computed_once_a_row_and_domain() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store();
    let meta = write(&store, &dir.path().join("a.parquet"), &identity_numbers(2_500, 0)).await;
    let cache = IdentityCache::new(1);
    let held = cache.columns(&store, std::slice::from_ref(&meta), "pnr").await.expect("read").expect("held");
    let key = crate::pseudonym::FederationKey::from_bytes([5; 32]);
    let keyer = |project| {
        crate::counting::IdentityFunctions::new(key.for_project(project), samkor_functions::RecordKeySecret([3; 16]))
            .keyer
    };
    let (p, q) = (keyer("P"), keyer("Q"));
    // Rows of three row groups, a null (row 5) and a row asked twice.
    let wanted = rows(&[2_499, 0, 5, 1_000, 17, 17]);
    let keys = held[0].record_keys(&wanted, &p).expect("keys");
    let computed = p.keys(held[0].gather(&wanted).expect("gather").as_ref()).expect("computed");
    assert_eq!(keys.as_ref(), computed.as_ref(), "the keys of the identity numbers, nulls null");
    assert_eq!(keys.null_count(), 1);
    // Kept for the rows asked for, and only for them.
    let memo = held[0].memo(&p);
    let kept = |r: usize| memo.keys[r].load(Ordering::Relaxed);
    assert!(kept(2_499) != 0 && kept(1_000) != 0 && kept(0) != 0);
    assert_eq!((kept(1), kept(5)), (0, 0), "a row not asked for, a null");
    // Asked again with more rows: the same keys.
    let more = rows(&[17, 1, 2_499]);
    let again = held[0].record_keys(&more, &p).expect("keys");
    assert_eq!(again.as_ref(), p.keys(held[0].gather(&more).expect("gather").as_ref()).expect("computed").as_ref());
    // Another domain: its own keys, and the memo is of that domain now.
    let other = held[0].record_keys(&rows(&[2_499]), &q).expect("keys");
    assert_ne!(other.as_ref(), keys.slice(0, 1).as_ref());
    assert_eq!(held[0].memo(&p).keys[2_499].load(Ordering::Relaxed), 0, "replaced, then fresh for P");
    let beyond = held[0].record_keys(&rows(&[2_500]), &p).expect_err("beyond the file");
    assert!(beyond.to_string().contains("changed while it was read"), "{beyond}");
}
