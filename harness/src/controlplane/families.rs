//! A Service's IP family fields (`ipFamilyPolicy`, `ipFamilies`,
//! `clusterIPs`) checked as the API server checks them: its validation
//! (pkg/apis/core/validation ValidateService) and its allocator's
//! (pkg/registry/core/service/storage initIPFamilyFields), against the
//! families the lab serves. One list of rules, used by the scenario
//! validator (which adds file:line:col) and by the lab's API server (which
//! answers 422 with the same causes).
//!
//! The lab serves the families its Lab lists (`spec.ipFamilies`), so in a
//! single-stack lab a Service that requires dual-stack or asks for the
//! other family is refused with the reason, as a single-stack cluster
//! refuses it; `PreferDualStack` is accepted and gets one family, as there.
//! [`fill`] then defaults the fields as the API server's allocator does.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::ServiceSpec;
use svclab_backends::model::IpFamily;

/// A single-stack IPv4 lab's families (the default Lab's).
#[cfg(test)]
pub const IPV4_ONLY: &[&str] = &["IPv4"];

const POLICIES: [&str; 3] = ["SingleStack", "PreferDualStack", "RequireDualStack"];

/// One refusal: the field's path in the object (`spec.ipFamilies[1]`) and
/// what is wrong, in the API server's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyError {
    pub path: String,
    pub message: String,
}

impl FamilyError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FamilyError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// `path: message`, as an API `Status` cause reads.
    pub fn cause(&self) -> String {
        format!("{}: {}", self.path, self.message)
    }
}

fn family_of(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Every reason the API server of a cluster serving `lab` (its families,
/// primary first) would refuse `spec`'s IP family fields. Empty when it
/// would accept them.
pub fn check(spec: &ServiceSpec, lab: &[&str]) -> Vec<FamilyError> {
    let mut errs = Vec::new();
    let policy = spec.ip_family_policy.as_deref();
    let families = spec.ip_families.as_deref().unwrap_or_default();
    let ips = spec.cluster_ips.as_deref().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        // A DNS alias has no address, so no family.
        if policy.is_some() {
            errs.push(FamilyError::new(
                "spec.ipFamilyPolicy",
                "Forbidden: may not be set for type `ExternalName`",
            ));
        }
        if !families.is_empty() {
            errs.push(FamilyError::new(
                "spec.ipFamilies",
                "Forbidden: may not be set for type `ExternalName`",
            ));
        }
        return errs;
    }

    // The fields on their own.
    if let Some(p) = policy
        && !POLICIES.contains(&p)
    {
        errs.push(FamilyError::new(
            "spec.ipFamilyPolicy",
            format!(
                "Unsupported value: {p:?}: supported values: \"PreferDualStack\", \
                 \"RequireDualStack\", \"SingleStack\""
            ),
        ));
    }
    for (i, f) in families.iter().enumerate() {
        if !matches!(f.as_str(), "IPv4" | "IPv6") {
            errs.push(FamilyError::new(
                format!("spec.ipFamilies[{i}]"),
                format!("Unsupported value: {f:?}: supported values: \"IPv4\", \"IPv6\""),
            ));
        } else if families[..i].contains(f) {
            errs.push(FamilyError::new(
                format!("spec.ipFamilies[{i}]"),
                format!("Duplicate value: {f:?}"),
            ));
        }
    }
    if families.len() > 2 {
        errs.push(FamilyError::new(
            "spec.ipFamilies",
            format!("Too many: {}: must have at most 2 items", families.len()),
        ));
    }
    if ips.len() > 2 {
        errs.push(FamilyError::new(
            "spec.clusterIPs",
            format!("Too many: {}: must have at most 2 items", ips.len()),
        ));
    }
    let headless = spec.cluster_ip.as_deref() == Some("None")
        || ips.first().map(String::as_str) == Some("None");
    // A client sets both or neither: the API server fills `clusterIPs` from
    // `clusterIP`, never the other way round.
    if let Some(first) = ips.first()
        && spec.cluster_ip.as_deref().unwrap_or_default() != first
    {
        errs.push(FamilyError::new(
            "spec.clusterIPs",
            format!("Invalid value: {ips:?}: first value must match `clusterIP`"),
        ));
    }
    let mut ip_families = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        if headless {
            if ips.len() > 1 {
                errs.push(FamilyError::new(
                    format!("spec.clusterIPs[{i}]"),
                    "Invalid value: must not have more than one entry when it is `None`",
                ));
            }
            break;
        }
        match ip.parse::<IpAddr>() {
            Ok(a) => {
                let f = family_of(&a);
                if let Some(want) = families.get(i)
                    && want != f
                {
                    errs.push(FamilyError::new(
                        format!("spec.clusterIPs[{i}]"),
                        format!(
                            "Invalid value: {ip:?}: expected an {want} value as indicated by \
                             `ipFamilies[{i}]`"
                        ),
                    ));
                }
                if ip_families.contains(&f) {
                    errs.push(FamilyError::new(
                        format!("spec.clusterIPs[{i}]"),
                        format!("Invalid value: {ip:?}: may specify no more than one IP for each IP family"),
                    ));
                }
                ip_families.push(f);
            }
            Err(_) => errs.push(FamilyError::new(
                format!("spec.clusterIPs[{i}]"),
                format!("Invalid value: {ip:?}: must be a valid IP address"),
            )),
        }
    }
    let many = families.len() > 1 || ip_families.len() > 1;
    if policy == Some("SingleStack") && many {
        errs.push(FamilyError::new(
            "spec.ipFamilyPolicy",
            "Invalid value: \"SingleStack\": must be RequireDualStack or PreferDualStack when \
             multiple IP families are specified",
        ));
    }

    // Against the cluster's (the lab's) families.
    let served = lab.join(", ");
    if lab.len() < 2 && policy == Some("RequireDualStack") {
        errs.push(FamilyError::new(
            "spec.ipFamilyPolicy",
            format!(
                "Invalid value: \"RequireDualStack\": this lab is not configured for dual-stack \
                 services (its service network is {served} only)"
            ),
        ));
    }
    for (i, f) in families.iter().enumerate() {
        if matches!(f.as_str(), "IPv4" | "IPv6") && !lab.contains(&f.as_str()) {
            errs.push(FamilyError::new(
                format!("spec.ipFamilies[{i}]"),
                format!("Invalid value: {f:?}: ipfamily {f} is not configured on this lab (it serves {served})"),
            ));
        }
    }
    for (i, f) in ip_families.iter().enumerate() {
        if !lab.contains(f) && families.get(i).map(String::as_str) != Some(f) {
            errs.push(FamilyError::new(
                format!("spec.clusterIPs[{i}]"),
                format!(
                    "Invalid value: {:?}: an {f} address, and this lab serves {served} only",
                    ips[i]
                ),
            ));
        }
    }
    errs
}

/// The API server's defaulting of an admitted Service's family fields
/// (initIPFamilyFields), after [`check`] passed: the policy (inferred as
/// RequireDualStack from two families or two addresses, else SingleStack),
/// and the families, the first from `ipFamilies` or `clusterIPs` or the
/// lab's primary, the second added when the policy asks for dual-stack and
/// the lab has it. Headless and selector-less Services get families too.
pub fn fill(spec: &mut ServiceSpec, lab: &[IpFamily]) {
    if spec.type_.as_deref() == Some("ExternalName") {
        spec.ip_family_policy = None;
        spec.ip_families = None;
        return;
    }
    let ips: Vec<IpFamily> = spec
        .cluster_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|a| IpFamily::of(&a))
        .collect();
    let mut families: Vec<IpFamily> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| IpFamily::parse_k8s(f))
        .collect();
    if spec.ip_family_policy.is_none() {
        let policy = if families.len() == 2 || ips.len() == 2 {
            "RequireDualStack"
        } else {
            "SingleStack"
        };
        spec.ip_family_policy = Some(policy.into());
    }
    for f in ips {
        if !families.contains(&f) {
            families.push(f);
        }
    }
    if families.is_empty() {
        families.push(lab[0]);
    }
    match spec.ip_family_policy.as_deref() {
        Some("SingleStack") => families.truncate(1),
        _ => {
            if let Some(other) = lab.iter().find(|f| !families.contains(f)) {
                families.push(*other);
            }
        }
    }
    spec.ip_families = Some(families.iter().map(|f| f.as_k8s().to_string()).collect());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> ServiceSpec {
        serde_json::from_value(v).unwrap()
    }

    fn causes(v: serde_json::Value) -> Vec<String> {
        check(&spec(v), IPV4_ONLY)
            .iter()
            .map(FamilyError::cause)
            .collect()
    }

    /// What a single-stack IPv4 cluster's API server accepts.
    #[test]
    fn a_single_stack_lab_accepts_what_a_single_stack_cluster_does() {
        for ok in [
            serde_json::json!({}),
            serde_json::json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"]}),
            serde_json::json!({"ipFamilyPolicy": "PreferDualStack"}),
            serde_json::json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"]}),
            serde_json::json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                               "ipFamilies": ["IPv4"]}),
            serde_json::json!({"clusterIP": "None", "clusterIPs": ["None"],
                               "ipFamilyPolicy": "PreferDualStack"}),
            serde_json::json!({"type": "ExternalName", "externalName": "example.org"}),
        ] {
            assert_eq!(causes(ok.clone()), Vec::<String>::new(), "{ok}");
        }
    }

    #[test]
    fn dual_stack_and_ipv6_asks_are_refused_with_the_reason() {
        let c = causes(serde_json::json!({"ipFamilyPolicy": "RequireDualStack"}));
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(
            c[0].starts_with("spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\"")
                && c[0].contains("not configured for dual-stack"),
            "{c:?}"
        );
        let c = causes(serde_json::json!({"ipFamilies": ["IPv6"]}));
        assert!(
            c.iter().any(
                |c| c.starts_with("spec.ipFamilies[0]: Invalid value: \"IPv6\"")
                    && c.contains("not configured on this lab")
            ),
            "{c:?}"
        );
        let c = causes(serde_json::json!({"clusterIP": "fd00:10:96::10",
                                          "clusterIPs": ["fd00:10:96::10"]}));
        assert!(
            c.iter()
                .any(|c| c.starts_with("spec.clusterIPs[0]") && c.contains("IPv6")),
            "{c:?}"
        );
        // Two families need a dual-stack policy, and a dual-stack lab.
        let c = causes(serde_json::json!({"ipFamilyPolicy": "SingleStack",
                                          "ipFamilies": ["IPv4", "IPv6"]}))
        .join("\n");
        assert!(
            c.contains("must be RequireDualStack or PreferDualStack"),
            "{c}"
        );
        assert!(
            c.contains("spec.ipFamilies[1]: Invalid value: \"IPv6\""),
            "{c}"
        );
    }

    #[test]
    fn malformed_fields_name_the_field() {
        let c = causes(serde_json::json!({
            "ipFamilyPolicy": "DualStack",
            "ipFamilies": ["IPv4", "IPv4", "IPX"],
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.11", "banana"],
        }))
        .join("\n");
        for want in [
            "spec.ipFamilyPolicy: Unsupported value: \"DualStack\"",
            "spec.ipFamilies[1]: Duplicate value: \"IPv4\"",
            "spec.ipFamilies[2]: Unsupported value: \"IPX\"",
            "spec.ipFamilies: Too many: 3",
            "spec.clusterIPs: Invalid value: [\"10.96.0.11\", \"banana\"]: first value must match `clusterIP`",
            "spec.clusterIPs[1]: Invalid value: \"banana\": must be a valid IP address",
        ] {
            assert!(c.contains(want), "{want} missing from\n{c}");
        }
        let c = causes(
            serde_json::json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                                          "ipFamilies": ["IPv6"]}),
        )
        .join("\n");
        assert!(
            c.contains("expected an IPv6 value as indicated by `ipFamilies[0]`"),
            "{c}"
        );
        let c = causes(
            serde_json::json!({"type": "ExternalName", "externalName": "a.b",
                                          "ipFamilyPolicy": "SingleStack"}),
        )
        .join("\n");
        assert!(c.contains("spec.ipFamilyPolicy: Forbidden"), "{c}");
    }

    /// A dual-stack cluster takes what a single-stack one refuses: the
    /// rules read the lab's families, not a constant.
    #[test]
    fn a_dual_stack_lab_takes_both_families() {
        let s = spec(serde_json::json!({"ipFamilyPolicy": "RequireDualStack",
                                        "ipFamilies": ["IPv6", "IPv4"]}));
        assert_eq!(check(&s, &["IPv4", "IPv6"]), Vec::new());
        assert!(!check(&s, IPV4_ONLY).is_empty());
    }
}
