//! The registers, their tables and columns: the single source for the Parquet schemas and
//! the `node.toml` catalogue entries.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// Column type as written in `node.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColType {
    Utf8,
    Int32,
    Int64,
    Float64,
    Boolean,
    Date32,
}

impl ColType {
    /// Name used in `node.toml`.
    pub(crate) fn toml_name(self) -> &'static str {
        match self {
            ColType::Utf8 => "utf8",
            ColType::Int32 => "int32",
            ColType::Int64 => "int64",
            ColType::Float64 => "float64",
            ColType::Boolean => "boolean",
            ColType::Date32 => "date32",
        }
    }

    fn arrow(self) -> DataType {
        match self {
            ColType::Utf8 => DataType::Utf8,
            ColType::Int32 => DataType::Int32,
            ColType::Int64 => DataType::Int64,
            ColType::Float64 => DataType::Float64,
            ColType::Boolean => DataType::Boolean,
            ColType::Date32 => DataType::Date32,
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ColumnSpec {
    pub(crate) name: &'static str,
    pub(crate) ty: ColType,
    pub(crate) description: &'static str,
    pub(crate) unit: Option<&'static str>,
    pub(crate) code_system: Option<&'static str>,
    pub(crate) identifying: bool,
}

const fn col(name: &'static str, ty: ColType, description: &'static str) -> ColumnSpec {
    ColumnSpec { name, ty, description, unit: None, code_system: None, identifying: false }
}

impl ColumnSpec {
    const fn unit(mut self, unit: &'static str) -> Self {
        self.unit = Some(unit);
        self
    }
    const fn codes(mut self, system: &'static str) -> Self {
        self.code_system = Some(system);
        self
    }
    const fn identifying(mut self) -> Self {
        self.identifying = true;
        self
    }
}

/// One table of a register.
#[derive(Debug)]
pub(crate) struct TableSpec {
    pub(crate) name: &'static str,
    pub(crate) description: &'static str,
    pub(crate) columns: &'static [ColumnSpec],
    /// No identity number in more than one row (`one_row_per_person` in the node config).
    pub(crate) one_row_per_person: bool,
}

impl TableSpec {
    /// The Arrow schema; every column nullable.
    pub(crate) fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(self.columns.iter().map(|c| Field::new(c.name, c.ty.arrow(), true)).collect::<Vec<_>>()))
    }
}

/// One register (one node).
#[derive(Debug)]
pub(crate) struct RegisterSpec {
    pub(crate) name: &'static str,
    pub(crate) holder: &'static str,
    pub(crate) description: &'static str,
    pub(crate) port: u16,
    pub(crate) tables: &'static [TableSpec],
    /// Tables the holder opens for direct access by care providers: (table, reporting-unit column).
    pub(crate) direct_access: &'static [(&'static str, &'static str)],
}

use ColType::{Boolean, Date32, Float64, Int32, Int64, Utf8};

const PNR: ColumnSpec =
    col("pnr", Utf8, "Personal identity number; leaves the node only as the project pseudonym `person`").identifying();

pub(crate) const HIP_OPERATIONS: TableSpec = TableSpec {
    name: "operations",
    description: "One row per primary hip replacement",
    columns: &[
        PNR,
        col("op_id", Int64, "Operation identifier, unique within the register"),
        col("op_date", Date32, "Date of operation"),
        col("hospital", Utf8, "Operating hospital (care unit)"),
        col("region", Utf8, "Region of the operating hospital"),
        col("side", Utf8, "Operated side: L or R"),
        col("diagnosis", Utf8, "Main diagnosis").codes("ICD-10-SE"),
        col("fixation", Utf8, "Fixation of the prosthesis: cemented, uncemented, hybrid or reverse_hybrid"),
        col("asa", Int32, "ASA physical status class at operation, 1 (healthy) to 4 (severe disease)").codes("ASA"),
        col("bmi", Float64, "Body mass index at operation; null when not recorded").unit("kg/m2"),
        col("reoperation", Boolean, "Reoperated on the same hip within 2 years of the operation"),
        col("reop_date", Date32, "Date of the first reoperation; null when none"),
    ],
    one_row_per_person: false,
};

pub(crate) const HIP_PROM: TableSpec = TableSpec {
    name: "prom",
    description: "Patient-reported outcomes: one row per survey answered, before and one year after the operation",
    columns: &[
        PNR,
        col("op_id", Int64, "Operation the survey belongs to (hip.operations.op_id)"),
        col("survey", Utf8, "Survey: preop (before operation) or 1y (one year after)"),
        col("survey_date", Date32, "Date the survey was answered"),
        col("eq5d_index", Float64, "EQ-5D-3L index (UK tariff), -0.594 to 1 (full health)").unit("index"),
        col("pain_vas", Int32, "Hip pain on a visual analogue scale, 0 (none) to 100 (worst)").unit("mm"),
        col("satisfaction", Int32, "Satisfaction with the result, 0 to 100; null before the operation").unit("mm"),
    ],
    one_row_per_person: false,
};

pub(crate) const NPR_INPATIENT: TableSpec = TableSpec {
    name: "inpatient",
    description: "One row per inpatient care episode",
    columns: &[
        PNR,
        col("episode_id", Int64, "Episode identifier, unique within the register"),
        col("admit_date", Date32, "Date of admission"),
        col("discharge_date", Date32, "Date of discharge (or of death in hospital); not before admission"),
        col("hospital", Utf8, "Hospital (care unit)"),
        col("region", Utf8, "Region of the hospital"),
        col("main_dx", Utf8, "Main diagnosis").codes("ICD-10-SE"),
        col("secondary_dx", Utf8, "Secondary diagnoses, space-separated; null when none").codes("ICD-10-SE"),
        col("procedure", Utf8, "Main surgical procedure; null when none").codes("KVÅ"),
        col("length_of_stay", Int32, "Discharge date minus admission date").unit("days"),
    ],
    one_row_per_person: false,
};

pub(crate) const LMR_DISPENSATIONS: TableSpec = TableSpec {
    name: "dispensations",
    description: "One row per prescription item dispensed at a pharmacy",
    columns: &[
        PNR,
        col("disp_date", Date32, "Date of dispensing"),
        col("atc", Utf8, "Substance dispensed").codes("ATC"),
        col("ddd", Float64, "Amount dispensed in defined daily doses; always > 0").unit("DDD"),
        col("region", Utf8, "Region of residence of the patient"),
    ],
    one_row_per_person: false,
};

pub(crate) const DORS_DEATHS: TableSpec = TableSpec {
    name: "deaths",
    description: "One row per death of a person registered in Sweden",
    columns: &[
        PNR,
        col("death_date", Date32, "Date of death"),
        col("underlying_cause", Utf8, "Underlying cause of death").codes("ICD-10-SE"),
        col("region", Utf8, "Region of residence at death"),
    ],
    one_row_per_person: true,
};

pub(crate) const POP_PERSONS: TableSpec = TableSpec {
    name: "persons",
    description: "One row per person registered in Sweden at some time 2010-2024",
    columns: &[
        PNR,
        col("birth_date", Date32, "Date of birth").identifying(),
        col("birth_year", Int32, "Year of birth"),
        col("sex", Utf8, "Legal sex: M or F (agrees with the identity number)"),
        col("region", Utf8, "Region of residence"),
        col("country_of_birth", Utf8, "Country of birth group: Sweden, Nordic, Europe or Outside Europe"),
        col("education", Utf8, "Highest education: primary, secondary or post_secondary; null when unknown"),
        col("income", Int64, "Disposable income, latest year registered").unit("SEK/year"),
    ],
    one_row_per_person: true,
};

/// All registers, in output order.
pub(crate) const REGISTER_SPECS: [RegisterSpec; 5] = [
    RegisterSpec {
        name: "hip",
        holder: "Svenska Höftprotesregistret (Region Västra Götaland)",
        description: "Swedish Hip Arthroplasty Register: primary hip replacements, reoperations and patient-reported outcomes",
        port: 47101,
        tables: &[HIP_OPERATIONS, HIP_PROM],
        direct_access: &[("operations", "hospital")],
    },
    RegisterSpec {
        name: "npr",
        holder: "Socialstyrelsen (National Board of Health and Welfare)",
        description: "National Patient Register: inpatient care episodes with diagnoses and procedures",
        port: 47102,
        tables: &[NPR_INPATIENT],
        direct_access: &[("inpatient", "hospital")],
    },
    RegisterSpec {
        name: "lmr",
        holder: "Socialstyrelsen (National Board of Health and Welfare)",
        description: "Prescribed Drug Register: prescriptions dispensed at Swedish pharmacies, by substance",
        port: 47103,
        tables: &[LMR_DISPENSATIONS],
        direct_access: &[],
    },
    RegisterSpec {
        name: "dors",
        holder: "Socialstyrelsen (National Board of Health and Welfare)",
        description: "Cause of Death Register: date and underlying cause of every death",
        port: 47104,
        tables: &[DORS_DEATHS],
        direct_access: &[],
    },
    RegisterSpec {
        name: "pop",
        holder: "Statistiska centralbyrån (Statistics Sweden)",
        description: "Population register: birth, sex, residence, country of birth, education and income",
        port: 47105,
        tables: &[POP_PERSONS],
        direct_access: &[],
    },
];
