//! Lists a cluster's Services and EndpointSlices (discovery.k8s.io/v1)
//! with `kube`, page by page.

use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::de::DeserializeOwned;

use super::CaptureError;

/// What a capture read from the cluster.
#[derive(Clone, Debug)]
pub struct Listed {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    /// `context @ server`, for the scenario's header.
    pub source: String,
}

/// Objects per list request, and the most requests per kind: 200 pages of
/// 500 are 100k objects, far past what one lab can hold.
const PAGE: u32 = 500;
const MAX_PAGES: usize = 200;

/// Reads the Services and EndpointSlices of every namespace, or of
/// `namespace`, with the credentials of `kubeconfig`'s current context.
pub async fn list(kubeconfig: &Path, namespace: Option<&str>) -> Result<Listed, CaptureError> {
    let path = kubeconfig.display().to_string();
    let bad = |message: String| CaptureError::Kubeconfig {
        path: path.clone(),
        message,
    };
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| bad(e.to_string()))?;
    let context = kc.current_context.clone().unwrap_or_default();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| bad(e.to_string()))?;
    let services = list_all::<Service>(&client, namespace, "Services", &server).await?;
    let slices = list_all::<EndpointSlice>(&client, namespace, "EndpointSlices", &server).await?;
    Ok(Listed {
        services,
        slices,
        source: if context.is_empty() {
            server
        } else {
            format!("{context} @ {server}")
        },
    })
}

async fn list_all<K>(
    client: &Client,
    namespace: Option<&str>,
    what: &'static str,
    server: &str,
) -> Result<Vec<K>, CaptureError>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut lp = ListParams::default().limit(PAGE);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await.map_err(|source| CaptureError::List {
            what,
            server: server.to_string(),
            source,
        })?;
        out.extend(page.items);
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(out);
        }
    }
    Err(CaptureError::TooMany {
        what,
        limit: PAGE as usize * MAX_PAGES,
    })
}
