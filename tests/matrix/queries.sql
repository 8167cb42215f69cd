-- Correctness matrix: each case runs through the federation (coordinator and
-- nodes) and through one pooled DataFusion session over the same files; the
-- runner tests/integration/matrix.rs compares the answers.
--
-- Format
--   -- case: <name>            starts a case (unique name; letters, digits, _)
--   -- ordered                 (optional, right after the header) the query has a
--                              total ORDER BY: rows must match in order; otherwise
--                              rows are compared as sorted multisets
--   -- known-failure: <reason> (optional, right after the header) the federation is
--                              known to get it wrong: run and reported, never failed
--   -- refused: <rule>         (optional, right after the header) disclosure control
--                              or the approval must refuse the case with this rule
--   -- protected: <col>, …     (optional, right after the header) columns released as
--                              protected quantiles (mean of k persons' values around
--                              the rank), not compared with the exact quantile
--   SQL up to the next header; a trailing ';' is optional; other '--' lines are
--   comments and are dropped.
-- HAVING is evaluated on released cells: groups whose cells are withheld do not
-- pass it, so under HAVING pooled groups may be missing from the federated answer.
-- Values are compared as rendered text, floats with relative and absolute
-- tolerance 1e-9. Cells withheld by disclosure control are not compared;
-- every released cell must equal the pooled one. Keep answers aggregated and small (< 200 rows) and
-- deterministic: no LIMIT without a total order, no ties in ORDER BY ... LIMIT.
-- Adding a case is an edit of this file only.

-- ===== single register: counts and aggregates =====

-- case: hip_count_star
SELECT count(*) AS n FROM hip.operations

-- case: hip_count_columns
SELECT count(*) AS n, count(bmi) AS with_bmi, count(reop_date) AS with_reop, count(DISTINCT person) AS persons
FROM hip.operations

-- case: hip_sum_avg_by_region
SELECT region, count(*) AS n, sum(asa) AS asa_sum, avg(bmi) AS bmi_avg, min(op_date) AS first, max(op_date) AS last
FROM hip.operations GROUP BY region

-- case: hip_stddev_var_by_fixation
SELECT fixation, stddev(bmi) AS sd, stddev_samp(bmi) AS sd_samp, var(bmi) AS v, var_pop(bmi) AS v_pop, stddev_pop(bmi) AS sd_pop
FROM hip.operations GROUP BY fixation

-- case: hip_median_by_asa
-- protected: bmi_median, day_median
SELECT asa, median(bmi) AS bmi_median, median(op_date - DATE '2010-01-01') AS day_median
FROM hip.operations GROUP BY asa

-- case: hip_group_by_two_keys
SELECT region, side, count(*) AS n, count(DISTINCT person) AS persons
FROM hip.operations GROUP BY region, side

-- case: hip_group_by_three_keys
SELECT fixation, asa, reoperation, count(*) AS n, avg(bmi) AS bmi
FROM hip.operations GROUP BY fixation, asa, reoperation

-- case: hip_group_by_year_extract
-- ordered
SELECT extract(year FROM op_date) AS year, count(*) AS n, sum(CASE WHEN reoperation THEN 1 ELSE 0 END) AS reops
FROM hip.operations GROUP BY extract(year FROM op_date) ORDER BY year

-- case: hip_date_part_month_quarter
SELECT date_part('quarter', op_date) AS q, date_part('month', op_date) AS m, count(*) AS n
FROM hip.operations GROUP BY 1, 2

-- case: hip_date_trunc_year
-- ordered
SELECT date_trunc('year', op_date) AS y, count(*) AS n FROM hip.operations GROUP BY 1 ORDER BY 1

-- case: hip_interval_reop_within_90_days
SELECT fixation, count(*) AS n
FROM hip.operations
WHERE reop_date IS NOT NULL AND reop_date <= op_date + INTERVAL '90 days'
GROUP BY fixation

-- case: hip_days_to_reoperation
-- refused: disclosure.identifying_aggregate
SELECT fixation, avg(reop_date - op_date) AS mean_days, min(reop_date - op_date) AS min_days, max(reop_date - op_date) AS max_days
FROM hip.operations WHERE reop_date IS NOT NULL GROUP BY fixation

-- case: hip_to_char_month
-- ordered
SELECT to_char(op_date, '%Y-%m') AS month, count(*) AS n
FROM hip.operations WHERE op_date BETWEEN DATE '2018-01-01' AND DATE '2018-12-31'
GROUP BY 1 ORDER BY 1

-- case: hip_filters_in_like_null
SELECT diagnosis, count(*) AS n
FROM hip.operations
WHERE diagnosis IN ('M16.1', 'M16.0', 'S72.0') AND hospital LIKE 'S%' AND bmi IS NULL
GROUP BY diagnosis

-- case: hip_filters_or_and
SELECT region, count(*) AS n
FROM hip.operations
WHERE (asa >= 3 OR bmi > 35) AND side = 'L' AND NOT reoperation
GROUP BY region

-- case: hip_case_bmi_class
SELECT CASE WHEN bmi IS NULL THEN 'unknown' WHEN bmi < 25 THEN 'normal' WHEN bmi < 30 THEN 'overweight' ELSE 'obese' END AS bmi_class,
       count(*) AS n, avg(asa) AS asa
FROM hip.operations GROUP BY 1

-- case: hip_having
SELECT hospital, count(*) AS n
FROM hip.operations GROUP BY hospital HAVING count(*) >= 50

-- case: hip_order_limit
-- ordered
SELECT hospital, count(*) AS n
FROM hip.operations GROUP BY hospital ORDER BY n DESC, hospital LIMIT 10

-- case: hip_rank_over_count
-- refused: disclosure.window_over_aggregate
-- ordered
SELECT region, count(*) AS n, rank() OVER (ORDER BY count(*) DESC) AS rnk
FROM hip.operations GROUP BY region ORDER BY rnk, region

-- case: hip_share_of_total
-- refused: disclosure.window_over_aggregate
SELECT fixation, count(*) AS n, 100.0 * count(*) / sum(count(*)) OVER () AS pct
FROM hip.operations GROUP BY fixation

-- case: hip_window_partitioned_share
-- refused: disclosure.window_over_aggregate
SELECT region, fixation, count(*) AS n,
       count(*) * 1.0 / sum(count(*)) OVER (PARTITION BY region) AS share_in_region
FROM hip.operations GROUP BY region, fixation

-- case: hip_cte
WITH per_person AS (
    SELECT person, count(*) AS ops FROM hip.operations GROUP BY person
)
SELECT ops, count(*) AS persons FROM per_person GROUP BY ops

-- case: hip_scalar_subquery
-- refused: disclosure.subquery
SELECT region, count(*) AS n
FROM hip.operations
WHERE bmi > (SELECT avg(bmi) FROM hip.operations)
GROUP BY region

-- case: hip_approx_percentile_small_groups
-- protected: bmi_p50
-- approx_percentile_cont is a t-digest whose answer depends on batch
-- boundaries and merge order once a digest is compressed; groups of fewer
-- than ~50 values keep one centroid per value and give the same answer for the
-- same multiset, and the result is rounded as a second guard.
SELECT hospital, count(*) AS n,
       round(approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY bmi), 3) AS bmi_p50
FROM hip.operations
WHERE extract(year FROM op_date) = 2020
GROUP BY hospital HAVING count(*) < 40

-- case: hip_prom_by_survey
-- protected: pain_median
SELECT survey, count(*) AS n, avg(eq5d_index) AS eq5d, stddev(eq5d_index) AS eq5d_sd, median(pain_vas) AS pain_median,
       count(satisfaction) AS with_satisfaction
FROM hip.prom GROUP BY survey

-- case: hip_prom_union_all
-- refused: disclosure.one_table
SELECT 'preop' AS survey, count(*) AS n, avg(pain_vas) AS pain FROM hip.prom WHERE survey = 'preop'
UNION ALL
SELECT '1y', count(*), avg(pain_vas) FROM hip.prom WHERE survey = '1y'

-- case: hip_ops_with_prom_exists
SELECT fixation, count(*) AS n
FROM hip.operations o
WHERE EXISTS (SELECT 1 FROM hip.prom p WHERE p.op_id = o.op_id AND p.survey = '1y')
GROUP BY fixation

-- case: hip_prom_improvement_same_register_join
SELECT o.fixation, count(*) AS n, avg(post.eq5d_index - pre.eq5d_index) AS gain
FROM hip.operations o
JOIN hip.prom pre ON pre.op_id = o.op_id AND pre.survey = 'preop'
JOIN hip.prom post ON post.op_id = o.op_id AND post.survey = '1y'
GROUP BY o.fixation

-- case: npr_by_region_and_year
SELECT region, extract(year FROM admit_date) AS year, count(*) AS n, sum(length_of_stay) AS bed_days
FROM npr.inpatient WHERE admit_date >= DATE '2022-01-01'
GROUP BY 1, 2

-- case: npr_los_stats
-- protected: median_los
SELECT main_dx, count(*) AS n, avg(length_of_stay) AS mean_los, median(length_of_stay) AS median_los, stddev_samp(length_of_stay) AS sd_los
FROM npr.inpatient WHERE main_dx LIKE 'T84%' OR main_dx LIKE 'M16%'
GROUP BY main_dx

-- case: npr_secondary_dx_like_is_null
SELECT procedure IS NULL AS no_procedure, secondary_dx IS NULL AS no_secondary, count(*) AS n
FROM npr.inpatient GROUP BY 1, 2

-- case: npr_los_matches_dates
SELECT count(*) AS n, sum(CASE WHEN discharge_date - admit_date = length_of_stay THEN 1 ELSE 0 END) AS consistent
FROM npr.inpatient

-- case: npr_top_procedures
-- ordered
SELECT procedure, count(*) AS n, count(DISTINCT person) AS persons
FROM npr.inpatient WHERE procedure IS NOT NULL
GROUP BY procedure ORDER BY n DESC, procedure LIMIT 15

-- case: lmr_by_atc_group
SELECT substr(atc, 1, 3) AS atc3, count(*) AS n, sum(ddd) AS ddd, avg(ddd) AS mean_ddd, count(DISTINCT person) AS persons
FROM lmr.dispensations GROUP BY 1

-- case: lmr_in_between
SELECT atc, extract(year FROM disp_date) AS year, count(*) AS n, sum(ddd) AS ddd
FROM lmr.dispensations
WHERE atc IN ('N02AA05', 'B01AB05', 'N02BE01') AND disp_date BETWEEN DATE '2019-01-01' AND DATE '2020-12-31'
GROUP BY 1, 2

-- case: lmr_var_median_by_region
-- protected: m
SELECT region, var_samp(ddd) AS v, median(ddd) AS m, stddev(ddd) AS sd
FROM lmr.dispensations WHERE atc LIKE 'C%' GROUP BY region

-- case: dors_by_cause
SELECT underlying_cause, count(*) AS n FROM dors.deaths GROUP BY underlying_cause

-- case: dors_by_year_region_top
-- ordered
SELECT extract(year FROM death_date) AS year, region, count(*) AS n
FROM dors.deaths GROUP BY 1, 2 ORDER BY n DESC, year, region LIMIT 20

-- case: dors_cause_chapter_case
SELECT CASE substr(underlying_cause, 1, 1) WHEN 'I' THEN 'circulatory' WHEN 'C' THEN 'cancer' WHEN 'J' THEN 'respiratory' ELSE 'other' END AS chapter,
       count(*) AS n
FROM dors.deaths GROUP BY 1

-- case: pop_by_sex_region
SELECT sex, region, count(*) AS n, avg(income) AS income, min(birth_year) AS oldest
FROM pop.persons GROUP BY sex, region

-- case: pop_income_stats
-- protected: med
SELECT education, count(*) AS n, count(education) AS n_known, sum(income) AS total, stddev(income) AS sd, median(income) AS med
FROM pop.persons GROUP BY education

-- case: pop_birth_decade
-- ordered
SELECT (birth_year / 10) * 10 AS decade, count(*) AS n FROM pop.persons GROUP BY 1 ORDER BY 1

-- case: pop_country_of_birth_share
-- refused: disclosure.window_over_aggregate
SELECT country_of_birth, count(*) AS n, count(*) * 1.0 / sum(count(*)) OVER () AS share,
       dense_rank() OVER (ORDER BY count(*) DESC) AS rnk
FROM pop.persons GROUP BY country_of_birth

-- case: pop_age_at_2024
SELECT sex, avg(date_part('year', DATE '2024-01-01') - date_part('year', birth_date)) AS mean_age
FROM pop.persons GROUP BY sex

-- ===== two registers =====

-- case: hip_join_dors_deaths_after_op
SELECT o.fixation, count(*) AS ops, count(d.person) AS died
FROM hip.operations o LEFT JOIN dors.deaths d ON d.person = o.person
GROUP BY o.fixation

-- case: hip_join_dors_90_day_mortality
SELECT extract(year FROM o.op_date) AS year, count(*) AS deaths_90d
FROM hip.operations o
JOIN dors.deaths d ON d.person = o.person AND d.death_date BETWEEN o.op_date AND o.op_date + INTERVAL '90 days'
GROUP BY 1

-- case: hip_join_dors_cause_after_op
SELECT d.underlying_cause, count(*) AS n, avg(d.death_date - o.op_date) AS mean_days
FROM hip.operations o JOIN dors.deaths d ON d.person = o.person AND d.death_date >= o.op_date
GROUP BY d.underlying_cause

-- case: hip_join_pop_sex_age
SELECT p.sex, CASE WHEN extract(year FROM o.op_date) - p.birth_year < 65 THEN 'under 65' ELSE '65+' END AS age_group,
       count(*) AS n, avg(o.bmi) AS bmi
FROM hip.operations o JOIN pop.persons p ON p.person = o.person
GROUP BY 1, 2

-- case: hip_join_pop_education_left
SELECT p.education, count(*) AS persons, count(o.person) AS ops
FROM pop.persons p LEFT JOIN hip.operations o ON o.person = p.person
GROUP BY p.education

-- case: hip_join_pop_income_quartile
SELECT q, count(*) AS ops, avg(reop) AS reop_rate
FROM (
    SELECT ntile(4) OVER (ORDER BY p.income, p.person, o.op_id) AS q, CASE WHEN o.reoperation THEN 1.0 ELSE 0.0 END AS reop
    FROM hip.operations o JOIN pop.persons p ON p.person = o.person
) t
GROUP BY q

-- case: npr_join_hip_same_day
SELECT i.procedure, count(*) AS n
FROM npr.inpatient i JOIN hip.operations o ON o.person = i.person AND o.op_date BETWEEN i.admit_date AND i.discharge_date
GROUP BY i.procedure

-- case: npr_join_hip_reop_episodes
SELECT o.fixation, i.main_dx, count(*) AS n
FROM hip.operations o JOIN npr.inpatient i ON i.person = o.person AND i.admit_date = o.reop_date
GROUP BY 1, 2

-- case: npr_in_subquery_hip
SELECT region, count(*) AS episodes
FROM npr.inpatient
WHERE person IN (SELECT person FROM hip.operations WHERE reoperation)
GROUP BY region

-- case: npr_not_exists_hip
SELECT main_dx, count(*) AS n
FROM npr.inpatient i
WHERE main_dx LIKE 'M16%' AND NOT EXISTS (SELECT 1 FROM hip.operations o WHERE o.person = i.person)
GROUP BY main_dx

-- case: lmr_join_pop_sex
SELECT p.sex, substr(l.atc, 1, 1) AS atc1, count(*) AS n, sum(l.ddd) AS ddd
FROM lmr.dispensations l JOIN pop.persons p ON p.person = l.person
GROUP BY 1, 2

-- case: lmr_join_pop_region_mismatch
SELECT count(*) AS n, sum(CASE WHEN l.region = p.region THEN 1 ELSE 0 END) AS same_region
FROM lmr.dispensations l JOIN pop.persons p ON p.person = l.person

-- case: lmr_opioids_after_hip
SELECT o.fixation, count(DISTINCT o.person) AS persons, count(*) AS dispensations, sum(l.ddd) AS ddd
FROM hip.operations o
JOIN lmr.dispensations l ON l.person = o.person AND l.atc = 'N02AA05'
     AND l.disp_date BETWEEN o.op_date AND o.op_date + INTERVAL '30 days'
GROUP BY o.fixation

-- case: dors_scalar_subquery_share
-- refused: disclosure.subquery
SELECT region, count(*) AS deaths, count(*) * 1.0 / (SELECT count(*) FROM pop.persons) AS per_person
FROM dors.deaths GROUP BY region

-- case: pop_union_all_registers
-- refused: disclosure.one_table
SELECT 'hip' AS register, count(DISTINCT person) AS persons FROM hip.operations
UNION ALL SELECT 'npr', count(DISTINCT person) FROM npr.inpatient
UNION ALL SELECT 'lmr', count(DISTINCT person) FROM lmr.dispensations
UNION ALL SELECT 'dors', count(DISTINCT person) FROM dors.deaths
UNION ALL SELECT 'pop', count(DISTINCT person) FROM pop.persons

-- case: cte_two_registers_having
WITH hip_persons AS (
    SELECT person, min(op_date) AS first_op FROM hip.operations GROUP BY person
), deaths AS (
    SELECT person, death_date FROM dors.deaths
)
SELECT extract(year FROM h.first_op) AS year, count(*) AS n
FROM hip_persons h JOIN deaths d ON d.person = h.person
GROUP BY 1 HAVING count(*) > 2

-- ===== three registers =====

-- case: hip_dors_pop_mortality_by_sex
SELECT p.sex, count(*) AS ops, count(d.person) AS died, avg(CASE WHEN d.person IS NULL THEN 0.0 ELSE 1.0 END) AS died_share
FROM hip.operations o
JOIN pop.persons p ON p.person = o.person
LEFT JOIN dors.deaths d ON d.person = o.person
GROUP BY p.sex

-- case: hip_dors_pop_age_at_death
SELECT p.sex, d.underlying_cause, count(*) AS n, avg(extract(year FROM d.death_date) - p.birth_year) AS age
FROM hip.operations o
JOIN dors.deaths d ON d.person = o.person AND d.death_date > o.op_date
JOIN pop.persons p ON p.person = d.person
GROUP BY 1, 2 HAVING count(*) >= 3

-- case: hip_lmr_pop_anticoagulants
SELECT p.sex, o.fixation, count(DISTINCT o.person) AS persons, count(*) AS n
FROM hip.operations o
JOIN lmr.dispensations l ON l.person = o.person AND l.atc LIKE 'B01A%' AND l.disp_date < o.op_date
JOIN pop.persons p ON p.person = o.person
GROUP BY 1, 2

-- case: hip_lmr_pop_cte_rank
-- refused: disclosure.window_over_aggregate
-- ordered
WITH statin_users AS (
    SELECT DISTINCT person FROM lmr.dispensations WHERE atc LIKE 'C10%'
)
SELECT p.region, count(*) AS ops, rank() OVER (ORDER BY count(*) DESC, p.region) AS rnk
FROM hip.operations o
JOIN statin_users s ON s.person = o.person
JOIN pop.persons p ON p.person = o.person
GROUP BY p.region ORDER BY rnk

-- ===== more SQL shapes (single register unless noted) =====

-- case: hip_count_filter_clause
SELECT region, count(*) FILTER (WHERE reoperation) AS reops, count(*) FILTER (WHERE asa >= 3) AS high_asa, count(*) AS n
FROM hip.operations GROUP BY region

-- case: hip_rollup
SELECT side, fixation, count(*) AS n FROM hip.operations GROUP BY ROLLUP (side, fixation)

-- case: hip_grouping_sets
SELECT region, side, count(*) AS n FROM hip.operations GROUP BY GROUPING SETS ((region), (side), ())

-- case: hip_select_distinct
SELECT DISTINCT region, side FROM hip.operations WHERE asa = 1

-- case: hip_lag_year_over_year
-- refused: disclosure.window_over_aggregate
-- ordered
SELECT extract(year FROM op_date) AS year, count(*) AS n,
       count(*) - lag(count(*)) OVER (ORDER BY extract(year FROM op_date)) AS change,
       sum(count(*)) OVER (ORDER BY extract(year FROM op_date) ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running
FROM hip.operations GROUP BY extract(year FROM op_date) ORDER BY year

-- case: hip_row_number_top_per_region
-- refused: disclosure.window_over_aggregate
-- ordered
SELECT region, hospital, n FROM (
    SELECT region, hospital, count(*) AS n,
           row_number() OVER (PARTITION BY region ORDER BY count(*) DESC, hospital) AS rn
    FROM hip.operations GROUP BY region, hospital
) t WHERE rn = 1 ORDER BY region

-- case: hip_unicode_and_quote_literals
SELECT hospital, count(*) AS n
FROM hip.operations
WHERE region IN ('Västra Götaland', 'Skåne', 'Östergötland') AND hospital <> 'O''Brien'
GROUP BY hospital

-- case: hip_not_in_not_between_not_like
SELECT diagnosis, count(*) AS n
FROM hip.operations
WHERE diagnosis NOT IN ('M16.1') AND asa NOT BETWEEN 3 AND 4 AND hospital NOT LIKE '%Capio%'
GROUP BY diagnosis

-- case: hip_string_functions
SELECT upper(side) || '-' || lower(fixation) AS label, length(fixation) AS len, count(*) AS n
FROM hip.operations GROUP BY 1, 2

-- case: hip_coalesce_round
SELECT fixation, round(avg(coalesce(bmi, 0.0)), 4) AS bmi0, count(nullif(asa, 1)) AS asa_not_1
FROM hip.operations GROUP BY fixation

-- case: hip_date_string_comparison_and_month_interval
SELECT count(*) AS n, count(*) FILTER (WHERE reop_date < op_date + INTERVAL '1 year') AS reop_1y
FROM hip.operations WHERE op_date >= '2015-01-01' AND op_date < '2020-01-01'

-- case: hip_date_trunc_month_having
-- ordered
SELECT date_trunc('month', op_date) AS month, count(*) AS n
FROM hip.operations GROUP BY 1 HAVING count(*) >= 4 ORDER BY 1

-- case: hip_extract_dow
SELECT extract(dow FROM op_date) AS dow, count(*) AS n FROM hip.operations GROUP BY 1

-- case: hip_quoted_identifiers_and_catalog
SELECT "region", count(*) AS "N" FROM samkor.hip."operations" GROUP BY "region"

-- case: hip_approx_distinct
-- HyperLogLog: registers take the max hash rank, independent of input order and merging.
SELECT fixation, approx_distinct(person) AS persons_approx, count(DISTINCT person) AS persons
FROM hip.operations GROUP BY fixation

-- case: hip_corr_regression
-- refused: disclosure.unknown_aggregate
SELECT corr(bmi, asa) AS r, covar_samp(bmi, asa) AS cov, regr_slope(bmi, asa) AS slope
FROM hip.operations

-- case: hip_bool_aggregates
-- refused: disclosure.identifying_aggregate
SELECT region, bool_or(reoperation) AS any_reop, bool_and(bmi IS NOT NULL) AS all_bmi
FROM hip.operations GROUP BY region

-- case: hip_min_max_strings_dates
SELECT asa, min(hospital) AS first_hospital, max(diagnosis) AS last_dx, min(reop_date) AS first_reop
FROM hip.operations GROUP BY asa

-- case: hip_nested_ctes
WITH yearly AS (
    SELECT extract(year FROM op_date) AS year, region, count(*) AS n FROM hip.operations GROUP BY 1, 2
), peak AS (
    SELECT region, max(n) AS peak FROM yearly GROUP BY region
)
SELECT p.region, p.peak, count(*) AS years_at_peak
FROM peak p JOIN yearly y ON y.region = p.region AND y.n = p.peak
GROUP BY p.region, p.peak

-- case: hip_in_subquery_having
SELECT region, count(*) AS n
FROM hip.operations
WHERE person IN (SELECT person FROM hip.operations GROUP BY person HAVING count(*) > 1)
GROUP BY region

-- case: hip_correlated_scalar_subquery
SELECT o.region, count(*) AS above_region_mean
FROM hip.operations o
WHERE o.bmi > (SELECT avg(i.bmi) FROM hip.operations i WHERE i.region = o.region)
GROUP BY o.region

-- case: hip_union_distinct
SELECT region FROM hip.operations WHERE asa = 4
UNION
SELECT region FROM hip.operations WHERE bmi > 40

-- case: hip_order_nulls_offset
-- ordered
SELECT asa, max(bmi) AS max_bmi FROM hip.operations GROUP BY asa ORDER BY asa DESC NULLS LAST LIMIT 3 OFFSET 1

-- case: lmr_regexp_and_cast
SELECT CAST(extract(year FROM disp_date) AS VARCHAR) AS year, count(*) AS n
FROM lmr.dispensations WHERE regexp_like(atc, '^C0[79]') GROUP BY 1

-- case: lmr_limit_in_subquery_total_order
SELECT sum(n) AS top5_total FROM (
    SELECT atc, count(*) AS n FROM lmr.dispensations GROUP BY atc ORDER BY n DESC, atc LIMIT 5
) t

-- case: pop_filter_boolean_combinations
SELECT country_of_birth, count(*) AS n
FROM pop.persons
WHERE (sex = 'F' AND birth_year BETWEEN 1940 AND 1960) OR (sex = 'M' AND education IS NULL) OR income > 1000000
GROUP BY country_of_birth

-- ===== more across registers =====

-- case: hip_intersect_dors_persons
SELECT count(*) AS n FROM (
    SELECT person FROM hip.operations INTERSECT SELECT person FROM dors.deaths
) t

-- case: pop_except_hip_persons
SELECT count(*) AS n FROM (
    SELECT person FROM pop.persons EXCEPT SELECT person FROM hip.operations
) t

-- case: pop_not_in_dors
SELECT sex, count(*) AS alive FROM pop.persons WHERE person NOT IN (SELECT person FROM dors.deaths) GROUP BY sex

-- case: dors_left_join_filter_in_on_vs_where
SELECT p.region, count(*) AS persons, count(d.person) AS died_of_circulatory
FROM pop.persons p LEFT JOIN dors.deaths d ON d.person = p.person AND d.underlying_cause LIKE 'I%'
WHERE p.birth_year < 1950
GROUP BY p.region

-- case: pop_full_outer_join_hip_counts
-- refused: disclosure.one_table
SELECT a.region, a.n AS residents, b.n AS ops
FROM (SELECT region, count(*) AS n FROM pop.persons GROUP BY region) a
FULL OUTER JOIN (SELECT region, count(*) AS n FROM hip.operations GROUP BY region) b ON a.region = b.region

-- case: npr_join_dors_in_hospital_deaths
SELECT d.underlying_cause, count(*) AS n
FROM npr.inpatient i JOIN dors.deaths d ON d.person = i.person AND d.death_date BETWEEN i.admit_date AND i.discharge_date
GROUP BY d.underlying_cause

-- case: npr_aliased_table_filter
-- Same register, aliased table and a filter on it (the shape that fails in npr_not_exists_hip).
SELECT i.region, count(*) AS n FROM npr.inpatient i WHERE i.main_dx LIKE 'M16%' GROUP BY i.region

-- case: hip_pop_join_aggregated_subqueries
-- refused: disclosure.one_table
SELECT h.region, h.ops, p.residents, h.ops * 1000.0 / p.residents AS per_1000
FROM (SELECT region, count(*) AS ops FROM hip.operations GROUP BY region) h
JOIN (SELECT region, count(*) AS residents FROM pop.persons GROUP BY region) p ON p.region = h.region

-- case: hip_dors_pop_lmr_four_registers
SELECT p.sex, count(DISTINCT o.person) AS persons, count(DISTINCT d.person) AS died, count(DISTINCT l.person) AS on_opioids
FROM hip.operations o
JOIN pop.persons p ON p.person = o.person
LEFT JOIN dors.deaths d ON d.person = o.person
LEFT JOIN lmr.dispensations l ON l.person = o.person AND l.atc = 'N02AA05'
GROUP BY p.sex

-- ===== variants of known failures that avoid the engine bug (keep the coverage) =====

-- case: hip_case_bmi_class_float_literals
SELECT CASE WHEN bmi IS NULL THEN 'unknown' WHEN bmi < 25.0 THEN 'normal' WHEN bmi < 30.0 THEN 'overweight' ELSE 'obese' END AS bmi_class,
       count(*) AS n
FROM hip.operations GROUP BY 1

-- case: hip_days_to_reoperation_explicit_cast
SELECT fixation, count(*) AS n, avg(CAST(reop_date - op_date AS DOUBLE)) AS mean_days
FROM hip.operations WHERE reop_date IS NOT NULL GROUP BY fixation

-- case: npr_los_single_aggregates
SELECT main_dx, count(*) AS n, stddev_samp(CAST(length_of_stay AS DOUBLE)) AS sd_los
FROM npr.inpatient WHERE main_dx LIKE 'T84%' OR main_dx LIKE 'M16%'
GROUP BY main_dx

-- case: pop_income_stddev_median_separately
-- refused: disclosure.one_table
SELECT s.education, s.sd, m.med
FROM (SELECT education, stddev(CAST(income AS DOUBLE)) AS sd FROM pop.persons GROUP BY education) s
JOIN (SELECT education, median(CAST(income AS DOUBLE)) AS med FROM pop.persons GROUP BY education) m
  ON m.education IS NOT DISTINCT FROM s.education

-- case: npr_not_in_hip_without_alias
SELECT main_dx, count(*) AS n
FROM npr.inpatient
WHERE main_dx LIKE 'M16%' AND person NOT IN (SELECT person FROM hip.operations)
GROUP BY main_dx

-- ===== probes of pushed-down shapes (whole query at one node) =====

-- case: hip_same_register_left_join_filter_in_on
SELECT o.fixation, count(*) AS ops, count(p.op_id) AS with_1y
FROM hip.operations o LEFT JOIN hip.prom p ON p.op_id = o.op_id AND p.survey = '1y'
GROUP BY o.fixation

-- case: hip_same_register_full_join
SELECT count(*) AS n, count(o.op_id) AS ops, count(p.op_id) AS proms
FROM (SELECT op_id FROM hip.operations WHERE asa = 1) o
FULL OUTER JOIN (SELECT DISTINCT op_id FROM hip.prom WHERE pain_vas > 60) p ON p.op_id = o.op_id

-- case: hip_null_aware_not_in
-- satisfaction is NULL before the operation, so NOT IN yields no rows at all.
SELECT count(*) AS n FROM hip.prom WHERE pain_vas NOT IN (SELECT satisfaction FROM hip.prom)

-- case: hip_not_in_without_nulls
SELECT count(*) AS n FROM hip.prom WHERE pain_vas NOT IN (SELECT satisfaction FROM hip.prom WHERE satisfaction IS NOT NULL)

-- case: hip_like_escape_ilike
SELECT fixation, count(*) AS n FROM hip.operations
WHERE fixation LIKE '%\_%' ESCAPE '\' OR hospital ILIKE 'SAHLGRENSKA%'
GROUP BY fixation

-- case: hip_empty_aggregate
SELECT count(*) AS n, sum(bmi) AS s, avg(bmi) AS a, max(op_date) AS m FROM hip.operations WHERE asa > 10

-- case: hip_empty_group_by
SELECT region, count(*) AS n FROM hip.operations WHERE asa > 10 GROUP BY region

-- case: hip_having_without_group_by
SELECT count(*) AS n FROM hip.operations HAVING count(*) > 0

-- case: hip_arithmetic_modulo_abs
SELECT extract(year FROM op_date) % 2 AS odd_year, abs(-asa) AS asa, count(*) AS n
FROM hip.operations GROUP BY 1, 2

-- case: hip_first_value_ordered_aggregate
-- refused: disclosure.identifying_aggregate
-- Descending, so that an ORDER BY dropped on the way is not hidden by the files' date order.
SELECT region, first_value(hospital ORDER BY op_date DESC, op_id DESC) AS last_hospital, count(*) AS n
FROM hip.operations GROUP BY region

-- case: hip_string_agg_distinct_ordered
-- refused: disclosure.identifying_aggregate
SELECT region, string_agg(DISTINCT side, ',' ORDER BY side) AS sides
FROM hip.operations GROUP BY region

-- case: hip_percentile_cont_exact
-- protected: bmi_p50
SELECT fixation, percentile_cont(0.5) WITHIN GROUP (ORDER BY bmi) AS bmi_p50
FROM hip.operations GROUP BY fixation

-- case: hip_date_minus_interval_make_date
SELECT count(*) AS n FROM hip.operations
WHERE op_date - INTERVAL '1 month' >= make_date(2019, 12, 1) AND op_date < to_date('2021-01-01')

-- case: hip_alias_shadowing_column
SELECT asa AS region, count(*) AS n FROM hip.operations GROUP BY asa

-- case: hip_in_list_with_null_and_single
SELECT count(*) FILTER (WHERE side IN ('L')) AS l, count(*) FILTER (WHERE side IN ('R', NULL)) AS r
FROM hip.operations

-- ===== probes at the coordinator (cross-register) =====

-- case: hip_pop_same_column_names
SELECT o.region AS op_region, p.region AS home_region, count(*) AS n
FROM hip.operations o JOIN pop.persons p ON p.person = o.person
WHERE o.region <> p.region
GROUP BY o.region, p.region HAVING count(*) >= 2

-- case: hip_pop_join_on_region_not_person
SELECT h.region, count(*) AS n
FROM (SELECT DISTINCT region FROM hip.operations WHERE asa = 4) h
JOIN pop.persons p ON p.region = h.region
GROUP BY h.region

-- case: hip_dors_join_with_or_condition
SELECT count(*) AS n
FROM hip.operations o JOIN dors.deaths d
  ON d.person = o.person AND (d.underlying_cause LIKE 'I%' OR d.death_date < o.op_date + INTERVAL '1 year')

-- case: hip_dors_is_not_distinct_from_join
-- refused: disclosure.one_table
SELECT h.region, h.n, d.n AS deaths
FROM (SELECT region, count(*) AS n FROM hip.operations GROUP BY region) h
JOIN (SELECT region, count(*) AS n FROM dors.deaths GROUP BY region) d ON d.region IS NOT DISTINCT FROM h.region

-- case: pop_dors_exists_correlated_with_date
SELECT p.sex, count(*) AS n
FROM pop.persons p
WHERE EXISTS (SELECT 1 FROM dors.deaths d WHERE d.person = p.person AND d.death_date < DATE '2015-01-01')
GROUP BY p.sex

-- ===== generalisations of the birth date (docs/statistics.md) =====

-- case: hip_age_band_at_operation
SELECT p.sex, age_band(p.birth_date, o.op_date, 10) AS age, count(*) AS n, avg(o.bmi) AS bmi
FROM hip.operations o JOIN pop.persons p ON p.person = o.person
GROUP BY 1, 2

-- case: hip_age_years_mean
SELECT o.hospital, avg(age_years(p.birth_date, o.op_date)) AS mean_age, count(*) AS n
FROM hip.operations o JOIN pop.persons p ON p.person = o.person
GROUP BY 1

-- case: pop_age_band_at_new_year
SELECT age_band(birth_date, DATE '2024-01-01', 5) AS age, birth_decade(birth_date) AS decade, count(*) AS n
FROM pop.persons GROUP BY 1, 2

-- case: pop_birth_year_function
SELECT birth_year(birth_date) AS y, count(*) AS n FROM pop.persons WHERE birth_year(birth_date) >= 1990 GROUP BY 1

-- case: pop_age_band_too_narrow
-- refused: disclosure.generalisation
SELECT age_band(birth_date, DATE '2024-01-01', 2) AS age, count(*) AS n FROM pop.persons GROUP BY 1

-- case: pop_age_at_chosen_day
-- refused: disclosure.generalisation
SELECT age_years(birth_date, DATE '2024-03-15') AS age, count(*) AS n FROM pop.persons GROUP BY 1

-- case: pop_age_at_date_from_birth_date
-- refused: disclosure.generalisation
SELECT age_years(birth_date, birth_date + INTERVAL '1 day') AS age, count(*) AS n FROM pop.persons GROUP BY 1

-- case: pop_free_cut_on_birth_date
-- refused: disclosure.identifying_group
SELECT CASE WHEN birth_date < DATE '1950-03-15' THEN 'before' ELSE 'after' END AS cut, count(*) AS n
FROM pop.persons GROUP BY 1
