"""wattscale.analysis.stats against independent computations: numpy by hand, scipy, statsmodels AnovaRM."""

from __future__ import annotations

import json
import math
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.anova import AnovaRM

from wattscale.analysis.stats import (
    FriedmanResult,
    RMAnovaResult,
    apa_sentence,
    friedman,
    pairwise,
    rm_anova,
    trend_test,
)
from wattscale.errors import ConfigError

# 4 subjects x 3 levels, small integers: every sum of squares can be checked on paper.
HAND = np.array(
    [
        [10.0, 8.0, 5.0],
        [12.0, 9.0, 7.0],
        [9.0, 8.0, 3.0],
        [11.0, 7.0, 7.0],
    ]
)
LEVELS = [1_000, 2_000, 4_000]


def to_long(wide: np.ndarray, levels=None) -> pd.DataFrame:
    levels = levels if levels is not None else list(range(wide.shape[1]))
    rows = [(s, lvl, float(wide[s, j])) for s in range(wide.shape[0]) for j, lvl in enumerate(levels)]
    return pd.DataFrame(rows, columns=["seed", "data_tokens", "tokens_per_joule"])


def hand_anova(wide: np.ndarray) -> dict[str, float]:
    n, k = wide.shape
    grand = wide.mean()
    ss_levels = n * ((wide.mean(axis=0) - grand) ** 2).sum()
    ss_subjects = k * ((wide.mean(axis=1) - grand) ** 2).sum()
    ss_total = ((wide - grand) ** 2).sum()
    ss_error = ss_total - ss_levels - ss_subjects
    df1, df2 = k - 1, (k - 1) * (n - 1)
    f = (ss_levels / df1) / (ss_error / df2)
    return {
        "f": f,
        "df1": df1,
        "df2": df2,
        "p": sps.f.sf(f, df1, df2),
        "ng2": ss_levels / (ss_levels + ss_subjects + ss_error),
    }


def hand_gg_epsilon(wide: np.ndarray) -> float:
    k = wide.shape[1]
    s = np.cov(wide, rowvar=False)
    dc = s - s.mean(axis=0, keepdims=True) - s.mean(axis=1, keepdims=True) + s.mean()
    return float(np.trace(dc) ** 2 / ((k - 1) * (dc**2).sum()))


def hand_mauchly(wide: np.ndarray) -> tuple[float, float]:
    n, k = wide.shape
    # orthonormal contrasts (k x k-1), orthogonal to the ones vector
    q, _ = np.linalg.qr(np.column_stack([np.ones(k), np.eye(k)[:, : k - 1]]))
    c = q[:, 1:]
    m = c.T @ np.cov(wide, rowvar=False) @ c
    w = np.linalg.det(m) / (np.trace(m) / (k - 1)) ** (k - 1)
    p_ = k - 1
    chi2 = -(n - 1 - (2 * p_**2 + p_ + 2) / (6 * p_)) * math.log(w)
    return float(w), float(sps.chi2.sf(chi2, p_ * (p_ + 1) / 2 - 1))


def test_hand_sums_of_squares_are_what_the_paper_says():
    # grand mean 8, level means 10.5, 8, 5.5 -> SS_levels = 4 * (6.25 + 0 + 6.25) = 50
    h = hand_anova(HAND)
    assert h["df1"] == 2 and h["df2"] == 6
    assert h["ng2"] == pytest.approx(50 / ((HAND - 8) ** 2).sum())


def test_rm_anova_matches_hand_computation_and_statsmodels():
    df = to_long(HAND, LEVELS)
    res = rm_anova(df, "tokens_per_joule", "data_tokens", "seed")
    h = hand_anova(HAND)
    assert res.f == pytest.approx(h["f"], rel=1e-9)
    assert (res.df1, res.df2) == (h["df1"], h["df2"])
    assert res.p == pytest.approx(h["p"], rel=1e-9)
    assert res.ng2 == pytest.approx(h["ng2"], rel=1e-9)
    assert res.levels == tuple(LEVELS) and res.n_subjects_used == 4 and res.dropped_subjects == ()

    sm = AnovaRM(df, depvar="tokens_per_joule", subject="seed", within=["data_tokens"]).fit().anova_table.iloc[0]
    assert res.f == pytest.approx(sm["F Value"], rel=1e-9)
    assert (res.df1, res.df2) == (sm["Num DF"], sm["Den DF"])
    assert res.p == pytest.approx(sm["Pr > F"], rel=1e-9)


def test_greenhouse_geisser_epsilon_and_corrected_p_by_hand():
    rng = np.random.default_rng(1)
    wide = rng.normal(0, 1, (12, 4)) + rng.normal(0, 2, (12, 1)) + np.array([0.0, 0.5, 0.8, 1.5])
    wide[:, 3] += rng.normal(0, 2, 12)  # unequal variances so epsilon is well below 1
    res = rm_anova(to_long(wide), "tokens_per_joule", "data_tokens", "seed")
    eps = hand_gg_epsilon(wide)
    assert eps < 0.9
    assert res.gg_epsilon == pytest.approx(eps, rel=1e-8)
    assert (res.df1_gg, res.df2_gg) == pytest.approx((3 * eps, 33 * eps))
    assert res.p_gg == pytest.approx(sps.f.sf(hand_anova(wide)["f"], 3 * eps, 33 * eps), rel=1e-8)


def _sphericity_data(violated: bool) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = 40
    subj = rng.normal(0, 3, (n, 1))
    noise = rng.normal(0, 1, (n, 3))
    if violated:
        noise[:, 2] *= 12  # one level far noisier: variances of differences very unequal
    return subj + noise + np.array([0.0, 1.0, 2.0])


@pytest.mark.parametrize("violated", [True, False])
def test_mauchly_violated_and_not(violated):
    wide = _sphericity_data(violated)
    res = rm_anova(to_long(wide), "tokens_per_joule", "data_tokens", "seed")
    w, p = hand_mauchly(wide)
    assert res.mauchly_w == pytest.approx(w, rel=1e-8)
    assert res.mauchly_p == pytest.approx(p, rel=1e-6)
    assert res.sphericity_violated is violated
    if violated:
        assert res.mauchly_p < 1e-6 and "violated" in res.sphericity_note
    else:
        assert res.mauchly_p > 0.5 and "not rejected" in res.sphericity_note


def test_two_levels_sphericity_trivial_and_f_is_t_squared():
    wide = HAND[:, :2]
    res = rm_anova(to_long(wide), "tokens_per_joule", "data_tokens", "seed")
    assert (res.mauchly_w, res.mauchly_p, res.gg_epsilon) == (1.0, 1.0, 1.0)
    assert not res.sphericity_violated and "trivially" in res.sphericity_note
    t = sps.ttest_rel(wide[:, 0], wide[:, 1])
    assert res.f == pytest.approx(t.statistic**2) and res.p == pytest.approx(t.pvalue) and res.p_gg == res.p
    assert not any(isinstance(v, float) and math.isnan(v) for v in res.to_dict().values())


def test_unbalanced_subject_dropped_and_reported():
    extra = np.vstack([HAND, [[20.0, 1.0, 3.0]]])
    df = to_long(extra, LEVELS)
    df = df[~((df.seed == 4) & (df.data_tokens == 2_000))]  # subject 4 misses one level
    res = rm_anova(df, "tokens_per_joule", "data_tokens", "seed")
    assert res.dropped_subjects == (4,) and res.n_subjects_used == 4
    assert res.f == pytest.approx(hand_anova(HAND)["f"])
    assert friedman(df, "tokens_per_joule", "data_tokens", "seed").dropped_subjects == (4,)
    assert all(r.n_subjects_used == 4 for r in pairwise(df, "tokens_per_joule", "data_tokens", "seed"))


def test_pairwise_bonferroni_holm_dz_and_ci_by_hand():
    rng = np.random.default_rng(3)
    wide = rng.normal(0, 1, (10, 4)) + rng.normal(0, 1, (10, 1)) + np.array([0.0, 0.3, 1.0, 1.2])
    res = pairwise(to_long(wide), "tokens_per_joule", "data_tokens", "seed")
    pairs = list(combinations(range(4), 2))
    assert [(r.level_a, r.level_b) for r in res] == pairs
    m = len(pairs)
    p_unc = np.array([sps.ttest_rel(wide[:, a], wide[:, b]).pvalue for a, b in pairs])
    # Holm by hand: sort ascending, multiply by (m - rank), running max, cap at 1
    order = np.argsort(p_unc)
    holm = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_unc[idx]))
        holm[idx] = running
    for r, (a, b), p, ph in zip(res, pairs, p_unc, holm, strict=True):
        d = wide[:, a] - wide[:, b]
        n = len(d)
        half = sps.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
        t = d.mean() / (d.std(ddof=1) / math.sqrt(n))
        assert r.t == pytest.approx(t) and r.df == n - 1
        assert r.p_unc == pytest.approx(2 * sps.t.sf(abs(t), n - 1))
        assert r.p_bonferroni == pytest.approx(min(1.0, p * m))
        assert r.p_holm == pytest.approx(ph)
        assert r.mean_diff == pytest.approx(d.mean())
        assert (r.ci95_low, r.ci95_high) == pytest.approx((d.mean() - half, d.mean() + half))
        assert r.cohen_dz == pytest.approx(d.mean() / d.std(ddof=1))


def test_friedman_matches_scipy():
    rng = np.random.default_rng(5)
    wide = rng.normal(0, 1, (9, 4)) + np.array([0.0, 0.4, 0.8, 1.2])
    res = friedman(to_long(wide), "tokens_per_joule", "data_tokens", "seed")
    ref = sps.friedmanchisquare(*wide.T)
    n, k = wide.shape
    assert res.chi2 == pytest.approx(ref.statistic) and res.p == pytest.approx(ref.pvalue) and res.df == k - 1
    assert res.kendall_w == pytest.approx(ref.statistic / (n * (k - 1)))


def test_page_l_against_hand_computed_tiny_case():
    wide = np.array([[3.0, 2.0, 1.0], [3.0, 1.0, 2.0], [2.0, 3.0, 1.0]])  # decreasing, mostly
    # within-subject ranks for the decreasing prediction (columns reversed): [1,2,3], [2,1,3], [1,3,2]
    # column rank sums 4, 6, 8 -> L = 1*4 + 2*6 + 3*8 = 40
    res = trend_test(to_long(wide), "tokens_per_joule", "data_tokens", "seed", increasing=False)
    assert res.page_l == pytest.approx(40) and res.direction == "decreasing"
    assert res.p == pytest.approx(sps.page_trend_test(wide[:, ::-1]).pvalue)
    assert res.strictly_monotonic and "strictly decreasing" in res.monotonic_statement
    # the opposite prediction: ranks for increasing order, rank sums 8, 6, 4 -> L = 8 + 12 + 12 = 32
    inc = trend_test(to_long(wide), "tokens_per_joule", "data_tokens", "seed", increasing=True)
    assert inc.page_l == pytest.approx(32) and inc.p > res.p


def test_trend_not_monotonic_statement():
    wide = np.array([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    res = trend_test(to_long(wide), "tokens_per_joule", "data_tokens", "seed", increasing=True)
    assert not res.strictly_monotonic and "not strictly monotonic" in res.monotonic_statement


def _anova(**kw) -> RMAnovaResult:
    base = dict(
        dv="y",
        within="x",
        levels=(1, 2, 3),
        n_subjects_used=50,
        dropped_subjects=(),
        f=77.3249,
        df1=2.0,
        df2=98.0,
        p=1e-12,
        ng2=0.5312,
        mauchly_w=0.9,
        mauchly_p=0.4,
        sphericity_violated=False,
        gg_epsilon=0.95,
        df1_gg=1.9,
        df2_gg=93.1,
        p_gg=1e-11,
        sphericity_note="",
    )
    base.update(kw)
    return RMAnovaResult(**base)


def test_apa_sentences():
    assert apa_sentence(_anova()) == "F(2, 98) = 77.32, p < .001, η²G = .53"
    assert apa_sentence(_anova(f=3.1, p=0.0432, ng2=0.049)) == "F(2, 98) = 3.10, p = .043, η²G = .05"
    assert apa_sentence(_anova(p=0.5, ng2=0.004)) == "F(2, 98) = 77.32, p = .500, η²G = .00"
    violated = apa_sentence(
        _anova(
            sphericity_violated=True,
            mauchly_w=0.612,
            mauchly_p=0.0021,
            gg_epsilon=0.7234,
            df1_gg=1.4468,
            df2_gg=70.8932,
            p_gg=0.0321,
        )
    )
    assert violated == (
        "F(1.45, 70.89) = 77.32, p = .032, η²G = .53 (Greenhouse-Geisser corrected, ε = .72; "
        "sphericity violated, Mauchly's W = .61, p = .002)"
    )
    fr = FriedmanResult(
        dv="y",
        within="x",
        levels=(1, 2, 3),
        n_subjects_used=8,
        dropped_subjects=(),
        chi2=7.0,
        df=2,
        p=0.030197,
        kendall_w=0.4375,
    )
    assert apa_sentence(fr) == "χ²(2) = 7.00, p = .030, W = .44"


def test_apa_sentence_from_real_result_and_json_roundtrip():
    res = rm_anova(to_long(HAND, LEVELS), "tokens_per_joule", "data_tokens", "seed")
    eps = hand_gg_epsilon(HAND)  # 4 subjects: Mauchly rejects (p = .03), so the sentence is GG-corrected
    assert res.sphericity_violated
    assert apa_sentence(res).startswith(f"F({2 * eps:.2f}, {6 * eps:.2f}) = 22.50, p = .0")
    assert "Greenhouse-Geisser corrected" in apa_sentence(res)
    assert json.loads(json.dumps(res.to_dict()))["levels"] == LEVELS


@pytest.mark.parametrize(
    ("mutate", "args", "match"),
    [
        (None, ("energy_j", "data_tokens", "seed"), r"dv: unknown column 'energy_j'"),
        (None, ("tokens_per_joule", "steps", "seed"), r"within: unknown column 'steps'"),
        (None, ("tokens_per_joule", "data_tokens", "run"), r"subject: unknown column 'run'"),
        (lambda d: d[d.data_tokens == 1_000], None, r"within: .* 1 level"),
        (lambda d: d[d.seed == 0], None, r"subject: 1 complete subject.*not computable"),
        (
            lambda d: d.assign(tokens_per_joule=d.tokens_per_joule.where(d.seed != 1, np.nan)),
            None,
            r"dv: .* 3 non-finite",
        ),
        (lambda d: d.assign(tokens_per_joule=d.tokens_per_joule.replace(12.0, np.inf)), None, r"dv: .* 1 non-finite"),
        (lambda d: pd.concat([d, d.iloc[:1]]), None, r"subject: 1 duplicate"),
        (lambda d: d.assign(tokens_per_joule="x"), None, r"dv: .* not numeric"),
    ],
)
def test_bad_input_raises_config_error(mutate, args, match):
    df = to_long(HAND, LEVELS)
    df = mutate(df) if mutate else df
    args = args or ("tokens_per_joule", "data_tokens", "seed")
    for fn in (rm_anova, pairwise, friedman):
        with pytest.raises(ConfigError, match=match) as err:
            fn(df, *args)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=match):
        trend_test(df, *args, increasing=False)


def test_mixed_model_lr_equals_the_balanced_closed_form_and_uses_every_row():
    from wattscale.analysis.stats import mixed_model_test

    rng = np.random.default_rng(5)
    n, k = 9, 3
    wide = rng.normal(0, 1, (n, k)) + rng.normal(0, 3, (n, 1)) + np.array([0.0, 0.4, 1.1])
    res = mixed_model_test(to_long(wide), "tokens_per_joule", "data_tokens", "seed")
    # Balanced, subject variance > 0: the ML likelihood ratio is n (k - 1) ln(1 + F / (n - 1)) (derived in the
    # docstring of mixed_model_test), with F the RM-ANOVA's F computed by hand.
    f = hand_anova(wide)["f"]
    assert res.lr_chi2 == pytest.approx(n * (k - 1) * math.log(1 + f / (n - 1)), rel=1e-5)
    assert res.df == 2 and res.p == pytest.approx(sps.chi2.sf(res.lr_chi2, 2), rel=1e-9) and res.converged
    partial = to_long(wide).iloc[1:]  # subject 0 misses a level: the RM tests drop it, the mixed model does not
    assert mixed_model_test(partial, "tokens_per_joule", "data_tokens", "seed").n_observations == n * k - 1
    with pytest.raises(ConfigError, match="at least 2"):
        mixed_model_test(to_long(wide[:1]), "tokens_per_joule", "data_tokens", "seed")


def test_degenerate_data_is_not_computable_not_nan():
    with pytest.raises(ConfigError, match="the same"):
        rm_anova(to_long(np.full((4, 3), 2.0)), "tokens_per_joule", "data_tokens", "seed")
    shifted = np.array([[1.0, 2.0, 4.0]]) + np.arange(4.0)[:, None]  # every subject changes by the same amounts
    with pytest.raises(ConfigError, match="no within-subject error"):
        rm_anova(to_long(shifted), "tokens_per_joule", "data_tokens", "seed")
    with pytest.raises(ConfigError, match="paired t-test is undefined"):
        pairwise(to_long(shifted), "tokens_per_joule", "data_tokens", "seed")
    with pytest.raises(ConfigError, match="at least 3 ordered levels"):
        trend_test(to_long(HAND[:, :2]), "tokens_per_joule", "data_tokens", "seed", increasing=True)


def test_two_subjects_three_levels_uses_statsmodels_and_gg_without_mauchly():
    wide = HAND[:2]
    res = rm_anova(to_long(wide), "tokens_per_joule", "data_tokens", "seed")
    h = hand_anova(wide)
    assert res.f == pytest.approx(h["f"]) and res.p == pytest.approx(h["p"]) and res.ng2 == pytest.approx(h["ng2"])
    assert math.isnan(res.mauchly_w) and "not computable" in res.sphericity_note
    assert res.gg_epsilon == pytest.approx(hand_gg_epsilon(wide))
    eps = hand_gg_epsilon(wide)  # sphericity unknown: the sentence is the conservative, GG-corrected one
    assert eps == pytest.approx(0.5)  # two subjects: a rank-one covariance, epsilon at its bound 1 / (k - 1)
    assert apa_sentence(res).startswith(f"F(1, 1) = {h['f']:.2f}, p = ")
    assert apa_sentence(res).endswith("sphericity not testable with 2 subjects and 3 levels)")
