//! Load-balance distribution: K connections per Service, counted per
//! endpoint, tested against uniform with Pearson's chi-square.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};

use super::{CheckResult, Ctx, Evidence, Verdict, tally};
use crate::probe::Outcome;

/// Per-endpoint counts for one Service port, and the test's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BalanceTable {
    pub target: String,
    /// (endpoint, connections), every expected endpoint listed.
    pub counts: Vec<(String, u64)>,
    pub connections: u64,
    pub chi_square: f64,
    pub degrees_of_freedom: u64,
    pub p_value: f64,
    /// Most-used over least-used endpoint (infinite if one got none).
    pub max_min_ratio: f64,
    pub min_p_value: f64,
    pub pass: bool,
    /// The p-value of a first sample that failed the test, when this table
    /// is the fresh sample drawn to confirm it (see [`confirm`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_p_value: Option<f64>,
}

/// Pearson's chi-square statistic against a uniform distribution, and its
/// p-value (the probability of a statistic at least this large if the
/// choice really is uniform).
pub fn chi_square_uniform(counts: &[u64]) -> (f64, f64) {
    let k = counts.len();
    let n: u64 = counts.iter().sum();
    if k < 2 || n == 0 {
        return (0.0, 1.0);
    }
    let expected = n as f64 / k as f64;
    let stat: f64 = counts
        .iter()
        .map(|&c| {
            let d = c as f64 - expected;
            d * d / expected
        })
        .sum();
    let dist = ChiSquared::new((k - 1) as f64).expect("k >= 2 gives a valid distribution");
    (stat, 1.0 - dist.cdf(stat))
}

pub fn table(target: String, counts: Vec<(String, u64)>, min_p: f64) -> BalanceTable {
    let values: Vec<u64> = counts.iter().map(|(_, c)| *c).collect();
    let (chi, p) = chi_square_uniform(&values);
    let max = values.iter().copied().max().unwrap_or(0) as f64;
    let min = values.iter().copied().min().unwrap_or(0) as f64;
    BalanceTable {
        target,
        connections: values.iter().sum(),
        chi_square: chi,
        degrees_of_freedom: values.len().saturating_sub(1) as u64,
        p_value: p,
        max_min_ratio: if min > 0.0 { max / min } else { f64::INFINITY },
        min_p_value: min_p,
        pass: p >= min_p,
        counts,
        first_p_value: None,
    }
}

/// A table whose first sample failed is only a failure if a fresh sample of
/// the same size fails too. One Service at p < 0.001 is a 1-in-1000 chance
/// even when the choice is uniform, and a behaviours run tests about eight
/// Services on each of five or more backends, so a single sample would fail
/// about one CI run in 25 with nothing wrong. A real bias (the
/// `wrong-probability` fault gives p < 1e-20 at K = 2000) fails both; a
/// uniform choice fails both with probability `min_p`², under 1e-6.
pub fn confirm(first: &BalanceTable, mut second: BalanceTable) -> BalanceTable {
    second.first_p_value = Some(first.p_value);
    second
}

pub async fn check(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let k = ctx.settings.balance_connections;
    let clients = ctx.clients();
    if clients.is_empty() {
        return Ok(CheckResult::skip(name, "the scenario has no client pods"));
    }
    let targets: Vec<_> = ctx
        .targets()
        .into_iter()
        .filter(|t| !t.itp_local && !t.affinity && t.cluster().len() >= 2)
        .collect();
    let mut tables = Vec::new();
    let mut evidence = Vec::new();
    for t in &targets {
        let eps = t.cluster();
        if (k as f64) / (eps.len() as f64) < 5.0 {
            evidence.push(Evidence {
                vantage: "pods".into(),
                target: t.label(),
                expected: format!(
                    "at least 5 connections per endpoint ({} endpoints)",
                    eps.len()
                ),
                observed: format!(
                    "K = {k} is too small for a chi-square test; raise spec.balance.connections"
                ),
                ok: false,
                probes: 0,
            });
            continue;
        }
        let (mut tb, mut results, mut stray) = sample(ctx, t, &clients, k).await?;
        if !tb.pass && stray == 0 {
            let (second, r2, s2) = sample(ctx, t, &clients, k).await?;
            tb = confirm(&tb, second);
            results = r2;
            stray = s2;
        }
        evidence.push(Evidence {
            vantage: format!("{} client pods", clients.len()),
            target: t.label(),
            expected: format!(
                "uniform over {} endpoints (p >= {})",
                eps.len(),
                tb.min_p_value
            ),
            observed: format!(
                "{}chi2 = {:.2} (df {}), p = {:.4}, max/min = {:.2}{}",
                match tb.first_p_value {
                    Some(p1) => format!(
                        "first sample p = {p1:.4}, below the threshold; a fresh sample of {k}: "
                    ),
                    None => String::new(),
                },
                tb.chi_square,
                tb.degrees_of_freedom,
                tb.p_value,
                tb.max_min_ratio,
                if stray > 0 {
                    format!("; {stray} not answered by an endpoint: {}", tally(&results))
                } else {
                    String::new()
                }
            ),
            ok: tb.pass && stray == 0,
            probes: results.len(),
        });
        tables.push(tb);
    }
    let mut r = CheckResult::from_evidence(
        name,
        evidence,
        "the scenario has no Service with 2 or more endpoints",
    );
    r.balance = tables;
    if r.verdict == Verdict::Skip {
        r.balance.clear();
    }
    Ok(r)
}

/// K connections to `t`, spread over the client pods, counted per endpoint:
/// the table, every probe's result, and how many no endpoint answered.
async fn sample(
    ctx: &mut Ctx<'_>,
    t: &super::expect::Target,
    clients: &[super::Vantage],
    k: usize,
) -> anyhow::Result<(BalanceTable, Vec<crate::probe::ProbeResult>, usize)> {
    let eps = t.cluster();
    let mut results = Vec::with_capacity(k);
    for (i, v) in clients.iter().enumerate() {
        let share = k / clients.len() + usize::from(i < k % clients.len());
        let spec = ctx.spec(t.vip_addr(), t.protocol);
        results.extend(ctx.probe(v, vec![spec; share]).await?);
    }
    let mut counts: BTreeMap<String, u64> = eps.iter().map(|e| (e.pod.clone(), 0)).collect();
    let mut stray = 0;
    for r in &results {
        match (&r.outcome, &r.answer) {
            (Outcome::Answered, Some(w)) if counts.contains_key(&w.pod) => {
                *counts.get_mut(&w.pod).expect("checked") += 1;
            }
            _ => stray += 1,
        }
    }
    let tb = table(
        t.label(),
        counts.into_iter().collect(),
        ctx.settings.min_p_value,
    );
    Ok((tb, results, stray))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    /// Draws like an iptables `statistic --mode random` chain: endpoint i
    /// is taken with probability `p(i)` if no earlier one was.
    fn draw_chain(n: usize, k: usize, p: impl Fn(usize) -> f64, seed: u64) -> Vec<u64> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut counts = vec![0u64; n];
        for _ in 0..k {
            let pick = (0..n - 1).find(|&i| rng.random_bool(p(i))).unwrap_or(n - 1);
            counts[pick] += 1;
        }
        counts
    }

    #[test]
    fn kube_proxy_chain_is_uniform_and_one_over_n_everywhere_is_not() {
        let k = 2000;
        for n in [2usize, 20, 50] {
            // kube-proxy: 1/n, 1/(n-1), ..., last unconditional.
            let good = draw_chain(n, k * n / 20 + k, |i| 1.0 / (n - i) as f64, 42);
            let (_, p) = chi_square_uniform(&good);
            assert!(
                p >= 0.001,
                "n={n}: the correct chain failed uniformity: p={p}"
            );
        }
        for n in [20usize, 50] {
            let bad = draw_chain(n, k, |_| 1.0 / n as f64, 42);
            let (_, p) = chi_square_uniform(&bad);
            assert!(p < 0.001, "n={n}: 1/n at every step passed: p={p}");
        }
    }

    #[test]
    fn statistic_matches_a_hand_computed_case() {
        // counts 60/40, expected 50/50: chi2 = (100 + 100) / 50 = 4, df 1.
        let (chi, p) = chi_square_uniform(&[60, 40]);
        assert!((chi - 4.0).abs() < 1e-9);
        assert!((p - 0.0455).abs() < 1e-3, "{p}");
        let t = table("x".into(), vec![("a".into(), 60), ("b".into(), 40)], 0.001);
        assert!((t.max_min_ratio - 1.5).abs() < 1e-9);
        assert!(t.pass);
        let t = table("x".into(), vec![("a".into(), 100), ("b".into(), 0)], 0.001);
        assert!(!t.pass && t.max_min_ratio.is_infinite());
    }

    #[test]
    fn a_failed_first_sample_is_judged_by_the_fresh_one_and_kept_as_evidence() {
        let first = table(
            "x".into(),
            vec![("a".into(), 1077), ("b".into(), 923)],
            0.001,
        );
        assert!(!first.pass, "{}", first.p_value);
        let fresh = table(
            "x".into(),
            vec![("a".into(), 1010), ("b".into(), 990)],
            0.001,
        );
        let t = confirm(&first, fresh);
        assert!(t.pass);
        assert_eq!(t.first_p_value, Some(first.p_value));
        // A real bias fails again: two draws of min(U, U') over 2 endpoints.
        let biased = draw_chain(2, 2000, |_| 0.75, 7);
        let t = confirm(
            &first,
            table(
                "x".into(),
                vec![("a".into(), biased[0]), ("b".into(), biased[1])],
                0.001,
            ),
        );
        assert!(!t.pass, "p = {}", t.p_value);
    }
}
