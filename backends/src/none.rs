//! The `none` backend: programs nothing. It is the baseline every
//! measurement is compared with, and a test double for the agent.

use crate::model::NodeContext;
use crate::{Backend, BackendError, BackendKind, BackendStats, SyncOutcome, SyncRequest};

#[derive(Debug, Default)]
pub struct NoneBackend {
    service_ports: u64,
}

impl Backend for NoneBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::None
    }

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
