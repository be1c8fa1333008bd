//! `svclab compare`

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    /// The baseline: a bench folder, or its bench.json.
    pub base: PathBuf,
    /// The run to judge against it.
    pub candidate: PathBuf,
    /// How much worse a figure may get before it counts as a regression,
    /// as a percentage (`10%`) or a fraction (`0.1`).
    #[arg(long, default_value = "10%", value_parser = parse_threshold)]
    pub threshold: f64,
    /// Compare backend OLD's figures in BASE with backend NEW's in
    /// CANDIDATE instead of like with like: a version upgrade, e.g.
    /// `--pair kube-proxy:nftables@v1.34.4=kube-proxy:nftables@v1.37.2`
    /// (BASE and CANDIDATE may be the same folder). Repeatable; other
    /// backends are left out.
    #[arg(long = "pair", value_name = "OLD=NEW", value_parser = parse_pair)]
    pub pairs: Vec<(String, String)>,
    /// Output format (json: every row and the verdict, see
    /// results/README.md).
    #[arg(short = 'o', long = "output", value_name = "FORMAT", value_enum, default_value_t = super::Format::Text)]
    pub output: super::Format,
}

/// `10%` or `0.1`: how much worse a figure may get.
pub fn parse_threshold(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|e| format!("{s:?} is not a threshold like 10% or 0.1: {e}"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{s:?}: the threshold must be zero or more"))
    }
}

/// `OLD=NEW`: two backend names.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((old, new)) if !old.trim().is_empty() && !new.trim().is_empty() => {
            Ok((old.trim().to_string(), new.trim().to_string()))
        }
        _ => Err(format!(
            "{s:?} is not a pair of backends like \
             kube-proxy:nftables@v1.34.4=kube-proxy:nftables@v1.37.2"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_parse() {
        assert!(parse_pair("a=").is_err());
        assert!(parse_pair("kube-proxy:nftables").is_err());
        assert_eq!(parse_pair("a=b").unwrap(), ("a".into(), "b".into()));
    }

    #[test]
    fn thresholds_parse() {
        assert_eq!(parse_threshold("10%").unwrap(), 0.1);
        assert_eq!(parse_threshold("0.25").unwrap(), 0.25);
        assert!(parse_threshold("-5%").is_err());
        assert!(parse_threshold("ten").is_err());
    }
}
