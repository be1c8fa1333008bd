//! `svclab generate`

use clap::Args;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Services to generate.
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Endpoints (pods) behind each Service.
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    /// Nodes of the lab.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Deployments the Services select from (endpoints are shared among
    /// the Services of one pool).
    #[arg(long, default_value_t = 5)]
    pub pools: usize,
}
