#!/usr/bin/env python3
"""Reference outputs for samkor-stats, from scipy, statsmodels and lifelines.

Writes, next to this script:
  glm_data.csv    a deterministic synthetic dataset of 2,000 rows for the GLM fits
  km_data.csv     a deterministic synthetic survival dataset (whole-day times)
  reference.json  reference values for every function of the crate

Run from anywhere:  python3 stats/reference/generate.py
(pip install scipy statsmodels lifelines pandas numpy). The Rust tests in
stats/tests/reference.rs read the two CSV files and reference.json and
compare every number within 1e-6 relative (1e-9 absolute near zero).

Nothing here shares code with the Rust crate: intervals come from
statsmodels' proportion_confint and scipy's chi-square/gamma quantiles (the
formulas of R's binom.test and poisson.test), GLMs from statsmodels' GLM,
Kaplan-Meier from lifelines' KaplanMeierFitter.
"""

import json
import os

import numpy as np
import pandas as pd
import scipy
import statsmodels
import statsmodels.api as sm
from lifelines import KaplanMeierFitter
import lifelines
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

HERE = os.path.dirname(os.path.abspath(__file__))


def intervals():
    cases = []
    proportions = [
        (7, 20, 0.95), (0, 15, 0.95), (15, 15, 0.95), (1, 1000, 0.95), (4500, 100000, 0.95),
        (33, 120, 0.90), (33, 120, 0.99), (2, 9, 0.998), (7.4, 20, 0.95), (0.6, 30.2, 0.95),
        (500000, 1000000, 0.95), (999990, 1000000, 0.999),
    ]
    for x, n, level in proportions:
        alpha = 1 - level
        cp = proportion_confint(x, n, alpha=alpha, method="beta")
        wi = proportion_confint(x, n, alpha=alpha, method="wilson")
        cases.append({"kind": "clopper_pearson", "x": x, "n": n, "level": level,
                      "lower": float(cp[0]), "upper": float(cp[1])})
        cases.append({"kind": "wilson", "x": x, "n": n, "level": level,
                      "lower": float(wi[0]), "upper": float(wi[1])})
    for x, level in [(10, 0.95), (0, 0.95), (1, 0.95), (3, 0.99), (57, 0.90), (100000, 0.95),
                     (0.3, 0.95), (12.5, 0.998)]:
        alpha = 1 - level
        # R poisson.test: lower qgamma(alpha/2, x) = qchisq(alpha/2, 2x)/2,
        # upper qgamma(1 - alpha/2, x + 1) = qchisq(1 - alpha/2, 2x + 2)/2.
        lower = 0.0 if x == 0 else stats.chi2.ppf(alpha / 2, 2 * x) / 2
        upper = stats.chi2.ppf(1 - alpha / 2, 2 * x + 2) / 2
        cases.append({"kind": "poisson", "x": x, "level": level, "lower": float(lower), "upper": float(upper)})
    return cases


def smr():
    out = []
    for o, e, level in [(10, 8.0, 0.95), (0, 2.5, 0.95), (143, 121.37, 0.95), (5, 12.2, 0.998)]:
        alpha = 1 - level
        lower = 0.0 if o == 0 else stats.gamma.ppf(alpha / 2, o) / e
        upper = stats.gamma.ppf(1 - alpha / 2, o + 1) / e
        out.append({"observed": o, "expected": e, "level": level, "value": o / e,
                    "lower": float(lower), "upper": float(upper)})
    return out


def rates():
    out = []
    for x, pt, per, level in [(10, 2500.0, 1000.0, 0.95), (0, 812.5, 1000.0, 0.95), (37, 15234.7, 100000.0, 0.99)]:
        alpha = 1 - level
        lower = 0.0 if x == 0 else stats.chi2.ppf(alpha / 2, 2 * x) / 2
        upper = stats.chi2.ppf(1 - alpha / 2, 2 * x + 2) / 2
        out.append({"events": x, "person_time": pt, "per": per, "level": level, "value": x / pt * per,
                    "lower": float(lower / pt * per), "upper": float(upper / pt * per)})
    return out


def dsr_case(events, persons, weights, level):
    """epitools::ageadjust.direct / Fay & Feuer (1997) gamma interval."""
    d, n, w = (np.asarray(v, dtype=float) for v in (events, persons, weights))
    keep = n > 0
    w = w / w.sum()
    rate = float(np.sum(w[keep] * d[keep] / n[keep]))
    var = float(np.sum(w[keep] ** 2 * d[keep] / n[keep] ** 2))
    wm = float(np.max(w[keep] / n[keep]))
    alpha = 1 - level
    lower = 0.0 if rate == 0 else stats.gamma.ppf(alpha / 2, rate ** 2 / var, scale=var / rate)
    upper = stats.gamma.ppf(1 - alpha / 2, (rate + wm) ** 2 / (var + wm ** 2), scale=(var + wm ** 2) / (rate + wm))
    return {"events": list(map(float, d)), "persons": list(map(float, n)), "weights": list(map(float, weights)),
            "level": level, "rate": rate, "se": var ** 0.5, "lower": float(lower), "upper": float(upper)}


def dsr():
    # Age bands x sex of one hospital against a standard population (persons).
    events = [0, 1, 3, 8, 15, 27, 2, 4, 9, 21]
    persons = [1200, 950, 800, 610, 400, 180, 1100, 900, 700, 350]
    std = [60000, 55000, 50000, 40000, 25000, 12000, 58000, 54000, 48000, 30000]
    return [dsr_case(events, persons, std, 0.95), dsr_case(events, persons, std, 0.99),
            dsr_case([0, 0, 0], [100, 200, 300], [1, 2, 3], 0.95),
            dsr_case([4, 0, 7], [100, 0, 300], [1, 0, 3], 0.95)]


def binom_cdf(r, n, p):
    return float(stats.binom.cdf(r, n, p)) if r >= 0 else 0.0


def pois_cdf(r, mu):
    return float(stats.poisson.cdf(r, mu)) if r >= 0 else 0.0


def spiegelhalter(cdf, p, d, guess):
    """(r_p - alpha)/d with r_p the smallest r with cdf(r) >= p (Spiegelhalter 2005, A.1)."""
    r = int(guess)
    while r > 0 and cdf(r - 1) >= p:
        r -= 1
    while cdf(r) < p:
        r += 1
    alpha = (cdf(r) - p) / (cdf(r) - cdf(r - 1))
    return (r - alpha) / d


def funnel():
    props, smrs = [], []
    for p0 in [0.05, 0.2, 0.5]:
        for n in [10, 57, 250, 1000, 12345, 200000, 1000000]:
            for cov in [0.95, 0.998]:
                t = (1 - cov) / 2
                cdf = lambda r: binom_cdf(r, n, p0)  # noqa: E731
                lo = spiegelhalter(cdf, t, n, stats.binom.ppf(t, n, p0))
                hi = spiegelhalter(cdf, 1 - t, n, stats.binom.ppf(1 - t, n, p0))
                props.append({"p0": p0, "n": n, "coverage": cov,
                              "lower": min(max(lo, 0.0), 1.0), "upper": min(max(hi, 0.0), 1.0)})
    for e in [0.5, 3.7, 20.0, 150.5, 4000.0, 100000.0]:
        for cov in [0.95, 0.998]:
            t = (1 - cov) / 2
            cdf = lambda r: pois_cdf(r, e)  # noqa: E731
            lo = spiegelhalter(cdf, t, e, stats.poisson.ppf(t, e))
            hi = spiegelhalter(cdf, 1 - t, e, stats.poisson.ppf(1 - t, e))
            smrs.append({"expected": e, "coverage": cov, "lower": max(lo, 0.0), "upper": hi})
    return {"proportion": props, "smr": smrs}


def kaplan_meier():
    rng = np.random.default_rng(20261128)
    n = 120
    event_time = np.ceil(rng.exponential(9.0, n)).astype(int)
    censor_time = np.ceil(rng.uniform(0, 20, n)).astype(int)
    durations = np.maximum(np.minimum(event_time, censor_time), 1)
    observed = (event_time <= censor_time).astype(int)
    pd.DataFrame({"time": durations, "event": observed}).to_csv(os.path.join(HERE, "km_data.csv"), index=False)

    horizon = int(durations.max())
    timeline = np.arange(1, horizon + 1)
    out = {"at_risk_start": n, "bands": [], "loglog": [], "log": []}
    for t in timeline:
        at_t = durations == t
        out["bands"].append({"end": float(t), "events": int(np.sum(at_t & (observed == 1))),
                             "censored": int(np.sum(at_t & (observed == 0)))})
    z = stats.norm.ppf(0.975)
    for level in [0.95, 0.90]:
        kmf = KaplanMeierFitter(alpha=1 - level).fit(durations, observed, timeline=timeline)
        s = kmf.survival_function_.iloc[:, 0].to_numpy()
        ci = kmf.confidence_interval_.to_numpy()
        v = kmf._cumulative_sq_.reindex(timeline).to_numpy()  # Greenwood sum, variance of ln S
        z = stats.norm.ppf(1 - (1 - level) / 2)
        out["loglog"].append({"level": level, "survival": s.tolist(), "lower": ci[:, 0].tolist(),
                              "upper": ci[:, 1].tolist(), "se": (s * np.sqrt(v)).tolist()})
        # R survfit(conf.type = "log"): S exp(-/+ z sqrt(V)), upper capped at 1.
        out["log"].append({"level": level, "lower": (s * np.exp(-z * np.sqrt(v))).tolist(),
                           "upper": np.minimum(1.0, s * np.exp(z * np.sqrt(v))).tolist()})
    return out


def glm_data():
    rng = np.random.default_rng(12)
    n = 2000
    age = np.round(rng.uniform(40, 90, n), 1)
    sex = rng.integers(0, 2, n)
    region = rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2, 0.1])
    pyears = np.round(rng.uniform(0.5, 5.0, n), 3)
    reg_eff = pd.Series({"a": 0.0, "b": 0.3, "c": -0.4, "d": 0.6})[region].to_numpy()
    a10 = (age - 65) / 10
    eta_b = -1.2 + 0.45 * a10 + 0.35 * sex + reg_eff
    y_bin = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta_b))).astype(int)
    eta_p = -2.0 + 0.3 * a10 - 0.2 * sex + reg_eff + np.log(pyears)
    y_count = rng.poisson(np.exp(eta_p))
    y_cont = np.round(120 + 6 * a10 + 4 * sex + 5 * reg_eff + rng.normal(0, 15, n), 2)
    df = pd.DataFrame({"age": age, "sex": sex, "region": region, "pyears": pyears,
                       "y_bin": y_bin, "y_count": y_count, "y_cont": y_cont})
    # Python's float repr is the shortest string that reads back as the same
    # double, so the Rust side sees exactly these values.
    df.to_csv(os.path.join(HERE, "glm_data.csv"), index=False)
    return df


def design(df):
    """Intercept, (age - 65)/10, sex, and region dummies with 'a' as reference."""
    return pd.DataFrame({
        "const": 1.0, "age10": (df["age"] - 65) / 10, "sex": df["sex"].astype(float),
        "region_b": (df["region"] == "b").astype(float), "region_c": (df["region"] == "c").astype(float),
        "region_d": (df["region"] == "d").astype(float),
    })


def glms():
    df = glm_data()
    x = design(df)
    models = {
        "binomial": (df["y_bin"], sm.families.Binomial(), None),
        "poisson": (df["y_count"], sm.families.Poisson(), np.log(df["pyears"])),
        "gaussian": (df["y_cont"], sm.families.Gaussian(), None),
    }
    out = {"columns": list(x.columns)}
    for name, (y, family, offset) in models.items():
        res = sm.GLM(y, x, family=family, offset=offset).fit(tol=1e-14, maxiter=100)
        ci = res.conf_int(alpha=0.05).to_numpy()
        out[name] = {
            "params": res.params.tolist(), "bse": res.bse.tolist(), "z": res.tvalues.tolist(),
            "pvalues": res.pvalues.tolist(), "lower": ci[:, 0].tolist(), "upper": ci[:, 1].tolist(),
            "deviance": float(res.deviance), "aic": float(res.aic), "llf": float(res.llf),
            "nobs": float(res.nobs), "scale": float(res.scale),
        }
    return out


def main():
    reference = {
        "generated_by": {"scipy": scipy.__version__, "statsmodels": statsmodels.__version__,
                         "lifelines": lifelines.__version__, "numpy": np.__version__},
        "intervals": intervals(),
        "smr": smr(),
        "rates": rates(),
        "dsr": dsr(),
        "funnel": funnel(),
        "kaplan_meier": kaplan_meier(),
        "glm": glms(),
    }
    with open(os.path.join(HERE, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
