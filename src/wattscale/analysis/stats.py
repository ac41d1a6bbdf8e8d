"""Repeated-measures statistics for one within-subject factor.

Input is a long ``pandas.DataFrame`` with one row per (subject, level): ``subject`` is the repetition index
(e.g. a seed), ``within`` the factor (e.g. ``data_tokens``) and ``dv`` the metric (e.g. ``tokens_per_joule``).

Defaults and choices, the same for every function:

- **Complete cases only.** A subject missing any level of the factor is dropped before any test; the results
  report ``n_subjects_used`` and ``dropped_subjects``. Duplicate (subject, level) rows are an error, not averaged.
- **Level order** is the sorted order of the factor's values (numeric for numbers); it is the order of
  ``levels``, of the pairs in :func:`pairwise` and the predicted order in :func:`trend_test`.
- **Bad input** raises :class:`wattscale.errors.ConfigError` with a one-line message naming the field: unknown
  column, a metric with non-finite values (the count is given), a non-numeric metric, duplicate rows, a factor
  with fewer than 2 levels, fewer than 2 complete subjects ("not computable").
- **Numerical failure is "not computable", never a crash.** A test whose numerics fail on the data (a singular
  matrix, zero variance, a fit that does not converge) or whose statistic comes out NaN/inf raises
  :class:`NotComputable` (a ConfigError) naming the test and the cause; `compare_metric` and the dynamics list
  it under ``not_computable``. The mixed model keeps a result with a WARNING note when the optimiser only warns
  (subject variance at 0), and is not computable when no subject has two observations.
- :func:`rm_anova`: ``pingouin.rm_anova(correction=True, detailed=True)``. Effect size is generalised eta
  squared (Olejnik & Algina 2003; one-way within: SS_effect / (SS_effect + SS_subjects + SS_error)).
  Sphericity: Mauchly's W and p, alpha = 0.05 (``SPHERICITY_ALPHA``); epsilon is Greenhouse-Geisser and the
  GG-corrected dfs are ``eps * df1`` and ``eps * df2``. With 2 levels sphericity holds trivially: W = 1,
  p = 1, epsilon = 1 and the note says so. With fewer subjects than levels Mauchly's test is undefined:
  W and p are NaN and the note says so (the GG correction is still reported).
- :func:`pairwise`: two-sided paired t-tests (``scipy.stats.ttest_rel``) for every pair of levels, difference
  ``mean(a - b)`` with a 95% confidence interval; p adjusted over all pairs by Bonferroni and by Holm
  (``pingouin.multicomp``; statsmodels' ``multipletests`` gives the same values but runs a full garbage
  collection per Holm call, ~0.25 s in a process holding torch). Effect size is Cohen's d_z = mean(a - b) / sd(a - b),
  sd with ddof = 1 (not Hedges g).
- :func:`friedman`: ``pingouin.friedman`` (chi-squared method, no tie correction beyond pingouin's);
  Kendall's W as effect size.
- :func:`trend_test`: Page's L (``scipy.stats.page_trend_test``, method "auto": exact for small designs,
  normal approximation otherwise), one-sided for the predicted direction; ``increasing=False`` predicts
  a decrease with the level order. Also states whether the per-level means are strictly monotonic.
- :func:`apa_sentence`: APA 7 numbers: two decimals for test statistics, no leading zero for p and effect
  sizes bounded by 1, ``p < .001`` below .001, otherwise p to three decimals.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from wattscale.analysis.computable import NotComputable, computing, require_finite
from wattscale.confidence import CI_LEVEL
from wattscale.errors import ConfigError
from wattscale.jsonout import JsonResult

SPHERICITY_ALPHA = 0.05
@dataclass(frozen=True)
class RMAnovaResult(JsonResult):
    dv: str
    within: str
    levels: tuple
    n_subjects_used: int
    dropped_subjects: tuple
    f: float
    df1: float
    df2: float
    p: float
    ng2: float
    mauchly_w: float
    mauchly_p: float
    sphericity_violated: bool
    gg_epsilon: float
    df1_gg: float
    df2_gg: float
    p_gg: float
    sphericity_note: str


@dataclass(frozen=True)
class PairwiseResult(JsonResult):
    dv: str
    within: str
    level_a: Any
    level_b: Any
    n_subjects_used: int
    mean_diff: float  # mean(a - b)
    ci95_low: float
    ci95_high: float
    t: float
    df: int
    p_unc: float
    p_bonferroni: float
    p_holm: float
    cohen_dz: float


@dataclass(frozen=True)
class FriedmanResult(JsonResult):
    dv: str
    within: str
    levels: tuple
    n_subjects_used: int
    dropped_subjects: tuple
    chi2: float
    df: int
    p: float
    kendall_w: float


@dataclass(frozen=True)
class TrendResult(JsonResult):
    dv: str
    within: str
    levels: tuple
    n_subjects_used: int
    dropped_subjects: tuple
    direction: str  # "increasing" or "decreasing": the predicted direction tested
    page_l: float
    p: float
    method: str
    level_means: tuple
    strictly_monotonic: bool
    monotonic_statement: str


@dataclass(frozen=True)
class _Prepared:
    wide: pd.DataFrame  # rows: complete subjects, columns: levels in sorted order, values: dv
    long: pd.DataFrame  # the complete subjects only, long form
    dropped: tuple


def _prepare(df: pd.DataFrame, dv: str, within: str, subject: str) -> _Prepared:
    """Validate and reduce to complete subjects. Raises ConfigError naming the bad field."""
    for role, col in (("dv", dv), ("within", within), ("subject", subject)):
        if col not in df.columns:
            raise ConfigError(f"{role}: unknown column {col!r}; columns are {list(df.columns)}")
    data = df[[subject, within, dv]]
    if not pd.api.types.is_numeric_dtype(data[dv]) or pd.api.types.is_bool_dtype(data[dv]):
        raise ConfigError(f"dv: column {dv!r} is not numeric (dtype {data[dv].dtype})")
    n_bad = int((~np.isfinite(data[dv].to_numpy(dtype=float))).sum())
    if n_bad:
        raise ConfigError(f"dv: column {dv!r} has {n_bad} non-finite value(s) (NaN or inf); drop or fix them first")
    if data[[subject, within]].isna().any().any():
        raise ConfigError(f"within/subject: columns {within!r} and {subject!r} must not contain missing values")
    levels = sorted(data[within].unique())
    if len(levels) < 2:
        raise ConfigError(f"within: factor {within!r} has {len(levels)} level(s); at least 2 are needed")
    dup = data.duplicated([subject, within])
    if dup.any():
        raise ConfigError(f"subject: {int(dup.sum())} duplicate ({subject!r}, {within!r}) row(s); aggregate first")
    wide = data.pivot(index=subject, columns=within, values=dv).reindex(columns=levels)
    complete = wide.notna().all(axis=1)
    dropped = tuple(sorted(wide.index[~complete]))
    wide = wide[complete]
    if len(wide) < 2:
        raise ConfigError(
            f"subject: {len(wide)} complete subject(s) (with every level of {within!r}); "
            "at least 2 are needed, statistics not computable"
        )
    values = wide.to_numpy(float)
    if np.ptp(values) == 0:
        raise ConfigError(f"dv: {dv!r} is the same ({values.flat[0]:g}) for every subject and level; nothing to test")
    long = data[data[subject].isin(wide.index)].reset_index(drop=True)
    return _Prepared(wide=wide, long=long, dropped=dropped)


def _check_error_variance(wide: pd.DataFrame, dv: str, within: str) -> None:
    """An RM-ANOVA needs within-subject error: if every subject changes by exactly the same amounts, F is infinite."""
    x = wide.to_numpy(float)
    residual = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
    if float((residual**2).sum()) <= 1e-24 * max(float(((x - x.mean()) ** 2).sum()), 1e-300):
        raise ConfigError(f"dv: every subject's {dv!r} changes across {within!r} by exactly the same amounts (no "
                          "within-subject error); F and the paired tests are undefined")


def _anova_without_sphericity(prep: _Prepared) -> dict[str, float]:
    """F, dfs and p from statsmodels' AnovaRM; generalised eta squared from the sums of squares (module docstring)."""
    from statsmodels.stats.anova import AnovaRM

    long = prep.wide.stack().rename("y").reset_index()
    long.columns = ["subj", "level", "y"]
    table = AnovaRM(long, "y", "subj", within=["level"]).fit().anova_table.iloc[0]
    x = prep.wide.to_numpy(float)
    n, k = x.shape
    ss_effect = n * float(((x.mean(axis=0) - x.mean()) ** 2).sum())
    ss_total = float(((x - x.mean()) ** 2).sum())  # = effect + subjects + error
    return {"F": float(table["F Value"]), "DF": float(table["Num DF"]), "DF2": float(table["Den DF"]),
            "p_unc": float(table["Pr > F"]), "ng2": ss_effect / ss_total}


def rm_anova(df: pd.DataFrame, dv: str, within: str, subject: str) -> RMAnovaResult:
    """One-way repeated-measures ANOVA with Mauchly's test and the Greenhouse-Geisser correction.

    Example: ``rm_anova(runs, dv="tokens_per_joule", within="data_tokens", subject="seed")``.
    """
    prep = _prepare(df, dv, within, subject)
    _check_error_variance(prep.wide, dv, within)
    with computing("RM-ANOVA"):
        result = _rm_anova(prep, dv, within, subject)
    require_finite("RM-ANOVA", F=result.f, p=result.p, p_GG=result.p_gg)
    return result


def _rm_anova(prep: _Prepared, dv: str, within: str, subject: str) -> RMAnovaResult:
    import pingouin as pg

    levels = tuple(prep.wide.columns)
    k, n = len(levels), len(prep.wide)
    # Mauchly's test needs more subjects than levels - 1; pingouin always runs it (and divides by zero for n = 2,
    # k = 3), so without it the F test comes from statsmodels' AnovaRM and epsilon from pingouin alone.
    mauchly_defined = k == 2 or n > k - 1
    if mauchly_defined:
        with warnings.catch_warnings():  # pingouin 0.7 calls a pandas API that pandas 3 deprecates
            warnings.filterwarnings("ignore", message="The inplace keyword")
            aov = pg.rm_anova(data=prep.long, dv=dv, within=within, subject=subject, correction=True, detailed=True)
        row = aov.iloc[0]
        df1, df2 = float(row["DF"]), float(aov.iloc[1]["DF"])
    else:
        row = _anova_without_sphericity(prep)
        df1, df2 = row["DF"], row["DF2"]
    p = float(row["p_unc"])
    if k == 2:
        w, p_w, eps, p_gg = 1.0, 1.0, 1.0, p
        note = "2 levels: sphericity holds trivially (one difference score); no correction needed"
    elif not mauchly_defined:
        from scipy import stats

        eps = float(pg.epsilon(data=prep.long, dv=dv, within=within, subject=subject, correction="gg"))
        w, p_w, p_gg = math.nan, math.nan, float(stats.f.sf(float(row["F"]), eps * df1, eps * df2))
        note = f"Mauchly's test not computable with {n} subjects and {k} levels; Greenhouse-Geisser reported"
    else:
        eps = float(row["eps"])
        w, p_w, p_gg = float(row.get("W_spher", math.nan)), float(row.get("p_spher", math.nan)), float(row["p_GG_corr"])
        if not (math.isfinite(w) and math.isfinite(p_w)):
            w, p_w = math.nan, math.nan
            note = f"Mauchly's test not computable with {n} subjects and {k} levels; Greenhouse-Geisser reported"
        elif p_w < SPHERICITY_ALPHA:
            note = f"sphericity violated (Mauchly p < {SPHERICITY_ALPHA}): use the Greenhouse-Geisser corrected p"
        else:
            note = f"sphericity not rejected (Mauchly p >= {SPHERICITY_ALPHA})"
    violated = bool(math.isfinite(p_w) and p_w < SPHERICITY_ALPHA)
    return RMAnovaResult(
        dv=dv,
        within=within,
        levels=levels,
        n_subjects_used=n,
        dropped_subjects=prep.dropped,
        f=float(row["F"]),
        df1=df1,
        df2=df2,
        p=p,
        ng2=float(row["ng2"]),
        mauchly_w=w,
        mauchly_p=p_w,
        sphericity_violated=violated,
        gg_epsilon=eps,
        df1_gg=eps * df1,
        df2_gg=eps * df2,
        p_gg=p_gg,
        sphericity_note=note,
    )


def pairwise(df: pd.DataFrame, dv: str, within: str, subject: str) -> list[PairwiseResult]:
    """Paired t-tests for every pair of levels (in level order), Bonferroni and Holm adjusted over all pairs."""
    prep = _prepare(df, dv, within, subject)
    with computing("paired t-tests"):
        return _pairwise(prep, dv, within)


def _pairwise(prep: _Prepared, dv: str, within: str) -> list[PairwiseResult]:
    import pingouin as pg
    from scipy import stats

    n = len(prep.wide)
    rows = []
    for a, b in combinations(prep.wide.columns, 2):
        xa, xb = prep.wide[a].to_numpy(float), prep.wide[b].to_numpy(float)
        diff = xa - xb
        res = stats.ttest_rel(xa, xb)
        ci = res.confidence_interval(CI_LEVEL)
        sd = float(np.std(diff, ddof=1))
        if sd == 0:
            raise ConfigError(f"dv: every subject's {dv!r} differs by exactly {float(diff[0]):g} between {within} "
                              f"{a} and {b}; the paired t-test is undefined")
        dz = float(np.mean(diff)) / sd
        require_finite(f"paired t-test {a} vs {b}", t=res.statistic, p=res.pvalue)
        rows.append(
            (a, b, float(np.mean(diff)), float(ci.low), float(ci.high), float(res.statistic), float(res.pvalue), dz)
        )
    p_unc = [r[6] for r in rows]
    p_bonf = pg.multicomp(p_unc, method="bonf")[1]
    p_holm = pg.multicomp(p_unc, method="holm")[1]
    return [
        PairwiseResult(
            dv=dv,
            within=within,
            level_a=a,
            level_b=b,
            n_subjects_used=n,
            mean_diff=md,
            ci95_low=lo,
            ci95_high=hi,
            t=t,
            df=n - 1,
            p_unc=p,
            p_bonferroni=float(pb),
            p_holm=float(ph),
            cohen_dz=dz,
        )
        for (a, b, md, lo, hi, t, p, dz), pb, ph in zip(rows, p_bonf, p_holm, strict=True)
    ]


def friedman(df: pd.DataFrame, dv: str, within: str, subject: str) -> FriedmanResult:
    """Friedman test (non-parametric check of the RM-ANOVA) with Kendall's W."""
    import pingouin as pg

    prep = _prepare(df, dv, within, subject)
    with computing("Friedman test"):
        res = pg.friedman(data=prep.long, dv=dv, within=within, subject=subject).iloc[0]
    require_finite("Friedman test", Q=res["Q"], p=res["p_unc"])
    return FriedmanResult(
        dv=dv,
        within=within,
        levels=tuple(prep.wide.columns),
        n_subjects_used=len(prep.wide),
        dropped_subjects=prep.dropped,
        chi2=float(res["Q"]),
        df=int(res["ddof1"]),
        p=float(res["p_unc"]),
        kendall_w=float(res["W"]),
    )


def trend_test(df: pd.DataFrame, dv: str, within: str, subject: str, increasing: bool) -> TrendResult:
    """Page's L test that the metric moves in the predicted direction along the ordered levels."""
    from scipy import stats

    prep = _prepare(df, dv, within, subject)
    levels = tuple(prep.wide.columns)
    if len(levels) < 3:
        raise ConfigError(f"within: Page's L needs at least 3 ordered levels of {within!r}, got {len(levels)}; "
                          "with 2 levels the paired t-test is the trend test")
    data = prep.wide.to_numpy(float)  # (n_subjects, k_levels), columns in level order
    ordered = data if increasing else data[:, ::-1]  # page_trend_test predicts increase left to right
    with computing("Page's L trend test"):
        res = stats.page_trend_test(ordered)
    require_finite("Page's L trend test", L=res.statistic, p=res.pvalue)
    means = tuple(float(m) for m in data.mean(axis=0))
    steps = np.diff(means)
    if np.all(steps > 0):
        mono, statement = True, "per-level means are strictly increasing"
    elif np.all(steps < 0):
        mono, statement = True, "per-level means are strictly decreasing"
    else:
        mono, statement = False, "per-level means are not strictly monotonic"
    return TrendResult(
        dv=dv,
        within=within,
        levels=levels,
        n_subjects_used=len(prep.wide),
        dropped_subjects=prep.dropped,
        direction="increasing" if increasing else "decreasing",
        page_l=float(res.statistic),
        p=float(res.pvalue),
        method=str(res.method),
        level_means=means,
        strictly_monotonic=mono,
        monotonic_statement=statement,
    )


def _fmt_p(p: float) -> str:
    if p < 0.001:
        return "p < .001"
    return f"p = {_no_zero(p, 3)}"


def _no_zero(x: float, digits: int) -> str:
    """APA: no leading zero for values bounded by 1 (``0.532`` -> ``.53``)."""
    s = f"{x:.{digits}f}"
    return s.replace("0.", ".", 1) if s.startswith(("0.", "-0.")) else s


def _fmt_df(x: float) -> str:
    return str(int(round(x))) if abs(x - round(x)) < 1e-9 else f"{x:.2f}"


def apa_sentence(result: RMAnovaResult | FriedmanResult) -> str:
    """APA-style report, e.g. ``F(2, 98) = 77.32, p < .001, η²G = .53``.

    When Mauchly's test rejects sphericity (p < .05), or cannot be computed with 3+ levels (too few subjects, so
    sphericity is unknown), the dfs and p are Greenhouse-Geisser corrected and the sentence says why. A Friedman
    result gives ``χ²(2) = 7.00, p = .030, W = .44``.
    """
    if isinstance(result, FriedmanResult):
        return f"χ²({result.df}) = {result.chi2:.2f}, {_fmt_p(result.p)}, W = {_no_zero(result.kendall_w, 2)}"
    if not isinstance(result, RMAnovaResult):
        raise ConfigError(f"result: expected RMAnovaResult or FriedmanResult, got {type(result).__name__}")
    eta = f"η²G = {_no_zero(result.ng2, 2)}"
    if len(result.levels) > 2 and not math.isfinite(result.mauchly_w):
        return (
            f"F({_fmt_df(result.df1_gg)}, {_fmt_df(result.df2_gg)}) = {result.f:.2f}, {_fmt_p(result.p_gg)}, {eta} "
            f"(Greenhouse-Geisser corrected, ε = {_no_zero(result.gg_epsilon, 2)}; sphericity not testable with "
            f"{result.n_subjects_used} subjects and {len(result.levels)} levels)"
        )
    if result.sphericity_violated:
        return (
            f"F({_fmt_df(result.df1_gg)}, {_fmt_df(result.df2_gg)}) = {result.f:.2f}, {_fmt_p(result.p_gg)}, {eta} "
            f"(Greenhouse-Geisser corrected, ε = {_no_zero(result.gg_epsilon, 2)}; sphericity violated, "
            f"Mauchly's W = {_no_zero(result.mauchly_w, 2)}, {_fmt_p(result.mauchly_p)})"
        )
    return f"F({_fmt_df(result.df1)}, {_fmt_df(result.df2)}) = {result.f:.2f}, {_fmt_p(result.p)}, {eta}"


@dataclass(frozen=True)
class MixedModelResult(JsonResult):
    dv: str
    within: str
    levels: tuple
    n_subjects: int
    n_observations: int
    lr_chi2: float
    df: int
    p: float
    converged: bool
    note: str


def mixed_model_test(df: pd.DataFrame, dv: str, within: str, subject: str) -> MixedModelResult:
    """Likelihood-ratio test of the factor in a linear mixed model with a random intercept per subject.

    The test that still applies to unbalanced designs (subjects missing some levels, several runs per
    cell): it uses every row, unlike the RM-ANOVA, Friedman and Page tests, which use complete subjects.
    ``statsmodels`` MixedLM ``dv ~ C(within)`` vs ``dv ~ 1``, both fitted by maximum likelihood (not
    REML, so the likelihoods of models with different fixed effects are comparable); LR = 2 (llf_full -
    llf_null) against chi-squared with (levels - 1) df. For a balanced design with a positive subject
    variance this equals n (k - 1) ln(1 + F / (n - 1)), a function of the RM-ANOVA F (tested).
    """
    import statsmodels.formula.api as smf
    from scipy import stats
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    for role, col in (("dv", dv), ("within", within), ("subject", subject)):
        if col not in df.columns:
            raise ConfigError(f"{role}: unknown column {col!r}; columns are {list(df.columns)}")
    data = pd.DataFrame({"y": pd.to_numeric(df[dv], errors="coerce"), "level": df[within], "subj": df[subject]})
    data = data[np.isfinite(data["y"].to_numpy(dtype=float))].dropna(subset=["level", "subj"]).reset_index(drop=True)
    levels = tuple(sorted(data["level"].unique()))
    if len(levels) < 2:
        raise ConfigError(f"within: factor {within!r} has {len(levels)} level(s); at least 2 are needed")
    if data["subj"].nunique() < 2:
        raise ConfigError(f"subject: {data['subj'].nunique()} subject(s); at least 2 are needed for a mixed model")
    if np.ptp(data["y"].to_numpy(float)) == 0:
        raise NotComputable(f"mixed model not computable: {dv!r} is the same for every observation")
    counts = data.groupby("subj").size()
    if int(counts.max()) < 2:
        raise NotComputable(f"mixed model not computable: every subject ({subject!r}) has one observation, so the "
                            "subject variance cannot be told from the residual; it needs a subject with 2 or more")
    if len(data) <= len(levels) + 1:
        raise NotComputable(f"mixed model not computable: {len(data)} observation(s) for {len(levels)} level "
                            f"effects and 2 variances; it needs more than {len(levels) + 1}")
    data["level"] = pd.Categorical(data["level"], categories=list(levels))
    with computing("mixed model"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        full = smf.mixedlm("y ~ C(level)", data, groups=data["subj"]).fit(reml=False)
        null = smf.mixedlm("y ~ 1", data, groups=data["subj"]).fit(reml=False)
        # Subject variance 0 is on the boundary of the parameter space, where MixedLM's optimisers often stop
        # short ("failed to converge", "on the boundary"); there the model is ordinary least squares, so each
        # likelihood is at least the OLS one and the LR test uses the larger of the two.
        llf_full = max(float(full.llf), float(smf.ols("y ~ C(level)", data).fit().llf))
        llf_null = max(float(null.llf), float(smf.ols("y ~ 1", data).fit().llf))
    require_finite("mixed model", llf_full=llf_full, llf_null=llf_null)
    converged = bool(full.converged and null.converged) and not any(
        issubclass(w.category, ConvergenceWarning) for w in caught)
    lr = max(0.0, 2.0 * (llf_full - llf_null))
    dof = len(levels) - 1
    note = "random intercept per subject, ML fits, likelihood-ratio test; uses every observation"
    if not converged:
        note += ("; WARNING: the optimiser did not converge cleanly (typically the subject variance at its "
                 "boundary 0, where the OLS likelihood is used), read p with care")
    return MixedModelResult(dv=dv, within=within, levels=levels, n_subjects=int(data["subj"].nunique()),
                            n_observations=len(data), lr_chi2=lr, df=dof, p=float(stats.chi2.sf(lr, dof)),
                            converged=converged, note=note)
