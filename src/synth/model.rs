//! The person base: who exists, where they live, what they have, when they die, and which
//! hip replacements they get. Everything that more than one register must agree on is drawn
//! here, once, in one sequential pass with one random stream; the registers are then written
//! in parallel from this read-only base.

use std::collections::HashSet;

use chrono::{Datelike, NaiveDate};

use super::dist::{SynthRng, chance, cumulative, from_cumulative, index, int_in, normal, stream_rng, unif, weighted};
use super::luhn;

// ---------------------------------------------------------------------------------------------
// Calendar

/// Days from 1970-01-01 (Arrow `Date32`) for a calendar date known to be valid.
pub(crate) fn days(y: i32, m: u32, d: u32) -> i32 {
    let date = NaiveDate::from_ymd_opt(y, m, d).unwrap_or(NaiveDate::MIN);
    (date - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or(NaiveDate::MIN)).num_days() as i32
}

/// The calendar date of a `Date32` day number.
pub(crate) fn date_of(day: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(day + 719_163).unwrap_or(NaiveDate::MIN)
}

/// First and last year of the observation window.
pub(crate) const FIRST_YEAR: i32 = 2010;
pub(crate) const LAST_YEAR: i32 = 2024;
/// First and last birth year.
const FIRST_BIRTH_YEAR: i32 = 1920;
const LAST_BIRTH_YEAR: i32 = 2005;

/// First day of the window (2010-01-01).
pub(crate) fn start_day() -> i32 {
    days(FIRST_YEAR, 1, 1)
}
/// Last day of the window (2024-12-31).
pub(crate) fn end_day() -> i32 {
    days(LAST_YEAR, 12, 31)
}
/// First day of `year`.
pub(crate) fn year_start(year: i32) -> i32 {
    days(year, 1, 1)
}
/// Uniform day within `year`.
pub(crate) fn day_in_year(r: &mut SynthRng, year: i32) -> i32 {
    int_in(r, year_start(year), year_start(year + 1) - 1)
}
/// Age in whole-ish years at `day` (fractional, good enough for hazards).
pub(crate) fn age_at(p: &Person, day: i32) -> f64 {
    f64::from(day - p.birth) / 365.25
}

/// "No death" sentinel: later than any date we write.
pub(crate) const ALIVE: i32 = i32::MAX;

// ---------------------------------------------------------------------------------------------
// Geography and care units

/// Sweden's 21 regions and their populations in thousands (2023, rounded).
pub(crate) const REGIONS: [(&str, f64); 21] = [
    ("Stockholm", 2450.0),
    ("Uppsala", 400.0),
    ("Sörmland", 300.0),
    ("Östergötland", 470.0),
    ("Jönköping", 370.0),
    ("Kronoberg", 205.0),
    ("Kalmar", 247.0),
    ("Gotland", 61.0),
    ("Blekinge", 157.0),
    ("Skåne", 1420.0),
    ("Halland", 340.0),
    ("Västra Götaland", 1760.0),
    ("Värmland", 283.0),
    ("Örebro", 307.0),
    ("Västmanland", 280.0),
    ("Dalarna", 288.0),
    ("Gävleborg", 287.0),
    ("Västernorrland", 244.0),
    ("Jämtland Härjedalen", 132.0),
    ("Västerbotten", 275.0),
    ("Norrbotten", 250.0),
];

/// A hospital: name, region index, relative hip-replacement volume within its region,
/// whether it takes acute (emergency) admissions, and whether it is privately run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hospital {
    pub(crate) name: &'static str,
    pub(crate) region: u8,
    pub(crate) hip_weight: f64,
    pub(crate) acute: bool,
    pub(crate) private: bool,
}

const fn h(name: &'static str, region: u8, hip_weight: f64, acute: bool, private: bool) -> Hospital {
    Hospital { name, region, hip_weight, acute, private }
}

/// 53 hospitals. Volumes are very uneven; several are tiny (a handful of hips a year at 1 M
/// persons) and some are private elective clinics that also take patients from other regions.
pub(crate) const HOSPITALS: [Hospital; 53] = [
    h("Karolinska Huddinge", 0, 3.0, true, false),
    h("Danderyd", 0, 4.0, true, false),
    h("Södersjukhuset", 0, 3.0, true, false),
    h("Capio S:t Göran", 0, 5.0, true, true),
    h("Ortopediska Huset", 0, 4.0, false, true),
    h("Sophiahemmet", 0, 2.0, false, true),
    h("Södertälje", 0, 1.2, true, false),
    h("Aleris Sabbatsberg", 0, 0.08, false, true),
    h("Akademiska", 1, 2.0, true, false),
    h("Enköping", 1, 1.5, true, false),
    h("Mälarsjukhuset", 2, 1.2, true, false),
    h("Linköping", 3, 1.0, true, false),
    h("Vrinnevi", 3, 1.2, true, false),
    h("Motala", 3, 2.0, true, false),
    h("Ryhov", 4, 1.0, true, false),
    h("Värnamo", 4, 1.0, true, false),
    h("Växjö", 5, 1.2, true, false),
    h("Kalmar", 6, 1.0, true, false),
    h("Oskarshamn", 6, 1.2, true, false),
    h("Visby", 7, 0.5, true, false),
    h("Karlskrona", 8, 0.9, true, false),
    h("Skånes universitetssjukhus", 9, 2.5, true, false),
    h("Trelleborg", 9, 4.0, true, false),
    h("Hässleholm", 9, 4.0, true, false),
    h("Helsingborg", 9, 1.5, true, false),
    h("Halmstad", 10, 1.0, true, false),
    h("Varberg", 10, 1.2, true, false),
    h("Capio Movement", 10, 0.8, false, true),
    h("Sahlgrenska", 11, 3.0, true, false),
    h("Alingsås", 11, 1.2, true, false),
    h("Lidköping", 11, 1.5, true, false),
    h("Uddevalla", 11, 1.5, true, false),
    h("Borås", 11, 1.5, true, false),
    h("Carlanderska", 11, 0.15, false, true),
    h("Art Clinic Göteborg", 11, 0.05, false, true),
    h("Karlstad", 12, 1.5, true, false),
    h("Arvika", 12, 0.05, true, false),
    h("Lindesberg", 13, 1.5, true, false),
    h("Universitetssjukhuset Örebro", 13, 0.6, true, false),
    h("Köping", 14, 1.5, false, false),
    h("Västerås", 14, 0.3, true, false),
    h("Falun", 15, 1.5, true, false),
    h("Gävle", 16, 1.0, true, false),
    h("Hudiksvall", 16, 1.0, true, false),
    h("Sundsvall", 17, 1.0, true, false),
    h("Örnsköldsvik", 17, 0.6, true, false),
    h("Östersund", 18, 0.9, true, false),
    h("Umeå", 19, 0.8, true, false),
    h("Skellefteå", 19, 0.6, true, false),
    h("Lycksele", 19, 0.05, true, false),
    h("Sunderby", 20, 0.6, true, false),
    h("Gällivare", 20, 0.5, true, false),
    h("Kiruna", 20, 0.04, true, false),
];

/// Number of hospitals.
pub(crate) const N_HOSPITALS: usize = HOSPITALS.len();

/// Hospital by index in `0..N_HOSPITALS`.
pub(crate) fn hospital(i: usize) -> &'static Hospital {
    &HOSPITALS[i]
}

// ---------------------------------------------------------------------------------------------
// Codes

/// Chronic conditions carried by a person (bit flags), used by several registers.
pub(crate) mod cond {
    pub(crate) const HYPERTENSION: u8 = 1;
    pub(crate) const DIABETES: u8 = 2;
    pub(crate) const ATRIAL_FIB: u8 = 4;
    pub(crate) const COPD: u8 = 8;
    pub(crate) const RHEUMATOID: u8 = 16;
    pub(crate) const DEPRESSION: u8 = 32;
    pub(crate) const HYPERLIPIDAEMIA: u8 = 64;
    pub(crate) const HEART_FAILURE: u8 = 128;
    /// (flag, ICD-10 code written as a secondary diagnosis)
    pub(crate) const CODES: [(u8, &str); 8] = [
        (HYPERTENSION, "I10"),
        (DIABETES, "E11.9"),
        (ATRIAL_FIB, "I48.9"),
        (COPD, "J44.9"),
        (RHEUMATOID, "M06.9"),
        (DEPRESSION, "F32.9"),
        (HYPERLIPIDAEMIA, "E78.0"),
        (HEART_FAILURE, "I50.9"),
    ];
}

/// Main diagnoses for a primary hip replacement.
pub(crate) const HIP_DX: [&str; 9] = ["M16.1", "M16.0", "M16.9", "S72.0", "M87.0", "M16.3", "M16.5", "M05.9", "M06.9"];
const HIP_DX_WEIGHTS: [f64; 9] = [0.80, 0.03, 0.03, 0.05, 0.03, 0.02, 0.02, 0.005, 0.015];
/// Index of S72.0 in [`HIP_DX`].
pub(crate) const DX_FRACTURE: u8 = 3;

/// Fixation of the prosthesis, with the KVÅ code of the primary total hip replacement.
pub(crate) const FIXATIONS: [(&str, &str); 4] =
    [("cemented", "NFB49"), ("uncemented", "NFB29"), ("hybrid", "NFB39"), ("reverse_hybrid", "NFB59")];
pub(crate) const FIX_CEMENTED: u8 = 0;
pub(crate) const FIX_UNCEMENTED: u8 = 1;

/// Underlying causes of death: (ICD-10, weight below 50, weight from 80, sex: 0 any 1 M 2 F).
pub(crate) const CAUSES: [(&str, f64, f64, u8); 21] = [
    ("I25.1", 2.0, 12.0, 0),
    ("I21.9", 2.0, 6.0, 0),
    ("I50.9", 0.3, 6.0, 0),
    ("I63.9", 0.5, 7.0, 0),
    ("C34.9", 2.0, 5.0, 0),
    ("C18.9", 1.5, 3.0, 0),
    ("C61.9", 0.2, 5.0, 1),
    ("C50.9", 3.0, 3.0, 2),
    ("C25.9", 1.0, 2.0, 0),
    ("J44.9", 0.2, 3.0, 0),
    ("J18.9", 0.3, 4.0, 0),
    ("F03.9", 0.0, 10.0, 0),
    ("G30.9", 0.0, 3.0, 0),
    ("E11.9", 0.3, 2.0, 0),
    ("W19.9", 0.5, 2.0, 0),
    ("X70.9", 6.0, 0.2, 0),
    ("V89.2", 4.0, 0.2, 0),
    ("X42.9", 5.0, 0.1, 0),
    ("R99.9", 2.0, 2.0, 0),
    // Causes used for deaths within 90 days of a hip replacement.
    ("I26.9", 0.0, 0.0, 0),
    ("T81.4", 0.0, 0.0, 0),
];
const CAUSE_PE: u8 = 19;
const CAUSE_POSTOP_INFECTION: u8 = 20;

// ---------------------------------------------------------------------------------------------
// The base

/// One person, compact (20 bytes). The identity number is kept separately.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Person {
    /// Birth date (days since 1970-01-01).
    pub(crate) birth: i32,
    /// Death date, or [`ALIVE`].
    pub(crate) death: i32,
    /// Region index into [`REGIONS`].
    pub(crate) region: u8,
    /// 0 = male, 1 = female.
    pub(crate) sex: u8,
    /// 0 Sweden, 1 Nordic, 2 Europe, 3 Outside Europe.
    pub(crate) cob: u8,
    /// 0 primary, 1 secondary, 2 post-secondary, 3 unknown.
    pub(crate) edu: u8,
    /// Chronic conditions ([`cond`] flags).
    pub(crate) conds: u8,
    /// Underlying cause of death (index into [`CAUSES`]) if dead.
    pub(crate) cause: u8,
}

/// A primary hip replacement (a row of hip.operations).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HipOp {
    pub(crate) person: u32,
    pub(crate) date: i32,
    /// Reoperation date, or [`ALIVE`] for none.
    pub(crate) reop: i32,
    /// Body mass index; NaN when not recorded.
    pub(crate) bmi: f32,
    pub(crate) hospital: u8,
    /// 0 = left, 1 = right.
    pub(crate) side: u8,
    pub(crate) dx: u8,
    pub(crate) fix: u8,
    pub(crate) asa: u8,
    /// Length of stay in days of the patient-register episode.
    pub(crate) los: u8,
    /// 0 or 1: admitted the day before the operation.
    pub(crate) admit_before: u8,
}

/// A hip replacement in the patient register that the hip register never received.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MissingHip {
    pub(crate) person: u32,
    pub(crate) date: i32,
    pub(crate) hospital: u8,
    pub(crate) fix: u8,
    pub(crate) dx: u8,
    pub(crate) los: u8,
}

/// Everything shared by the register writers.
#[derive(Debug)]
pub(crate) struct Base {
    pub(crate) persons: Vec<Person>,
    /// All identity numbers, 12 ASCII digits each, concatenated (person i at 12*i).
    pnrs: String,
    /// Hip operations sorted by (date, person); op_id = index + 1.
    pub(crate) ops: Vec<HipOp>,
    /// Indices into `ops` sorted by (person, date).
    pub(crate) ops_by_person: Vec<u32>,
    /// Patient-register-only hip replacements, sorted by (person, date).
    pub(crate) missing: Vec<MissingHip>,
    /// Opt-out lists per register (person indices, ascending), in register order (hip, npr, lmr, dors, pop).
    pub(crate) optouts: [Vec<u32>; 5],
}

impl Base {
    /// The identity number of person `i`.
    pub(crate) fn pnr(&self, i: usize) -> &str {
        &self.pnrs[12 * i..12 * i + 12]
    }
}

/// Stream number of the base's random generator (registers use 1..=5).
const BASE_STREAM: u64 = 0;

/// Gompertz-like annual mortality hazard at `age`.
fn mortality(age: f64, sex: u8, conds: u8) -> f64 {
    let base = (-10.6 + 0.094 * age).exp().max(0.0003);
    let sex_mult = if sex == 0 { 1.25 } else { 0.8 };
    let mut m = 1.0;
    if conds & cond::DIABETES != 0 {
        m += 0.3;
    }
    if conds & cond::COPD != 0 {
        m += 0.6;
    }
    if conds & cond::HEART_FAILURE != 0 {
        m += 1.0;
    }
    if conds & cond::ATRIAL_FIB != 0 {
        m += 0.2;
    }
    base * sex_mult * m
}

/// Annual probability of a first primary hip replacement at `age`.
fn hip_incidence(age: f64) -> f64 {
    match age as i32 {
        ..40 => 0.00003,
        40..50 => 0.0004,
        50..60 => 0.0016,
        60..70 => 0.0040,
        70..80 => 0.0060,
        80..90 => 0.0045,
        _ => 0.0015,
    }
}

/// Relative size of the birth cohort `year` (births, plus immigration at working ages).
fn cohort_weight(year: i32) -> f64 {
    let births = match year {
        ..1925 => 1.10,
        1925..1935 => 0.90,
        1935..1940 => 0.95,
        1940..1950 => 1.25,
        1950..1960 => 1.05,
        1960..1965 => 1.10,
        1965..1970 => 1.15,
        1970..1980 => 1.00,
        1980..1987 => 0.95,
        1987..1994 => 1.15,
        _ => 0.90,
    };
    let age = f64::from(FIRST_YEAR - year);
    // Survival from birth to 2010 under the Gompertz hazard (sexes pooled).
    let b = (-10.4f64).exp();
    let survival = (-(b / 0.094) * ((0.094 * age).exp() - 1.0)).exp();
    let immigration = if (20.0..50.0).contains(&age) { 1.15 } else { 1.0 };
    births * survival * immigration
}

/// Draws the chronic conditions of a person of `age` (at mid-window) and `sex`.
fn draw_conditions(r: &mut SynthRng, age: f64, sex: u8) -> u8 {
    let ramp = |from: f64, span: f64, max: f64| ((age - from) / span).clamp(0.0, 1.0) * max;
    let mut c = 0;
    let female = sex == 1;
    let mut set = |flag: u8, p: f64, r: &mut SynthRng| {
        if chance(r, p) {
            c |= flag;
        }
    };
    set(cond::HYPERTENSION, ramp(30.0, 50.0, 0.55), r);
    set(cond::DIABETES, ramp(30.0, 50.0, 0.16), r);
    set(cond::ATRIAL_FIB, ramp(55.0, 35.0, 0.14), r);
    set(cond::COPD, ramp(40.0, 45.0, 0.07), r);
    set(cond::RHEUMATOID, if age >= 20.0 { if female { 0.011 } else { 0.005 } } else { 0.0 }, r);
    set(cond::DEPRESSION, if age >= 15.0 { if female { 0.10 } else { 0.06 } } else { 0.01 }, r);
    set(cond::HYPERLIPIDAEMIA, ramp(45.0, 35.0, 0.38), r);
    set(cond::HEART_FAILURE, ramp(60.0, 30.0, 0.10), r);
    c
}

/// Chooses a hospital for a hip operation of a resident of `region` (cumulative tables).
fn hip_hospital_tables() -> Vec<Vec<f64>> {
    (0..REGIONS.len())
        .map(|reg| {
            cumulative((0..N_HOSPITALS).map(|i| {
                let hosp = hospital(i);
                let local = usize::from(hosp.region) == reg;
                hosp.hip_weight
                    * if local {
                        1.0
                    } else if hosp.private {
                        0.03
                    } else {
                        0.004
                    }
            }))
        })
        .collect()
}

/// Share of cemented fixation for a patient of `age` operated in `year` at a hospital with
/// preference `bias`.
fn cemented_share(year: i32, age: f64, bias: f64) -> f64 {
    (0.72 - 0.012 * f64::from(year - FIRST_YEAR) + 0.012 * (age - 70.0) + bias).clamp(0.05, 0.97)
}

fn draw_fixation(r: &mut SynthRng, p_cemented: f64) -> u8 {
    if chance(r, p_cemented) { FIX_CEMENTED } else { [1u8, 2, 3][weighted(r, &[0.55, 0.15, 0.30])] }
}

/// The patient-register length of stay after a primary hip replacement.
fn hip_los(r: &mut SynthRng, year: i32, asa: u8) -> u8 {
    let mean = (4.5 - 0.15 * f64::from(year - FIRST_YEAR)).max(1.8) + 0.6 * f64::from(asa - 1);
    (mean * normal(r, 0.0, 0.35).exp()).round().clamp(1.0, 30.0) as u8
}

/// Builds the person base for `persons` persons.
pub(crate) fn build(persons: u64, seed: u64) -> Base {
    let n = persons as usize;
    let mut r = stream_rng(seed, BASE_STREAM, 0);
    let end = end_day();

    // Per-hospital practice: preference for cemented fixation (private clinics less).
    let fix_bias: Vec<f64> =
        (0..N_HOSPITALS).map(|i| normal(&mut r, 0.0, 0.10) - if hospital(i).private { 0.15 } else { 0.0 }).collect();
    let hip_tables = hip_hospital_tables();

    let birth_years: Vec<i32> = (FIRST_BIRTH_YEAR..=LAST_BIRTH_YEAR).collect();
    let birth_cum = cumulative(birth_years.iter().map(|y| cohort_weight(*y)));
    let region_cum = cumulative(REGIONS.iter().map(|(_, pop)| *pop));

    let mut persons_v = Vec::with_capacity(n);
    let mut pnrs = String::with_capacity(12 * n);
    let mut used: HashSet<u64> = HashSet::with_capacity(n);
    let mut ops: Vec<HipOp> = Vec::new();

    for pi in 0..n {
        let year = birth_years[from_cumulative(&mut r, &birth_cum)];
        let birth = day_in_year(&mut r, year);
        let sex = u8::from(chance(&mut r, 0.5));
        // Serial NNN, unique per birth date, last digit odd for men and even for women.
        let serial = loop {
            let head = index(&mut r, 100) as u16;
            let last = 2 * index(&mut r, 5) as u16 + u16::from(sex == 0);
            let s = head * 10 + last;
            if s != 0 && used.insert(((birth as i64 as u64) << 10) | u64::from(s)) {
                break s;
            }
        };
        push_pnr(&mut pnrs, birth, serial);

        let region = from_cumulative(&mut r, &region_cum) as u8;
        let cob = weighted(&mut r, &[0.80, 0.04, 0.07, 0.09]) as u8;
        let old = year < 1945;
        let edu = if chance(&mut r, if cob == 0 { 0.01 } else { 0.08 }) {
            3
        } else if old {
            weighted(&mut r, &[0.45, 0.35, 0.20]) as u8
        } else {
            weighted(&mut r, &[0.14, 0.45, 0.41]) as u8
        };
        let mut p = Person { birth, death: ALIVE, region, sex, cob, edu, conds: 0, cause: 0 };
        p.conds = draw_conditions(&mut r, age_at(&p, days(2017, 7, 1)), sex);

        // Baseline death.
        for y in FIRST_YEAR..=LAST_YEAR {
            let age = f64::from(y - year);
            let hz = mortality(age, sex, p.conds);
            if chance(&mut r, 1.0 - (-hz).exp()) {
                p.death = day_in_year(&mut r, y).max(birth + 1);
                break;
            }
        }

        // Hip replacements: a first one by annual incidence, perhaps a second on the other side.
        let first_op = ops.len();
        let ra = if p.conds & cond::RHEUMATOID != 0 { 3.0 } else { 1.0 };
        let fem = if sex == 1 { 1.2 } else { 1.0 };
        for y in FIRST_YEAR..=LAST_YEAR {
            let age = f64::from(y - year);
            if chance(&mut r, hip_incidence(age) * ra * fem) {
                let d = day_in_year(&mut r, y);
                if d < p.death {
                    let side = index(&mut r, 2) as u8;
                    ops.push(draw_op(&mut r, &p, pi as u32, d, side, &hip_tables, &fix_bias));
                    if chance(&mut r, 0.18) {
                        let d2 = d + int_in(&mut r, 120, 3000);
                        if d2 <= end && d2 < p.death {
                            let op2 = draw_op(&mut r, &p, pi as u32, d2, 1 - side, &hip_tables, &fix_bias);
                            ops.push(op2);
                        }
                    }
                }
                break;
            }
        }

        // Excess death in the 90 days after a hip replacement (high ASA, old, fracture).
        let mut postop_death = false;
        for op in &ops[first_op..] {
            if op.date >= p.death {
                continue;
            }
            let age = age_at(&p, op.date);
            let base = [0.0002, 0.001, 0.006, 0.035][usize::from(op.asa - 1)];
            let age_mult = if age >= 85.0 {
                2.0
            } else if age >= 75.0 {
                1.3
            } else {
                1.0
            };
            let dx_mult = if op.dx == DX_FRACTURE { 3.0 } else { 1.0 };
            if chance(&mut r, base * age_mult * dx_mult) {
                let d = op.date + 1 + (89.0 * unif(&mut r).powf(1.5)) as i32;
                if d < p.death {
                    p.death = d;
                    postop_death = true;
                }
            }
        }
        // Nothing after death: drop later operations, and reoperations after death.
        let mut k = first_op;
        for j in first_op..ops.len() {
            let mut op = ops[j];
            if op.date <= p.death {
                if op.reop > p.death {
                    op.reop = ALIVE;
                }
                ops[k] = op;
                k += 1;
            }
        }
        ops.truncate(k);

        if p.death != ALIVE {
            p.cause = if postop_death {
                if chance(&mut r, 0.3) {
                    CAUSE_PE
                } else if chance(&mut r, 0.2) {
                    CAUSE_POSTOP_INFECTION
                } else {
                    draw_cause(&mut r, &p)
                }
            } else {
                draw_cause(&mut r, &p)
            };
        }
        persons_v.push(p);
    }

    ops.sort_by_key(|o| (o.date, o.person, o.side));
    let mut ops_by_person: Vec<u32> = (0..ops.len() as u32).collect();
    ops_by_person.sort_by_key(|&i| (ops[i as usize].person, ops[i as usize].date));

    let missing = draw_missing(&mut r, &persons_v, &ops, &fix_bias);
    let optouts = draw_optouts(&mut r, n, &ops);

    Base { persons: persons_v, pnrs, ops, ops_by_person, missing, optouts }
}

/// Writes the 12-digit identity number for `birth` and `serial` to `out`.
fn push_pnr(out: &mut String, birth: i32, serial: u16) {
    let d = date_of(birth);
    let s = format!("{:04}{:02}{:02}{:03}", d.year(), d.month(), d.day(), serial);
    let c = luhn::check_digit(&s[2..11]);
    out.push_str(&s);
    out.push(char::from(b'0' + c));
}

fn draw_op(
    r: &mut SynthRng,
    p: &Person,
    person: u32,
    date: i32,
    side: u8,
    hip_tables: &[Vec<f64>],
    fix_bias: &[f64],
) -> HipOp {
    let age = age_at(p, date);
    let year = date_of(date).year();
    let hosp = from_cumulative(r, &hip_tables[usize::from(p.region)]);
    let dx = if p.conds & cond::RHEUMATOID != 0 && chance(r, 0.7) {
        if chance(r, 0.3) { 7 } else { 8 }
    } else {
        let mut w = HIP_DX_WEIGHTS;
        if age >= 80.0 {
            w[usize::from(DX_FRACTURE)] *= 3.0;
        }
        weighted(r, &w) as u8
    };
    let fix = draw_fixation(r, cemented_share(year, age, fix_bias[hosp]));
    let comorbid = [cond::HEART_FAILURE, cond::COPD, cond::DIABETES, cond::ATRIAL_FIB]
        .iter()
        .filter(|f| p.conds & **f != 0)
        .count() as f64;
    let z = (age - 70.0) * 0.04 + 0.35 * comorbid + normal(r, 0.0, 1.0);
    let asa = if z < -1.2 {
        1
    } else if z < 0.4 {
        2
    } else if z < 1.8 {
        3
    } else {
        4
    };
    let bmi =
        if chance(r, 0.03) { f32::NAN } else { (normal(r, 27.5, 4.5).clamp(15.0, 55.0) * 10.0).round() as f32 / 10.0 };
    let mut p_reop = 0.03;
    if fix == FIX_UNCEMENTED {
        p_reop *= 1.4;
    }
    if asa >= 3 {
        p_reop *= 1.3;
    }
    if dx == DX_FRACTURE {
        p_reop *= 1.5;
    }
    if bmi > 35.0 {
        p_reop *= 1.4;
    }
    let reop = if chance(r, p_reop) {
        let d = date + 1 + (729.0 * unif(r).powi(2)) as i32;
        if d <= end_day() { d } else { ALIVE }
    } else {
        ALIVE
    };
    HipOp {
        person,
        date,
        reop,
        bmi,
        hospital: hosp as u8,
        side,
        dx,
        fix,
        asa,
        los: hip_los(r, year, asa),
        admit_before: u8::from(chance(r, 0.3)),
    }
}

fn draw_cause(r: &mut SynthRng, p: &Person) -> u8 {
    let age = age_at(p, p.death.min(end_day()));
    let t = ((age - 50.0) / 30.0).clamp(0.0, 1.0);
    let mut w = [0.0; CAUSES.len()];
    for (i, (_, young, old, sex)) in CAUSES.iter().enumerate() {
        let sex_ok = *sex == 0 || *sex == p.sex + 1;
        w[i] = if sex_ok { young + (old - young) * t } else { 0.0 };
    }
    let boost = |w: &mut [f64], code: &str, f: f64| {
        if let Some(i) = CAUSES.iter().position(|c| c.0 == code) {
            w[i] *= f;
        }
    };
    if p.conds & cond::HEART_FAILURE != 0 {
        boost(&mut w, "I50.9", 4.0);
    }
    if p.conds & cond::COPD != 0 {
        boost(&mut w, "J44.9", 6.0);
    }
    if p.conds & cond::DIABETES != 0 {
        boost(&mut w, "E11.9", 4.0);
    }
    if p.conds & cond::ATRIAL_FIB != 0 {
        boost(&mut w, "I63.9", 2.0);
    }
    weighted(r, &w) as u8
}

/// Draws, per hospital, a coverage in [0.88, 0.985] and the patient-register-only hip
/// replacements that bring the hospital's share of episodes found in the hip register to it.
fn draw_missing(r: &mut SynthRng, persons: &[Person], ops: &[HipOp], fix_bias: &[f64]) -> Vec<MissingHip> {
    let mut per_hosp = vec![0u32; N_HOSPITALS];
    for op in ops {
        per_hosp[usize::from(op.hospital)] += 1;
    }
    let (start, end) = (start_day(), end_day());
    let mut missing = Vec::new();
    for (hosp, &n_reg) in per_hosp.iter().enumerate() {
        let coverage = 0.88 + 0.105 * unif(r).powf(0.8);
        let expected = f64::from(n_reg) * (1.0 - coverage) / coverage;
        let k = expected.floor() as u32 + u32::from(chance(r, expected.fract()));
        let home = hospital(hosp).region;
        for _ in 0..k {
            let date = int_in(r, start, end - 5);
            let local = chance(r, 0.85);
            // Rejection sampling for a plausible patient; give up after many tries.
            let mut chosen = None;
            for _ in 0..10_000 {
                let pi = index(r, persons.len());
                let p = &persons[pi];
                let age = age_at(p, date);
                if (45.0..95.0).contains(&age) && p.death > date + 5 && (!local || p.region == home) {
                    chosen = Some(pi);
                    break;
                }
            }
            let Some(pi) = chosen else { continue };
            let p = &persons[pi];
            let age = age_at(p, date);
            let year = date_of(date).year();
            let fix = draw_fixation(r, cemented_share(year, age, fix_bias[hosp]));
            let dx = [0u8, DX_FRACTURE, 2][weighted(r, &[0.85, 0.08, 0.07])];
            let los = hip_los(r, year, 2).min(((p.death.min(end) - date).max(0)) as u8);
            missing.push(MissingHip { person: pi as u32, date, hospital: hosp as u8, fix, dx, los });
        }
    }
    missing.sort_by_key(|m| (m.person, m.date, m.hospital));
    missing
}

/// Opt-outs: 0.3 % of persons from the hip register, 0.05 % from each of the others; a person
/// who opts out of one register often opts out of others too. At least one hip patient opts
/// out of hip and npr, so the opt-out path is always exercised.
fn draw_optouts(r: &mut SynthRng, n: usize, ops: &[HipOp]) -> [Vec<u32>; 5] {
    let mut lists: [Vec<u32>; 5] = Default::default();
    for pi in 0..n as u32 {
        let hip = chance(r, 0.003);
        if hip {
            lists[0].push(pi);
        }
        for (reg, list) in lists.iter_mut().enumerate().skip(1) {
            let p = if hip && reg <= 2 { 0.15 } else { 0.0005 };
            if chance(r, p) {
                list.push(pi);
            }
        }
    }
    if !ops.is_empty() {
        let pi = ops[index(r, ops.len())].person;
        for list in lists.iter_mut().take(2) {
            if let Err(pos) = list.binary_search(&pi) {
                list.insert(pos, pi);
            }
        }
    }
    lists
}
