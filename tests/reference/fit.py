#!/usr/bin/env python3
"""Reference fits for samkor's statistical methods, on pooled data.

Usage: fit.py SPEC.json, where SPEC names a CSV written from the pooled
registers and what to fit:
  {"kind": "glm", "csv": "...", "formula": "y ~ x + C(z)", "family": "binomial", "offset": "o" | null}
  {"kind": "km", "csv": "..."}   (columns stratum, duration, event)
Prints JSON: for glm the coefficients in model order with standard errors,
z, p-values and 95 % intervals, deviance, AIC and n (statsmodels GLM); for km
per stratum the survival function and its 95 % log(-log) interval at each
event or censoring time (lifelines KaplanMeierFitter).
"""
import json
import re
import sys

import numpy as np
import pandas as pd


def glm(spec):
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    data = pd.read_csv(spec["csv"], keep_default_na=False, na_values=[""])
    for column in spec.get("text", []):
        data[column] = data[column].astype(str)
    family = {
        "binomial": sm.families.Binomial(),
        "poisson": sm.families.Poisson(),
        "gaussian": sm.families.Gaussian(),
    }[spec["family"]]
    offset = data[spec["offset"]] if spec.get("offset") else None
    # patsy has no offset(); statsmodels takes it as an argument.
    formula = re.sub(r"\s*\+\s*offset\([^)]*\)", "", spec["formula"])
    fit = smf.glm(formula, data=data, family=family, offset=offset).fit(tol=1e-12)
    ci = fit.conf_int(0.05)
    return {
        "terms": list(fit.params.index),
        "estimate": list(fit.params.values),
        "std_error": list(fit.bse.values),
        "z": list(fit.tvalues.values),
        "p_value": list(fit.pvalues.values),
        "ci_lower": list(ci[0].values),
        "ci_upper": list(ci[1].values),
        "deviance": fit.deviance,
        "aic": fit.aic,
        "n": fit.nobs,
    }


def km(spec):
    from lifelines import KaplanMeierFitter

    data = pd.read_csv(spec["csv"], keep_default_na=False, na_values=[""])
    out = {}
    for stratum, rows in data.groupby("stratum"):
        kmf = KaplanMeierFitter(alpha=0.05)
        kmf.fit(rows["duration"], rows["event"])
        ci = kmf.confidence_interval_
        times = [float(t) for t in kmf.survival_function_.index if t > 0]
        out[str(stratum)] = {
            "time": times,
            "survival": [float(kmf.survival_function_.loc[t].iloc[0]) for t in times],
            "ci_lower": [float(ci.loc[t].iloc[0]) for t in times],
            "ci_upper": [float(ci.loc[t].iloc[1]) for t in times],
        }
    return out


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    result = glm(spec) if spec["kind"] == "glm" else km(spec)
    json.dump(result, sys.stdout, default=lambda x: float(x) if isinstance(x, np.floating) else str(x))


if __name__ == "__main__":
    main()
