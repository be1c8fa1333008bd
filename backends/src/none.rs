//! The `none` backend: programs nothing. It is the baseline every
//! measurement is compared with, and a test double for the agent.

use crate::model::NodeContext;
use crate::{
    Backend, BackendError, BackendSpec, BackendStats, Evidence, Feature, SyncOutcome, SyncRequest,
    Trace,
};

pub const SPEC: BackendSpec = BackendSpec {
    name: "none",
    capability: || Ok(()),
    limitations: |_| {
        vec![(
            Feature::Dnat,
            "the none backend programs no rules (it is the baseline)".to_string(),
        )]
    },
    create: |_| Box::new(NoneBackend::default()),
    trace: Trace {
        notes: Some("no backend programs rules: nothing rewrites the packet"),
        evidence: Evidence::Nothing,
    },
    floor: None,
};

#[derive(Debug, Default)]
pub struct NoneBackend {
    service_ports: u64,
}

impl Backend for NoneBackend {
    fn setup(&mut self, _node: &NodeContext) -> Result<(), BackendError> {
        Ok(())
    }

    fn sync(&mut self, req: &SyncRequest<'_>) -> Result<SyncOutcome, BackendError> {
        self.service_ports = req.state.services.len() as u64;
        Ok(SyncOutcome {
            rules: 0,
            written: 0,
        })
    }

    fn stats(&mut self) -> Result<BackendStats, BackendError> {
        Ok(BackendStats {
            rules: 0,
            detail: serde_json::json!({ "servicePorts": self.service_ports }),
        })
    }

    fn cleanup(&mut self) -> Result<(), Vec<BackendError>> {
        Ok(())
    }
}
