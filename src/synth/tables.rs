//! Writing the tables: one function per table (or per chunk of persons of a big table), each
//! with its own random stream, streaming record batches of [`BATCH_ROWS`] rows into one
//! Snappy-compressed Parquet file.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use chrono::Datelike;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::SynthError;
use super::dist::{SynthRng, chance, int_in, normal, poisson, unif, weighted};
use super::model::{
    ALIVE, Base, CAUSES, FIRST_YEAR, FIX_CEMENTED, FIXATIONS, HIP_DX, HipOp, LAST_YEAR, N_HOSPITALS, Person, REGIONS,
    age_at, cond, date_of, day_in_year, end_day, hospital, start_day, year_start,
};
use super::schema::TableSpec;

/// Rows per record batch.
pub(crate) const BATCH_ROWS: usize = 65_536;

/// One Parquet file being written.
pub(crate) struct PartSink {
    path: PathBuf,
    table: &'static str,
    schema: SchemaRef,
    writer: ArrowWriter<File>,
    rows: u64,
}

impl std::fmt::Debug for PartSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartSink").field("path", &self.path).field("rows", &self.rows).finish()
    }
}

/// Rows per Parquet row group.
pub(crate) const ROW_GROUP_ROWS: usize = 128 * 1024;

impl PartSink {
    /// Creates `dir/part-NNNNN.parquet` for `spec`.
    pub(crate) fn create(dir: &Path, part: usize, spec: &TableSpec) -> Result<Self, SynthError> {
        let path = dir.join(format!("part-{part:05}.parquet"));
        let file = File::create(&path).map_err(|source| SynthError::CreateFile { path: path.clone(), source })?;
        // Row groups of 128 Ki rows, as a holder's export would have (the
        // writer's default is 1 Mi): a scan of one file can then use every
        // core, and row-group statistics can skip parts of it.
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let schema = spec.schema();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|source| SynthError::Parquet { path: path.clone(), source })?;
        Ok(PartSink { path, table: spec.name, schema, writer, rows: 0 })
    }

    fn write(&mut self, columns: Vec<ArrayRef>) -> Result<(), SynthError> {
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|source| SynthError::BatchSchema { table: self.table, source })?;
        self.rows += batch.num_rows() as u64;
        self.writer.write(&batch).map_err(|source| SynthError::Parquet { path: self.path.clone(), source })
    }

    /// Finishes the file; returns the number of rows written.
    pub(crate) fn close(self) -> Result<u64, SynthError> {
        let path = self.path;
        self.writer.close().map_err(|source| SynthError::Parquet { path, source })?;
        Ok(self.rows)
    }
}

fn arr<B: arrow::array::ArrayBuilder>(b: &mut B) -> ArrayRef {
    b.finish()
}

fn opt_date(d: i32) -> Option<i32> {
    if d == ALIVE { None } else { Some(d) }
}

// ---------------------------------------------------------------------------------------------
// hip.operations

/// Writes hip.operations (no randomness: the base holds the operations).
pub(crate) fn hip_operations(base: &Base, sink: &mut PartSink) -> Result<(), SynthError> {
    let mut pnr = StringBuilder::new();
    let mut op_id = Int64Builder::new();
    let mut date = Date32Builder::new();
    let mut hosp = StringBuilder::new();
    let mut region = StringBuilder::new();
    let mut side = StringBuilder::new();
    let mut dx = StringBuilder::new();
    let mut fix = StringBuilder::new();
    let mut asa = Int32Builder::new();
    let mut bmi = Float64Builder::new();
    let mut reop = BooleanBuilder::new();
    let mut reop_date = Date32Builder::new();
    let mut n = 0;
    for (i, op) in base.ops.iter().enumerate() {
        let h = hospital(usize::from(op.hospital));
        pnr.append_value(base.pnr(op.person as usize));
        op_id.append_value(i as i64 + 1);
        date.append_value(op.date);
        hosp.append_value(h.name);
        region.append_value(REGIONS[usize::from(h.region)].0);
        side.append_value(if op.side == 0 { "L" } else { "R" });
        dx.append_value(HIP_DX[usize::from(op.dx)]);
        fix.append_value(FIXATIONS[usize::from(op.fix)].0);
        asa.append_value(i32::from(op.asa));
        bmi.append_option(if op.bmi.is_nan() { None } else { Some(f64::from(op.bmi)) });
        reop.append_value(op.reop != ALIVE);
        reop_date.append_option(opt_date(op.reop));
        n += 1;
        if n == BATCH_ROWS || i + 1 == base.ops.len() {
            sink.write(vec![
                arr(&mut pnr),
                arr(&mut op_id),
                arr(&mut date),
                arr(&mut hosp),
                arr(&mut region),
                arr(&mut side),
                arr(&mut dx),
                arr(&mut fix),
                arr(&mut asa),
                arr(&mut bmi),
                arr(&mut reop),
                arr(&mut reop_date),
            ])?;
            n = 0;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// hip.prom

/// Writes hip.prom: ~85 % answer before the operation, ~80 % one year after (if alive).
pub(crate) fn hip_prom(base: &Base, r: &mut SynthRng, sink: &mut PartSink) -> Result<(), SynthError> {
    let mut pnr = StringBuilder::new();
    let mut op_id = Int64Builder::new();
    let mut survey = StringBuilder::new();
    let mut date = Date32Builder::new();
    let mut eq5d = Float64Builder::new();
    let mut pain = Int32Builder::new();
    let mut satisfaction = Int32Builder::new();
    let (start, end) = (start_day(), end_day());
    let round3 = |x: f64| (x.clamp(-0.594, 1.0) * 1000.0).round() / 1000.0;
    let vas = |x: f64| x.round().clamp(0.0, 100.0) as i32;
    let mut n = 0;
    for (i, op) in base.ops.iter().enumerate() {
        let p = &base.persons[op.person as usize];
        let latent = normal(r, 0.0, 1.0);
        let reop = op.reop != ALIVE;
        if chance(r, 0.85) {
            pnr.append_value(base.pnr(op.person as usize));
            op_id.append_value(i as i64 + 1);
            survey.append_value("preop");
            date.append_value((op.date - int_in(r, 1, 60)).max(start));
            eq5d.append_value(round3(0.40 + 0.30 * (0.6 * latent + 0.8 * normal(r, 0.0, 1.0))));
            pain.append_value(vas(normal(r, 62.0, 18.0)));
            satisfaction.append_null();
            n += 1;
        }
        let d1 = op.date + 365 + int_in(r, -30, 60);
        if chance(r, 0.80) && d1 <= end && d1 <= p.death {
            let penalty = if reop { 0.15 } else { 0.0 } + if op.asa >= 3 { 0.05 } else { 0.0 };
            pnr.append_value(base.pnr(op.person as usize));
            op_id.append_value(i as i64 + 1);
            survey.append_value("1y");
            date.append_value(d1);
            eq5d.append_value(round3(0.80 - penalty + 0.20 * (0.5 * latent + 0.866 * normal(r, 0.0, 1.0))));
            pain.append_value(vas(normal(r, 15.0 + if reop { 15.0 } else { 0.0 }, 15.0)));
            satisfaction.append_value(vas(normal(r, 85.0 - if reop { 20.0 } else { 0.0 }, 15.0)));
            n += 1;
        }
        if n >= BATCH_ROWS || (i + 1 == base.ops.len() && n > 0) {
            sink.write(vec![
                arr(&mut pnr),
                arr(&mut op_id),
                arr(&mut survey),
                arr(&mut date),
                arr(&mut eq5d),
                arr(&mut pain),
                arr(&mut satisfaction),
            ])?;
            n = 0;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// npr.inpatient

/// An ordinary (non-hip-replacement) reason for admission.
struct EpisodeDx {
    code: &'static str,
    /// Relative weight at age <= 40 and at age >= 75 (linear in between).
    young: f64,
    old: f64,
    /// 0 any, 1 men only, 2 women only.
    sex: u8,
    /// Condition flag that multiplies the weight by `cond_mult`.
    cond: u8,
    cond_mult: f64,
    /// Typical length of stay in days.
    los: f64,
    /// Procedures (KVÅ) with probabilities; the rest have none.
    procs: &'static [(&'static str, f64)],
}

#[allow(clippy::too_many_arguments)] // one row of a constant table
const fn ep(
    code: &'static str,
    young: f64,
    old: f64,
    sex: u8,
    cond: u8,
    cond_mult: f64,
    los: f64,
    procs: &'static [(&'static str, f64)],
) -> EpisodeDx {
    EpisodeDx { code, young, old, sex, cond, cond_mult, los, procs }
}

const EPISODE_DX: [EpisodeDx; 17] = [
    ep("I50.9", 0.3, 8.0, 0, cond::HEART_FAILURE, 5.0, 6.0, &[]),
    ep("I21.4", 0.8, 5.0, 0, cond::DIABETES, 1.8, 4.0, &[("FNG05", 0.5)]),
    ep("I63.9", 0.4, 5.0, 0, cond::ATRIAL_FIB, 2.5, 8.0, &[]),
    ep("J18.9", 2.5, 8.0, 0, cond::COPD, 2.5, 5.0, &[]),
    ep("S72.0", 0.2, 4.0, 0, 0, 1.0, 8.0, &[("NFJ59", 0.55), ("NFB12", 0.35)]),
    ep("S72.1", 0.1, 2.0, 0, 0, 1.0, 8.0, &[("NFJ69", 0.8)]),
    ep("I48.9", 0.8, 3.0, 0, cond::ATRIAL_FIB, 4.0, 2.0, &[("FPB00", 0.2)]),
    ep("J44.1", 0.2, 2.5, 0, cond::COPD, 10.0, 5.0, &[]),
    ep("N39.0", 1.0, 3.0, 0, 0, 1.0, 3.0, &[]),
    ep("K80.2", 3.0, 2.0, 0, 0, 1.0, 3.0, &[("JKA21", 0.7)]),
    ep("K35.8", 4.0, 0.5, 0, 0, 1.0, 2.0, &[("JEA01", 0.9)]),
    ep("M17.1", 0.4, 3.0, 0, 0, 1.0, 3.0, &[("NGB49", 0.95)]),
    ep("C18.9", 0.3, 1.5, 0, 0, 1.0, 7.0, &[("JFB33", 0.6)]),
    ep("F10.2", 2.0, 0.6, 1, 0, 1.0, 4.0, &[]),
    ep("E11.9", 0.3, 1.0, 0, cond::DIABETES, 8.0, 3.0, &[]),
    ep("R07.4", 3.0, 2.0, 0, 0, 1.0, 1.0, &[]),
    ep("F32.9", 1.5, 0.5, 0, cond::DEPRESSION, 6.0, 12.0, &[]),
];

/// Cumulative acute-hospital weights per region (ordinary admissions go to an acute hospital
/// of the home region).
fn acute_tables() -> Vec<Vec<f64>> {
    (0..REGIONS.len())
        .map(|reg| {
            super::dist::cumulative((0..N_HOSPITALS).map(|i| {
                let h = hospital(i);
                if h.acute && usize::from(h.region) == reg { 1.0 + h.hip_weight } else { 0.0 }
            }))
        })
        .collect()
}

/// One episode before it is written.
struct Episode {
    admit: i32,
    discharge: i32,
    hospital: u8,
    main_dx: &'static str,
    /// Conditions to list as secondary diagnoses.
    secondary: u8,
    procedure: Option<&'static str>,
}

fn secondary_for(r: &mut SynthRng, p: &Person, main_dx: &str) -> u8 {
    let mut s = 0;
    for (flag, code) in cond::CODES {
        if p.conds & flag != 0 && code != main_dx && chance(r, 0.6) {
            s |= flag;
        }
    }
    s
}

/// Persons per npr file.
pub(crate) const NPR_CHUNK: usize = 500_000;

/// Writes npr.inpatient for the persons in `range` (chunk `chunk`).
pub(crate) fn npr_inpatient(
    base: &Base,
    range: Range<usize>,
    chunk: usize,
    r: &mut SynthRng,
    sink: &mut PartSink,
) -> Result<(), SynthError> {
    let mut pnr = StringBuilder::new();
    let mut episode_id = Int64Builder::new();
    let mut admit = Date32Builder::new();
    let mut discharge = Date32Builder::new();
    let mut hosp = StringBuilder::new();
    let mut region = StringBuilder::new();
    let mut main_dx = StringBuilder::new();
    let mut secondary_dx = StringBuilder::new();
    let mut procedure = StringBuilder::new();
    let mut los = Int32Builder::new();
    let acute = acute_tables();
    let end = end_day();
    let mut next_id = chunk as i64 * 100_000_000 + 1;
    let mut op_cursor = base.ops_by_person.partition_point(|&i| (base.ops[i as usize].person as usize) < range.start);
    let mut miss_cursor = base.missing.partition_point(|m| (m.person as usize) < range.start);
    let mut eps: Vec<Episode> = Vec::new();
    let mut sec = String::new();
    let mut n = 0;
    for pi in range.clone() {
        let p = &base.persons[pi];
        let last = p.death.min(end);
        eps.clear();
        // Primary hip replacements in the hip register, and their reoperations.
        while op_cursor < base.ops_by_person.len()
            && base.ops[base.ops_by_person[op_cursor] as usize].person as usize == pi
        {
            let op: &HipOp = &base.ops[base.ops_by_person[op_cursor] as usize];
            op_cursor += 1;
            let dx = HIP_DX[usize::from(op.dx)];
            eps.push(Episode {
                admit: op.date - i32::from(op.admit_before),
                discharge: (op.date + i32::from(op.los)).min(last),
                hospital: op.hospital,
                main_dx: dx,
                secondary: secondary_for(r, p, dx),
                procedure: Some(FIXATIONS[usize::from(op.fix)].1),
            });
            if op.reop != ALIVE {
                let (code, proc_) = match weighted(r, &[0.5, 0.3, 0.2]) {
                    0 => ("T84.0", if op.fix == FIX_CEMENTED { "NFC49" } else { "NFC29" }),
                    1 => ("T84.5", "NFS19"),
                    _ => ("T84.8", "NFC99"),
                };
                eps.push(Episode {
                    admit: op.reop,
                    discharge: (op.reop + int_in(r, 2, 12)).min(last),
                    hospital: op.hospital,
                    main_dx: code,
                    secondary: secondary_for(r, p, code),
                    procedure: Some(proc_),
                });
            }
        }
        // Hip replacements the hip register never received.
        while miss_cursor < base.missing.len() && base.missing[miss_cursor].person as usize == pi {
            let m = base.missing[miss_cursor];
            miss_cursor += 1;
            let dx = HIP_DX[usize::from(m.dx)];
            eps.push(Episode {
                admit: m.date,
                discharge: (m.date + i32::from(m.los)).min(last),
                hospital: m.hospital,
                main_dx: dx,
                secondary: secondary_for(r, p, dx),
                procedure: Some(FIXATIONS[usize::from(m.fix)].1),
            });
        }
        // Ordinary admissions, more with age; births for women of fertile age.
        let birth_year = date_of(p.birth).year();
        for y in FIRST_YEAR..=LAST_YEAR {
            if year_start(y) > last {
                break;
            }
            let age = f64::from(y - birth_year);
            let rate = (0.09 * (0.035 * (age - 40.0)).exp()).min(1.5);
            let births = if p.sex == 1 && (18.0..45.0).contains(&age) { 0.07 } else { 0.0 };
            let k = poisson(r, rate + births);
            for _ in 0..k {
                let admit_day = day_in_year(r, y);
                if admit_day > last {
                    continue;
                }
                let hospital = super::dist::from_cumulative(r, &acute[usize::from(p.region)]) as u8;
                let (code, stay, proc_) = if chance(r, births / (rate + births)) {
                    if chance(r, 0.18) { ("O82", 3.0, Some("MCA10")) } else { ("O80", 2.0, None) }
                } else {
                    let t = ((age - 40.0) / 35.0).clamp(0.0, 1.0);
                    let mut w = [0.0; EPISODE_DX.len()];
                    for (i, e) in EPISODE_DX.iter().enumerate() {
                        let sex_ok = e.sex == 0 || e.sex == p.sex + 1;
                        let c = if e.cond != 0 && p.conds & e.cond != 0 { e.cond_mult } else { 1.0 };
                        w[i] = if sex_ok { (e.young + (e.old - e.young) * t) * c } else { 0.0 };
                    }
                    let e = &EPISODE_DX[weighted(r, &w)];
                    let mut proc_ = None;
                    let mut u = unif(r);
                    for (code, prob) in e.procs {
                        if u < *prob {
                            proc_ = Some(*code);
                            break;
                        }
                        u -= prob;
                    }
                    (e.code, e.los, proc_)
                };
                let days = (stay * normal(r, 0.0, 0.6).exp()).round().clamp(0.0, 90.0) as i32;
                eps.push(Episode {
                    admit: admit_day,
                    discharge: (admit_day + days).min(last),
                    hospital,
                    main_dx: code,
                    secondary: secondary_for(r, p, code),
                    procedure: proc_,
                });
            }
        }
        eps.sort_by_key(|e| (e.admit, e.discharge));
        for e in &eps {
            let h = hospital(usize::from(e.hospital));
            pnr.append_value(base.pnr(pi));
            episode_id.append_value(next_id);
            next_id += 1;
            admit.append_value(e.admit);
            discharge.append_value(e.discharge);
            hosp.append_value(h.name);
            region.append_value(REGIONS[usize::from(h.region)].0);
            main_dx.append_value(e.main_dx);
            if e.secondary == 0 {
                secondary_dx.append_null();
            } else {
                sec.clear();
                for (flag, code) in cond::CODES {
                    if e.secondary & flag != 0 {
                        if !sec.is_empty() {
                            sec.push(' ');
                        }
                        sec.push_str(code);
                    }
                }
                secondary_dx.append_value(&sec);
            }
            procedure.append_option(e.procedure);
            los.append_value(e.discharge - e.admit);
            n += 1;
        }
        if n >= BATCH_ROWS || (pi + 1 == range.end && n > 0) {
            sink.write(vec![
                arr(&mut pnr),
                arr(&mut episode_id),
                arr(&mut admit),
                arr(&mut discharge),
                arr(&mut hosp),
                arr(&mut region),
                arr(&mut main_dx),
                arr(&mut secondary_dx),
                arr(&mut procedure),
                arr(&mut los),
            ])?;
            n = 0;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// lmr.dispensations

/// ATC codes written by the drug register, with the typical amount (DDD) per dispensing.
const ATC: [(&str, f64); 40] = [
    ("C10AA01", 90.0),  // 0 simvastatin
    ("C10AA05", 90.0),  // 1 atorvastatin
    ("C07AB02", 90.0),  // 2 metoprolol
    ("C09AA05", 90.0),  // 3 ramipril
    ("C08CA01", 90.0),  // 4 amlodipine
    ("C03AA03", 90.0),  // 5 hydrochlorothiazide
    ("C09CA06", 90.0),  // 6 candesartan
    ("B01AC06", 100.0), // 7 acetylsalicylic acid (low dose)
    ("B01AF02", 90.0),  // 8 apixaban
    ("B01AA03", 100.0), // 9 warfarin
    ("A10BA02", 90.0),  // 10 metformin
    ("A10AE04", 60.0),  // 11 insulin glargine
    ("R03AC02", 50.0),  // 12 salbutamol
    ("R03BB04", 90.0),  // 13 tiotropium
    ("N06AB06", 90.0),  // 14 sertraline
    ("N06AB10", 90.0),  // 15 escitalopram
    ("N06AX11", 60.0),  // 16 mirtazapine
    ("L04AX03", 84.0),  // 17 methotrexate
    ("L04AB02", 56.0),  // 18 infliximab
    ("L04AB01", 56.0),  // 19 etanercept
    ("L04AB04", 56.0),  // 20 adalimumab
    ("H02AB06", 30.0),  // 21 prednisolone
    ("C03CA01", 90.0),  // 22 furosemide
    ("C07AB07", 90.0),  // 23 bisoprolol
    ("H03AA01", 100.0), // 24 levothyroxine
    ("G03AA07", 84.0),  // 25 levonorgestrel and ethinylestradiol
    ("J01CE02", 7.0),   // 26 phenoxymethylpenicillin
    ("J01CA04", 7.0),   // 27 amoxicillin
    ("J01MA02", 7.0),   // 28 ciprofloxacin
    ("J01XE01", 5.0),   // 29 nitrofurantoin
    ("N02BE01", 20.0),  // 30 paracetamol
    ("M01AE01", 15.0),  // 31 ibuprofen
    ("N02AA05", 5.0),   // 32 oxycodone
    ("B01AB05", 28.0),  // 33 enoxaparin
    ("N05CF01", 30.0),  // 34 zopiclone
    ("A02BC01", 30.0),  // 35 omeprazole
    ("R06AE07", 30.0),  // 36 cetirizine
    ("D07AC01", 10.0),  // 37 betamethasone (skin)
    ("N02CC01", 6.0),   // 38 sumatriptan
    ("S01AA01", 5.0),   // 39 chloramphenicol (eye)
];

/// Short-course drugs with relative weights (acute dispensations).
const ACUTE: [(u8, f64); 14] = [
    (26, 12.0),
    (27, 8.0),
    (28, 2.0),
    (29, 3.0),
    (30, 14.0),
    (31, 10.0),
    (34, 4.0),
    (35, 8.0),
    (36, 6.0),
    (37, 4.0),
    (38, 2.0),
    (39, 2.0),
    (21, 2.0),
    (12, 3.0),
];

/// Scales every course duration; calibrated so that the register holds ~8 dispensings per
/// person over 2010-2024 (the real register holds far more; this keeps the files small).
const COURSE_SCALE: f64 = 0.5;

/// Persons per lmr file (~2 M rows).
pub(crate) const LMR_CHUNK: usize = 250_000;

/// A dispensing before it is written.
#[derive(Clone, Copy)]
struct Disp {
    date: i32,
    atc: u8,
    ddd: f64,
}

/// Adds the dispensings of one treatment course of `atc` for `p`, starting at `from` (or, with
/// probability `prevalent`, already under way in 2010), ending after an exponential duration
/// (mean `years`) or at death.
fn course(r: &mut SynthRng, out: &mut Vec<Disp>, last: i32, atc: u8, from: i32, prevalent: f64, years: f64) {
    let start_window = start_day();
    let start = if chance(r, prevalent) {
        start_window + int_in(r, 0, 90)
    } else {
        int_in(r, from.max(start_window), end_day())
    };
    let stop = (start + (-(1.0 - unif(r)).ln() * years * COURSE_SCALE * 365.25) as i32).min(last);
    let pack = ATC[usize::from(atc)].1;
    let interval = pack as i32;
    let mut d = start;
    while d <= stop {
        let ddd = (pack * (0.9 + 0.2 * unif(r)) * 10.0).round() / 10.0;
        out.push(Disp { date: d, atc, ddd: ddd.max(0.1) });
        d += interval + int_in(r, -10, 25);
    }
}

/// Writes lmr.dispensations for the persons in `range`.
pub(crate) fn lmr_dispensations(
    base: &Base,
    range: Range<usize>,
    r: &mut SynthRng,
    sink: &mut PartSink,
) -> Result<(), SynthError> {
    let mut pnr = StringBuilder::new();
    let mut date = Date32Builder::new();
    let mut atc = StringBuilder::new();
    let mut ddd = Float64Builder::new();
    let mut region = StringBuilder::new();
    let acute_w: Vec<f64> = ACUTE.iter().map(|a| a.1).collect();
    let end = end_day();
    let start = start_day();
    let mut op_cursor = base.ops_by_person.partition_point(|&i| (base.ops[i as usize].person as usize) < range.start);
    let mut miss_cursor = base.missing.partition_point(|m| (m.person as usize) < range.start);
    let mut out: Vec<Disp> = Vec::new();
    let mut n = 0;
    for pi in range.clone() {
        let p = &base.persons[pi];
        let last = p.death.min(end);
        let age_mid = age_at(p, (start + end) / 2);
        out.clear();
        let c = p.conds;
        let adult_from = p.birth + 18 * 365;
        // Chronic treatment of chronic conditions.
        if c & cond::HYPERTENSION != 0 && chance(r, 0.75) {
            let first = [3u8, 4, 5, 6, 2][weighted(r, &[3.0, 3.0, 1.5, 2.0, 1.5])];
            course(r, &mut out, last, first, adult_from, 0.6, 6.0);
            if chance(r, 0.35) {
                let second = [4u8, 5, 6][weighted(r, &[1.0, 1.0, 1.0])];
                course(r, &mut out, last, second, adult_from, 0.4, 5.0);
            }
        }
        if c & cond::HYPERLIPIDAEMIA != 0 && chance(r, 0.6) {
            let statin = if chance(r, 0.6) { 0 } else { 1 };
            course(r, &mut out, last, statin, adult_from, 0.5, 6.0);
        }
        if c & cond::ATRIAL_FIB != 0 && chance(r, 0.8) {
            let anticoagulant = if chance(r, 0.6) { 8 } else { 9 };
            course(r, &mut out, last, anticoagulant, adult_from, 0.5, 6.0);
            course(r, &mut out, last, 2, adult_from, 0.5, 5.0);
        } else if age_mid > 65.0 && c & cond::HYPERTENSION != 0 && chance(r, 0.25) {
            course(r, &mut out, last, 7, adult_from, 0.6, 6.0);
        }
        if c & cond::DIABETES != 0 {
            course(r, &mut out, last, 10, adult_from, 0.6, 5.0);
            if chance(r, 0.25) {
                course(r, &mut out, last, 11, adult_from, 0.5, 8.0);
            }
        }
        if c & cond::COPD != 0 {
            course(r, &mut out, last, 13, adult_from, 0.6, 6.0);
            course(r, &mut out, last, 12, adult_from, 0.6, 4.0);
        }
        if c & cond::DEPRESSION != 0 && chance(r, 0.7) {
            let drug = [14u8, 15, 16][weighted(r, &[4.0, 4.0, 1.5])];
            course(r, &mut out, last, drug, p.birth + 15 * 365, 0.3, 2.0);
        }
        if c & cond::RHEUMATOID != 0 {
            course(r, &mut out, last, 17, adult_from, 0.6, 8.0);
            if chance(r, 0.4) {
                let bio = [18u8, 19, 20][weighted(r, &[1.2, 1.0, 1.0])];
                course(r, &mut out, last, bio, adult_from, 0.3, 5.0);
            }
            if chance(r, 0.4) {
                course(r, &mut out, last, 21, adult_from, 0.3, 1.0);
            }
        }
        if c & cond::HEART_FAILURE != 0 {
            course(r, &mut out, last, 22, adult_from, 0.5, 6.0);
            course(r, &mut out, last, 23, adult_from, 0.5, 6.0);
        }
        if chance(r, if p.sex == 1 { 0.07 } else { 0.015 }) && age_mid > 30.0 {
            course(r, &mut out, last, 24, adult_from, 0.6, 6.0);
        }
        if p.sex == 1 && (16.0..50.0).contains(&age_mid) && chance(r, 0.25) {
            course(r, &mut out, last, 25, p.birth + 16 * 365, 0.3, 3.0);
        }
        // Short courses, more with age.
        let birth_year = date_of(p.birth).year();
        for y in FIRST_YEAR..=LAST_YEAR {
            if year_start(y) > last {
                break;
            }
            let age = f64::from(y - birth_year);
            for _ in 0..poisson(r, 0.08 + 0.002 * age) {
                let d = day_in_year(r, y);
                if d <= last {
                    let a = ACUTE[weighted(r, &acute_w)].0;
                    let pack = ATC[usize::from(a)].1;
                    let amount = (pack * (0.7 + 0.6 * unif(r)) * 10.0).round() / 10.0;
                    out.push(Disp { date: d, atc: a, ddd: amount.max(0.1) });
                }
            }
        }
        // After a hip replacement: opioid, thromboprophylaxis and paracetamol at discharge.
        let post_op = |r: &mut SynthRng, out: &mut Vec<Disp>, day: i32| {
            if day <= last {
                out.push(Disp { date: day, atc: 32, ddd: (5.0 + 5.0 * unif(r)).round() });
                out.push(Disp { date: day, atc: 33, ddd: 28.0 });
                if chance(r, 0.7) {
                    out.push(Disp { date: day, atc: 30, ddd: 16.7 });
                }
            }
        };
        while op_cursor < base.ops_by_person.len()
            && base.ops[base.ops_by_person[op_cursor] as usize].person as usize == pi
        {
            let op = &base.ops[base.ops_by_person[op_cursor] as usize];
            op_cursor += 1;
            post_op(r, &mut out, op.date + i32::from(op.los));
        }
        while miss_cursor < base.missing.len() && base.missing[miss_cursor].person as usize == pi {
            let m = base.missing[miss_cursor];
            miss_cursor += 1;
            post_op(r, &mut out, m.date + i32::from(m.los));
        }
        out.sort_by_key(|d| (d.date, d.atc));
        let reg = REGIONS[usize::from(p.region)].0;
        for d in &out {
            pnr.append_value(base.pnr(pi));
            date.append_value(d.date);
            atc.append_value(ATC[usize::from(d.atc)].0);
            ddd.append_value(d.ddd);
            region.append_value(reg);
            n += 1;
        }
        if n >= BATCH_ROWS || (pi + 1 == range.end && n > 0) {
            sink.write(vec![arr(&mut pnr), arr(&mut date), arr(&mut atc), arr(&mut ddd), arr(&mut region)])?;
            n = 0;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// dors.deaths

/// Writes dors.deaths: every death in the window.
pub(crate) fn dors_deaths(base: &Base, sink: &mut PartSink) -> Result<(), SynthError> {
    let mut pnr = StringBuilder::new();
    let mut date = Date32Builder::new();
    let mut cause = StringBuilder::new();
    let mut region = StringBuilder::new();
    let end = end_day();
    let mut n = 0;
    let total = base.persons.len();
    for (pi, p) in base.persons.iter().enumerate() {
        if p.death <= end {
            pnr.append_value(base.pnr(pi));
            date.append_value(p.death);
            cause.append_value(CAUSES[usize::from(p.cause)].0);
            region.append_value(REGIONS[usize::from(p.region)].0);
            n += 1;
        }
        if n >= BATCH_ROWS || (pi + 1 == total && n > 0) {
            sink.write(vec![arr(&mut pnr), arr(&mut date), arr(&mut cause), arr(&mut region)])?;
            n = 0;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// pop.persons

/// Persons per pop file.
pub(crate) const POP_CHUNK: usize = 2_000_000;

const COUNTRY: [&str; 4] = ["Sweden", "Nordic", "Europe", "Outside Europe"];
const EDUCATION: [&str; 3] = ["primary", "secondary", "post_secondary"];

/// Writes pop.persons for the persons in `range`. Income is log-normal by education, age and
/// sex, with a heavy (Pareto) tail for a few persons so that dominance in sums shows up.
pub(crate) fn pop_persons(
    base: &Base,
    range: Range<usize>,
    r: &mut SynthRng,
    sink: &mut PartSink,
) -> Result<(), SynthError> {
    let mut pnr = StringBuilder::new();
    let mut birth_date = Date32Builder::new();
    let mut birth_year = Int32Builder::new();
    let mut sex = StringBuilder::new();
    let mut region = StringBuilder::new();
    let mut cob = StringBuilder::new();
    let mut edu = StringBuilder::new();
    let mut income = Int64Builder::new();
    let ref_day = super::model::days(2020, 12, 31);
    let mut n = 0;
    for pi in range.clone() {
        let p = &base.persons[pi];
        let age = age_at(p, p.death.min(ref_day));
        let median = [230_000.0, 290_000.0, 380_000.0, 250_000.0][usize::from(p.edu)];
        let age_f = match age as i32 {
            ..18 => 0.08,
            18..25 => 0.5,
            25..66 => 1.0,
            _ => 0.65,
        };
        let sex_f = if p.sex == 1 { 0.88 } else { 1.0 };
        let cob_f = if p.cob == 3 { 0.8 } else { 1.0 };
        let mut inc = median * age_f * sex_f * cob_f * normal(r, 0.0, 0.45).exp();
        if chance(r, 0.002) {
            inc *= (1.0 / (1.0 - unif(r))).powf(1.0 / 1.1).min(200.0) * 3.0;
        }
        pnr.append_value(base.pnr(pi));
        birth_date.append_value(p.birth);
        birth_year.append_value(date_of(p.birth).year());
        sex.append_value(if p.sex == 0 { "M" } else { "F" });
        region.append_value(REGIONS[usize::from(p.region)].0);
        cob.append_value(COUNTRY[usize::from(p.cob)]);
        edu.append_option(EDUCATION.get(usize::from(p.edu)).copied());
        income.append_value(((inc / 100.0).round() as i64) * 100);
        n += 1;
        if n >= BATCH_ROWS || pi + 1 == range.end {
            sink.write(vec![
                arr(&mut pnr),
                arr(&mut birth_date),
                arr(&mut birth_year),
                arr(&mut sex),
                arr(&mut region),
                arr(&mut cob),
                arr(&mut edu),
                arr(&mut income),
            ])?;
            n = 0;
        }
    }
    Ok(())
}
