//! Requests: routing, list, watch, get, writes, and Kubernetes `Status`
//! errors. Every answer is JSON. A request never holds the control plane's
//! lock across an await, and a write either happens whole or not at all.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};

use super::patch::{self, PatchKind};
use super::selector::{FieldSelector, LabelSelector};
use super::{Shared, discovery, table};
use crate::controlplane::ControlPlaneError;
use crate::controlplane::endpoints::TRAFFIC_DISTRIBUTIONS;
use crate::controlplane::store::{Change, EventType, Obj, Resource};

pub type Body = BoxBody<Bytes, Infallible>;

/// Request bodies above this are refused (the API server's limit is 3 MiB).
const MAX_BODY: usize = 3 << 20;

/// An error answered as a Kubernetes `Status`.
#[derive(Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", m)
    }
    fn not_found(r: Resource, name: &str) -> ApiError {
        ApiError {
            details: Some(json!({"name": name, "kind": r.plural()})),
            ..ApiError::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", r.plural()),
            )
        }
    }
    fn invalid(r: Resource, name: &str, causes: Vec<String>) -> ApiError {
        let message = format!("{} \"{name}\" is invalid: {}", r.kind(), causes.join(", "));
        // "field: message", as kubectl prints each cause.
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| match c.split_once(": ") {
                Some((field, m)) if !field.contains(' ') => json!({"field": field, "message": m}),
                _ => json!({"message": c}),
            })
            .collect();
        ApiError {
            details: Some(json!({"name": name, "kind": r.kind(), "causes": causes})),
            ..ApiError::new(422, "Invalid", message)
        }
    }
    fn method(method: &Method, what: &str) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({method} {what})"
            ),
        )
    }

    pub fn status_json(&self) -> Value {
        let mut v = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code});
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

fn full(code: StatusCode, body: Bytes) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(body).boxed())
        .expect("static headers")
}

fn ok_json(code: StatusCode, v: &Value) -> Response<Body> {
    full(code, Bytes::from(v.to_string()))
}

fn error(e: ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    ok_json(code, &e.status_json())
}

/// One request's query parameters (percent-decoded).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            q.unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a resource request points.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn resource_target(group: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let unknown = |p: &str| {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({p})"),
        )
    };
    let find = |plural: &str| Resource::find(group, "v1", plural).ok_or_else(|| unknown(plural));
    let t = match rest {
        [plural] => Target {
            resource: find(plural)?,
            namespace: None,
            name: None,
            sub: None,
        },
        ["namespaces", name] if group.is_empty() => Target {
            resource: Resource::Namespaces,
            namespace: None,
            name: Some(name.to_string()),
            sub: None,
        },
        ["namespaces", ns, plural, tail @ ..] if tail.len() <= 2 => {
            let resource = find(plural)?;
            if !resource.namespaced() {
                return Err(unknown(plural));
            }
            Target {
                resource,
                namespace: Some(ns.to_string()),
                name: tail.first().map(|s| s.to_string()),
                sub: tail.get(1).map(|s| s.to_string()),
            }
        }
        [plural, name] => {
            let resource = find(plural)?;
            if resource.namespaced() {
                return Err(unknown(plural));
            }
            Target {
                resource,
                namespace: None,
                name: Some(name.to_string()),
                sub: None,
            }
        }
        _ => return Err(unknown(&rest.join("/"))),
    };
    Ok(t)
}

pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    Ok(match route(shared, req).await {
        Ok(r) => r,
        Err(e) => error(e),
    })
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query());
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    let get = method == Method::GET;
    let as_table = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(table::wanted);
    match segs.as_slice() {
        ["healthz" | "readyz" | "livez", ..] if get => {
            return Ok(Response::builder()
                .status(200)
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from_static(b"ok")).boxed())
                .expect("static"));
        }
        ["version"] if get => return Ok(ok_json(StatusCode::OK, &discovery::version())),
        ["api"] if get => return Ok(ok_json(StatusCode::OK, &discovery::core_versions())),
        ["apis"] if get => return Ok(ok_json(StatusCode::OK, &discovery::group_list())),
        ["api", "v1"] if get => return Ok(ok_json(StatusCode::OK, &discovery::resource_list(""))),
        ["apis", g, "v1"] if get && discovery::known_group(g) => {
            return Ok(ok_json(StatusCode::OK, &discovery::resource_list(g)));
        }
        ["openapi", "v3"] if get => return Ok(ok_json(StatusCode::OK, &discovery::openapi_root())),
        // The lab's own fault: every open watch ends now (clients resume).
        ["debug", "svclab", "drop-watches"] if method == Method::POST => {
            let open = shared.drop_watches();
            return Ok(ok_json(StatusCode::OK, &json!({"dropped": open})));
        }
        ["openapi", "v3", rest @ ..] if get => {
            if let Some(doc) = discovery::openapi_group(&rest.join("/")) {
                return Ok(ok_json(StatusCode::OK, &doc));
            }
        }
        _ => {}
    }
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", g, "v1", rest @ ..] if !rest.is_empty() && discovery::known_group(g) => (*g, rest),
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            ));
        }
    };
    let t = resource_target(group, rest)?;
    if query.get("dryRun").is_some() && method != Method::GET {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the lab's API server",
        ));
    }
    match (&method, &t.name, t.sub.as_deref()) {
        (&Method::GET, None, _) if query.flag("watch") => watch(&shared, &t, &query, as_table),
        (&Method::GET, None, _) => list(&shared, &t, &query, as_table),
        (&Method::GET, Some(name), None) => get_one(&shared, &t, name),
        (&Method::GET, Some(name), Some("scale")) if t.resource == Resource::Deployments => {
            scale_get(&shared, &t, name)
        }
        (&Method::POST, None, _) if t.resource.create_only() && t.namespace.is_some() => {
            let body = read_body(req).await?;
            create_event(&shared, &t, &body)
        }
        (&Method::POST, None, _) if t.resource.writable() && t.namespace.is_some() => {
            let body = read_body(req).await?;
            create_service(&shared, &t, &body)
        }
        (&Method::PUT, Some(name), None) if t.resource.writable() => {
            let body = read_body(req).await?;
            update_service(&shared, &t, name, &body)
        }
        (&Method::PATCH, Some(name), None) if t.resource.writable() => {
            let kind = patch_kind(&req)?;
            let body = read_body(req).await?;
            patch_service(&shared, &t, name, kind, &body)
        }
        (&Method::DELETE, Some(name), None) if t.resource.writable() => {
            delete_service(&shared, &t, name)
        }
        (&Method::PUT | &Method::PATCH, Some(name), Some("scale"))
            if t.resource == Resource::Deployments =>
        {
            let kind = if method == Method::PATCH {
                Some(patch_kind(&req)?)
            } else {
                None
            };
            let body = read_body(req).await?;
            scale_set(&shared, &t, name, kind, &body)
        }
        _ => Err(ApiError::method(&method, &path)),
    }
}

fn patch_kind(req: &Request<Incoming>) -> Result<PatchKind, ApiError> {
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    PatchKind::from_content_type(ct).ok_or_else(|| {
        let hint = if ct.starts_with("application/apply-patch") {
            " (server-side apply is not supported by the lab's API server; kubectl apply without --server-side works)"
        } else {
            ""
        };
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format: {ct:?}{hint}; accepted: application/merge-patch+json, application/json-patch+json, application/strategic-merge-patch+json"),
        )
    })
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("reading the request body: {e}"),
        )),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, crate::controlplane::ControlPlane> {
    shared.cp.lock().unwrap_or_else(|e| e.into_inner())
}

struct Filter {
    /// Objects go out as one-row Tables (kubectl get -w).
    table: bool,
    resource: Resource,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn new(t: &Target, q: &Query, table: bool) -> Result<Filter, ApiError> {
        let mut fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?;
        if let Some(name) = &t.name {
            fields = FieldSelector::parse(&format!("metadata.name={name}")).expect("valid");
        }
        Ok(Filter {
            table,
            resource: t.resource,
            namespace: t.namespace.clone(),
            labels: LabelSelector::parse(q.get("labelSelector").unwrap_or_default())
                .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?,
            fields,
        })
    }
    /// The object as this watch sends it.
    fn body(&self, o: &Obj) -> Bytes {
        if self.table {
            Bytes::from(table::table(self.resource, o.rv, std::iter::once(&o.json[..])).to_string())
        } else {
            o.json.clone()
        }
    }

    fn matches(&self, o: &Obj) -> bool {
        self.namespace.as_deref().is_none_or(|ns| o.namespace == ns)
            && self.fields.matches(&o.namespace, &o.name, &o.cluster_ip)
            && self.labels.matches(&o.labels)
    }
}

fn list(
    shared: &Shared,
    t: &Target,
    q: &Query,
    as_table: bool,
) -> Result<Response<Body>, ApiError> {
    if t.resource.create_only() {
        return Ok(ok_json(
            StatusCode::OK,
            &json!({"kind": "EventList", "apiVersion": t.resource.api_version(),
                    "metadata": {"resourceVersion": lock(shared).store().current().to_string()}, "items": []}),
        ));
    }
    let f = Filter::new(t, q, as_table)?;
    let (rv, items) = {
        let cp = lock(shared);
        let st = cp.store();
        if q.get("resourceVersionMatch") == Some("Exact")
            && let Some(want) = q.get("resourceVersion").and_then(|v| v.parse::<u64>().ok())
            && want != st.current()
        {
            return Err(ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {want} ({})", st.current()),
            ));
        }
        let items: Vec<Arc<Obj>> = st
            .list(t.resource, t.namespace.as_deref())
            .into_iter()
            .filter(|o| f.matches(o))
            .collect();
        (st.current(), items)
    };
    if as_table {
        let t = table::table(t.resource, rv, items.iter().map(|o| &o.json[..]));
        return Ok(ok_json(StatusCode::OK, &t));
    }
    let mut out = Vec::with_capacity(128 + items.iter().map(|o| o.json.len() + 1).sum::<usize>());
    out.extend_from_slice(
        format!(
            "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{{\"resourceVersion\":\"{rv}\"}},\"items\":[",
            t.resource.kind(),
            t.resource.api_version()
        )
        .as_bytes(),
    );
    for (i, o) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&o.json);
    }
    out.extend_from_slice(b"]}");
    Ok(full(StatusCode::OK, Bytes::from(out)))
}

fn get_one(shared: &Shared, t: &Target, name: &str) -> Result<Response<Body>, ApiError> {
    let ns = t.namespace.as_deref().unwrap_or_default();
    let o = lock(shared)
        .store()
        .get(t.resource, ns, name)
        .ok_or_else(|| ApiError::not_found(t.resource, name))?;
    Ok(full(StatusCode::OK, o.json.clone()))
}

fn event_line(ty: &str, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(ty.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(json);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

fn bookmark(r: Resource, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj = json!({"kind": r.kind(), "apiVersion": r.api_version(), "metadata": meta});
    event_line("BOOKMARK", obj.to_string().as_bytes())
}

/// What a watch with `f` sends for `c`, if anything: an object entering
/// the selection is ADDED, one leaving it DELETED.
fn render(f: &Filter, c: &Change) -> Option<Bytes> {
    if c.resource != f.resource {
        return None;
    }
    let now = f.matches(&c.obj);
    let before = c.prev.as_ref().is_some_and(|p| f.matches(p));
    let ty = match c.ty {
        EventType::Deleted => before.then_some("DELETED"),
        _ => match (before, now) {
            (true, true) => Some(if c.ty == EventType::Added {
                "ADDED"
            } else {
                "MODIFIED"
            }),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
    }?;
    Some(event_line(ty, &f.body(&c.obj)))
}

fn watch(
    shared: &Arc<Shared>,
    t: &Target,
    q: &Query,
    as_table: bool,
) -> Result<Response<Body>, ApiError> {
    if t.resource.create_only() {
        return Err(ApiError::method(&Method::GET, "watch events"));
    }
    let f = Filter::new(t, q, as_table)?;
    let bookmarks = q.flag("allowWatchBookmarks");
    let initial_events = q.flag("sendInitialEvents");
    if initial_events && (!bookmarks || q.get("resourceVersionMatch") != Some("NotOlderThan")) {
        return Err(ApiError::invalid(
            t.resource,
            "",
            vec!["sendInitialEvents needs allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan".into()],
        ));
    }
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let rv_param = q.get("resourceVersion").unwrap_or_default().to_string();
    // The starting point, and what to send first, under one lock.
    let (start, initial, mut notify) = {
        let cp = lock(shared);
        let st = cp.store();
        let notify = st.subscribe();
        let current = st.current();
        if initial_events || rv_param == "0" {
            let objs: Vec<Bytes> = st
                .list(t.resource, t.namespace.as_deref())
                .into_iter()
                .filter(|o| f.matches(o))
                .map(|o| event_line("ADDED", &f.body(&o)))
                .collect();
            (current, objs, notify)
        } else if rv_param.is_empty() {
            (current, Vec::new(), notify)
        } else {
            let rv: u64 = rv_param.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid resourceVersion {rv_param:?}"))
            })?;
            (rv, Vec::new(), notify)
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
    let rx = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let shared = shared.clone();
    let mut drops = shared.drops.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let resource = t.resource;
    shared
        .watches
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    tokio::spawn(async move {
        let _count = WatchCount(shared.clone());
        let deadline = timeout.map(|d| tokio::time::Instant::now() + d);
        let send = |tx: &tokio::sync::mpsc::Sender<_>, b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(Frame::data(b))).await.is_ok() }
        };
        for b in initial {
            if !send(&tx, b).await {
                return;
            }
        }
        if initial_events && !send(&tx, bookmark(resource, start, true)).await {
            return;
        }
        let mut last = start;
        let every = shared.bookmark_every;
        loop {
            let batch = {
                let cp = lock(&shared);
                let st = cp.store();
                st.changes_since(last).map(|c| (c, st.current()))
            };
            match batch {
                Err(gone) => {
                    let e = ApiError::new(
                        410,
                        "Expired",
                        format!(
                            "too old resource version: {} ({})",
                            gone.requested, gone.oldest
                        ),
                    );
                    let _ = send(
                        &tx,
                        event_line("ERROR", e.status_json().to_string().as_bytes()),
                    )
                    .await;
                    return;
                }
                Ok((changes, current)) => {
                    for c in &changes {
                        if let Some(line) = render(&f, c)
                            && !send(&tx, line).await
                        {
                            return;
                        }
                    }
                    last = last.max(current);
                }
            }
            let sleep_until = deadline.map_or(tokio::time::Instant::now() + every, |d| {
                d.min(tokio::time::Instant::now() + every)
            });
            tokio::select! {
                r = notify.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(sleep_until) => {
                    if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        return;
                    }
                    if bookmarks && !send(&tx, bookmark(resource, last, false)).await {
                        return;
                    }
                }
                _ = drops.changed() => return,
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(StreamBody::new(rx).boxed())
        .expect("static headers"))
}

/// Counts open watches (for tests and the fault that drops them).
struct WatchCount(Arc<Shared>);

impl Drop for WatchCount {
    fn drop(&mut self) {
        self.0
            .watches
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn create_event(shared: &Shared, t: &Target, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let mut v = parse_json(body)?;
    if !v.is_object() {
        return Err(ApiError::bad_request("an Event must be a JSON object"));
    }
    let n = lock(shared).store_mut().event_created();
    let meta = &mut v["metadata"];
    if meta.get("name").and_then(Value::as_str).is_none() {
        let prefix = meta
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("event.")
            .to_string();
        meta["name"] = json!(format!("{prefix}{n:x}"));
    }
    meta["namespace"] = json!(t.namespace);
    meta["resourceVersion"] = json!(n.to_string());
    Ok(ok_json(StatusCode::CREATED, &v))
}

/// A Service from a request body: JSON, of the right kind, in the
/// request's namespace; the decoding error names the field.
fn decode_service(t: &Target, v: &Value) -> Result<Service, ApiError> {
    if let Some(kind) = v.get("kind").and_then(Value::as_str)
        && kind != "Service"
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data (kind {kind}) does not match the expected kind Service"
        )));
    }
    if let Some(av) = v.get("apiVersion").and_then(Value::as_str)
        && av != "v1"
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version (v1)"
        )));
    }
    let mut svc: Service = serde_path_to_error::deserialize(v).map_err(|e| {
        ApiError::bad_request(format!(
            "decoding the Service at {}: {}",
            e.path(),
            e.inner()
        ))
    })?;
    let ns = t.namespace.clone().unwrap_or_else(|| "default".into());
    match svc.metadata.namespace.as_deref() {
        Some(n) if n != ns => {
            return Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({n}) does not match the namespace sent on the request ({ns})"
            )));
        }
        _ => svc.metadata.namespace = Some(ns),
    }
    Ok(svc)
}

/// The Service checks the API server makes that the lab's controllers
/// rely on; the rest of the API's validation is the allocator's.
fn validate_service(svc: &Service, families: &[&str]) -> Vec<String> {
    use crate::scenario::names;
    let mut causes = Vec::new();
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        causes.push("metadata.name: Required value: name or generateName is required".into());
    } else if let Err(e) = names::dns1035_label(name) {
        causes.push(format!("metadata.name: Invalid value: {name:?}: {e}"));
    }
    for (k, v) in svc.metadata.labels.iter().flatten() {
        if let Err(e) = names::qualified_name(k).and_then(|_| names::label_value(v)) {
            causes.push(format!("metadata.labels: Invalid value: {k:?}: {e}"));
        }
    }
    let Some(spec) = &svc.spec else {
        causes.push("spec: Required value".into());
        return causes;
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        causes.push(format!(
            "spec.type: Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
        ));
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if ports.is_empty() && ty != "ExternalName" && !headless {
        causes.push("spec.ports: Required value".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        if !(1..=65535).contains(&p.port) {
            causes.push(format!(
                "spec.ports[{i}].port: Invalid value: {}: must be between 1 and 65535, inclusive",
                p.port
            ));
        }
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if !matches!(proto, "TCP" | "UDP" | "SCTP") {
            causes.push(format!(
                "spec.ports[{i}].protocol: Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
            ));
        }
        if !seen.insert((p.port, proto.to_string())) {
            causes.push(format!(
                "spec.ports[{i}]: Duplicate value: {{port: {}, protocol: {proto}}}",
                p.port
            ));
        }
        if ports.len() > 1 && p.name.as_deref().unwrap_or_default().is_empty() {
            causes.push(format!("spec.ports[{i}].name: Required value"));
        }
        if let Some(np) = p.node_port
            && np != 0
            && ty == "ClusterIP"
        {
            causes.push(format!(
                "spec.ports[{i}].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"
            ));
        }
    }
    for (k, v) in spec.selector.iter().flatten() {
        if let Err(e) = names::qualified_name(k).and_then(|_| names::label_value(v)) {
            causes.push(format!("spec.selector: Invalid value: {k:?}: {e}"));
        }
    }
    causes.extend(
        crate::controlplane::families::check(spec, families)
            .iter()
            .map(|e| e.cause()),
    );
    if let Some(td) = spec.traffic_distribution.as_deref()
        && !TRAFFIC_DISTRIBUTIONS.contains(&td)
    {
        let supported: Vec<String> = TRAFFIC_DISTRIBUTIONS
            .iter()
            .map(|v| format!("{v:?}"))
            .collect();
        causes.push(format!(
            "spec.trafficDistribution: Unsupported value: {td:?}: supported values: {}",
            supported.join(", ")
        ));
    }
    causes
}

fn cp_error(t: &Target, name: &str, e: ControlPlaneError) -> ApiError {
    match e {
        ControlPlaneError::Exists(_) => ApiError {
            details: Some(json!({"name": name, "kind": t.resource.plural()})),
            ..ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", t.resource.plural()),
            )
        },
        ControlPlaneError::NoService(_) => ApiError::not_found(t.resource, name),
        ControlPlaneError::Alloc { source, .. } => {
            ApiError::invalid(t.resource, name, vec![format!("spec: {source}")])
        }
        other => ApiError::invalid(t.resource, name, vec![other.to_string()]),
    }
}

fn stored(shared: &Shared, t: &Target, name: &str, code: StatusCode) -> Response<Body> {
    let ns = t.namespace.as_deref().unwrap_or_default();
    match lock(shared).store().get(t.resource, ns, name) {
        Some(o) => full(code, o.json.clone()),
        None => error(ApiError::not_found(t.resource, name)),
    }
}

fn require_namespace(shared: &Shared, t: &Target) -> Result<(), ApiError> {
    let ns = t.namespace.as_deref().unwrap_or("default");
    if lock(shared)
        .store()
        .get(Resource::Namespaces, "", ns)
        .is_none()
    {
        return Err(ApiError::not_found(Resource::Namespaces, ns));
    }
    Ok(())
}

fn create_service(shared: &Shared, t: &Target, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let v = parse_json(body)?;
    let mut svc = decode_service(t, &v)?;
    if svc.metadata.name.is_none()
        && let Some(prefix) = svc.metadata.generate_name.clone()
    {
        let n = lock(shared).store().current();
        svc.metadata.name = Some(format!("{prefix}{n:05x}"));
    }
    let name = svc.metadata.name.clone().unwrap_or_default();
    let causes = validate_service(&svc, &lock(shared).families());
    if !causes.is_empty() {
        return Err(ApiError::invalid(t.resource, &name, causes));
    }
    require_namespace(shared, t)?;
    svc.metadata.resource_version = None;
    svc.status = None;
    {
        let mut cp = lock(shared);
        cp.add_service(svc).map_err(|e| cp_error(t, &name, e))?;
    }
    Ok(stored(shared, t, &name, StatusCode::CREATED))
}

/// An update to type ExternalName loses the IP family fields it carried
/// over unchanged from the stored Service (an apply's merge keeps them), as
/// the API server's dropTypeDependentFields does; set anew, they are
/// refused.
fn drop_type_dependent_fields(shared: &Shared, t: &Target, name: &str, svc: &mut Service) {
    let Some(spec) = svc.spec.as_mut() else {
        return;
    };
    if spec.type_.as_deref() != Some("ExternalName") {
        return;
    }
    let ns = t.namespace.as_deref().unwrap_or("default");
    let Some(old) = lock(shared)
        .store()
        .get(t.resource, ns, name)
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.json).ok())
        .map(|o| o["spec"].clone())
    else {
        return;
    };
    if old["type"].as_str() == Some("ExternalName") {
        return;
    }
    let same = |field: &str, new: serde_json::Value| old[field] == new;
    if same("ipFamilies", json!(spec.ip_families)) {
        spec.ip_families = None;
    }
    if same("ipFamilyPolicy", json!(spec.ip_family_policy)) {
        spec.ip_family_policy = None;
    }
}

/// Replaces the Service `name` with `svc` if the client's resourceVersion
/// (when it sends one) is still current.
fn replace(
    shared: &Shared,
    t: &Target,
    name: &str,
    mut svc: Service,
) -> Result<Response<Body>, ApiError> {
    if svc.metadata.name.as_deref() != Some(name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            svc.metadata.name.as_deref().unwrap_or_default()
        )));
    }
    drop_type_dependent_fields(shared, t, name, &mut svc);
    let causes = validate_service(&svc, &lock(shared).families());
    if !causes.is_empty() {
        return Err(ApiError::invalid(t.resource, name, causes));
    }
    {
        let mut cp = lock(shared);
        let ns = t.namespace.as_deref().unwrap_or("default");
        let current = cp
            .store()
            .get(t.resource, ns, name)
            .ok_or_else(|| ApiError::not_found(t.resource, name))?;
        if let Some(rv) = svc.metadata.resource_version.as_deref()
            && rv != current.rv.to_string()
        {
            return Err(ApiError {
                details: Some(json!({"name": name, "kind": t.resource.plural()})),
                ..ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        t.resource.plural()
                    ),
                )
            });
        }
        cp.update_service(svc).map_err(|e| cp_error(t, name, e))?;
    }
    Ok(stored(shared, t, name, StatusCode::OK))
}

fn update_service(
    shared: &Shared,
    t: &Target,
    name: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let v = parse_json(body)?;
    let svc = decode_service(t, &v)?;
    replace(shared, t, name, svc)
}

fn current_json(shared: &Shared, t: &Target, name: &str) -> Result<Value, ApiError> {
    let ns = t.namespace.as_deref().unwrap_or("default");
    let o = lock(shared)
        .store()
        .get(t.resource, ns, name)
        .ok_or_else(|| ApiError::not_found(t.resource, name))?;
    Ok(serde_json::from_slice(&o.json).expect("stored objects are JSON"))
}

fn patch_service(
    shared: &Shared,
    t: &Target,
    name: &str,
    kind: PatchKind,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let p = parse_json(body)?;
    let before = current_json(shared, t, name)?;
    let mut after = patch::apply(kind, &before, &p)
        .map_err(|e| ApiError::invalid(t.resource, name, vec![format!("patch: {e}")]))?;
    if after == before {
        return Ok(stored(shared, t, name, StatusCode::OK));
    }
    // A patch works on what the client saw: a stale resourceVersion in it
    // conflicts, an absent one applies to the current object.
    if after["metadata"].get("resourceVersion") == before["metadata"].get("resourceVersion")
        && let Some(m) = after["metadata"].as_object_mut()
    {
        m.remove("resourceVersion");
    }
    let svc = decode_service(t, &after)?;
    replace(shared, t, name, svc)
}

fn delete_service(shared: &Shared, t: &Target, name: &str) -> Result<Response<Body>, ApiError> {
    let ns = t.namespace.clone().unwrap_or_else(|| "default".into());
    let last = {
        let mut cp = lock(shared);
        let before = cp.store().get(t.resource, &ns, name);
        cp.delete_service(&ns, name)
            .map_err(|e| cp_error(t, name, e))?;
        before
    };
    let gone = last.ok_or_else(|| ApiError::not_found(t.resource, name))?;
    Ok(full(StatusCode::OK, gone.json.clone()))
}

fn scale_json(d: &Value) -> Value {
    let labels = d["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": d["metadata"]["name"], "namespace": d["metadata"]["namespace"],
                     "resourceVersion": d["metadata"]["resourceVersion"], "uid": d["metadata"]["uid"]},
        "spec": {"replicas": d["spec"]["replicas"]},
        "status": {"replicas": d["status"]["replicas"], "selector": labels}})
}

fn scale_get(shared: &Shared, t: &Target, name: &str) -> Result<Response<Body>, ApiError> {
    let d = current_json(shared, t, name)?;
    Ok(ok_json(StatusCode::OK, &scale_json(&d)))
}

fn scale_set(
    shared: &Shared,
    t: &Target,
    name: &str,
    kind: Option<PatchKind>,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let d = current_json(shared, t, name)?;
    let before = scale_json(&d);
    let v = parse_json(body)?;
    let after = match kind {
        Some(k) => patch::apply(k, &before, &v)
            .map_err(|e| ApiError::invalid(t.resource, name, vec![format!("patch: {e}")]))?,
        None => v,
    };
    let replicas = after["spec"]["replicas"].as_i64().ok_or_else(|| {
        ApiError::invalid(
            t.resource,
            name,
            vec!["spec.replicas: Required value".into()],
        )
    })?;
    let ns = t.namespace.clone().unwrap_or_else(|| "default".into());
    {
        let mut cp = lock(shared);
        let capacity = cp.deployment_capacity(&ns, name);
        if replicas < 0 || replicas as usize > capacity {
            return Err(ApiError::invalid(
                t.resource,
                name,
                vec![format!(
                    "spec.replicas: Invalid value: {replicas}: the lab pre-created {capacity} pod(s) for Deployment {ns}/{name} (its replicas in the scenario); scale within 0..={capacity}"
                )],
            ));
        }
        cp.scale(&ns, name, replicas as usize)
            .map_err(|e| cp_error(t, name, e))?;
    }
    scale_get(shared, t, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_percent_decoded() {
        let q = Query::parse(Some(
            "labelSelector=%21service.kubernetes.io%2Fheadless%2Capp+in+%28a%29&watch=1",
        ));
        assert_eq!(
            q.get("labelSelector"),
            Some("!service.kubernetes.io/headless,app in (a)")
        );
        assert!(q.flag("watch"));
        assert_eq!(decode("100%"), "100%");
    }

    #[test]
    fn paths_resolve_to_resources() {
        let t = resource_target("", &["namespaces", "default", "services", "web"]).unwrap();
        assert_eq!(
            (t.resource, t.namespace.as_deref(), t.name.as_deref()),
            (Resource::Services, Some("default"), Some("web"))
        );
        let t = resource_target("", &["nodes", "node-0"]).unwrap();
        assert_eq!(
            (t.resource, t.name.as_deref()),
            (Resource::Nodes, Some("node-0"))
        );
        let t = resource_target("", &["namespaces", "default"]).unwrap();
        assert_eq!(t.resource, Resource::Namespaces);
        let t =
            resource_target("apps", &["namespaces", "d", "deployments", "web", "scale"]).unwrap();
        assert_eq!(t.sub.as_deref(), Some("scale"));
        assert!(resource_target("", &["widgets"]).is_err());
        assert!(resource_target("", &["namespaces", "d", "nodes"]).is_err());
        assert!(resource_target("", &["services", "web"]).is_err());
    }

    #[test]
    fn invalid_services_name_every_cause() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "Bad_Name"},
            "spec": {"type": "Weird", "ports": [{"port": 0}, {"port": 0, "protocol": "ICMP"}],
                     "trafficDistribution": "PreferFar", "ipFamilyPolicy": "RequireDualStack"}
        }))
        .unwrap();
        let causes = validate_service(&svc, crate::controlplane::families::IPV4_ONLY).join("\n");
        for want in [
            "metadata.name: Invalid value",
            "spec.type: Unsupported value: \"Weird\"",
            "spec.ports[0].port: Invalid value: 0",
            "spec.ports[1].protocol: Unsupported value: \"ICMP\"",
            "spec.ports[0].name: Required value",
            "spec.trafficDistribution: Unsupported value: \"PreferFar\": supported values: \"PreferClose\", \"PreferSameZone\", \"PreferSameNode\"",
            "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this lab is not configured for dual-stack",
        ] {
            assert!(causes.contains(want), "{want} missing from\n{causes}");
        }
        for ok in ["PreferClose", "PreferSameZone", "PreferSameNode"] {
            let svc: Service = serde_json::from_value(json!({
                "metadata": {"name": "s"},
                "spec": {"ports": [{"port": 80}], "trafficDistribution": ok}
            }))
            .unwrap();
            assert_eq!(
                validate_service(&svc, crate::controlplane::families::IPV4_ONLY),
                Vec::<String>::new(),
                "{ok}"
            );
        }
    }
}
