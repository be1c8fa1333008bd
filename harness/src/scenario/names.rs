//! Kubernetes name rules, as the API server applies them
//! (k8s.io/apimachinery/pkg/util/validation): each check returns the
//! reason a value is rejected, with the value elided when it is long.

use super::limits::elide;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const LABEL_VALUE_MAX: usize = 63;
const QUALIFIED_NAME_MAX: usize = 63;
const IANA_SVC_NAME_MAX: usize = 15;

fn alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn too_long(s: &str, max: usize) -> Option<String> {
    (s.len() > max).then(|| {
        format!(
            "{} must be no more than {max} characters (it has {})",
            elide(s),
            s.len()
        )
    })
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63: namespaces, node names.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if let Some(e) = too_long(s, DNS1123_LABEL_MAX) {
        return Err(e);
    }
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.iter().all(|&c| alnum_lower(c) || c == b'-')
        && alnum_lower(b[0])
        && alnum_lower(b[b.len() - 1]);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a DNS-1123 label: lowercase letters, digits and '-', starting and \
             ending with a letter or digit",
            elide(s)
        ))
    }
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63: Service names.
pub fn dns1035_label(s: &str) -> Result<(), String> {
    if let Some(e) = too_long(s, DNS1123_LABEL_MAX) {
        return Err(e);
    }
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.iter().all(|&c| alnum_lower(c) || c == b'-')
        && b[0].is_ascii_lowercase()
        && alnum_lower(b[b.len() - 1]);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a DNS-1035 label: lowercase letters, digits and '-', starting with a \
             letter and ending with a letter or digit",
            elide(s)
        ))
    }
}

/// DNS-1123 labels joined by dots, at most 253: most object names.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if let Some(e) = too_long(s, DNS1123_SUBDOMAIN_MAX) {
        return Err(e);
    }
    let ok = !s.is_empty()
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.iter().all(|&c| alnum_lower(c) || c == b'-')
                && alnum_lower(b[0])
                && alnum_lower(b[b.len() - 1])
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', each \
             dot-separated part starting and ending with a letter or digit",
            elide(s)
        ))
    }
}

fn name_part_ok(b: &[u8]) -> bool {
    !b.is_empty()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A label or annotation key: an optional DNS-1123 subdomain prefix and
/// `/`, then a name of at most 63 alphanumerics, '-', '_' and '.'.
pub fn qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err(format!("{}: the prefix before '/' is empty", elide(s)));
        }
        dns1123_subdomain(p).map_err(|e| format!("prefix of {}: {e}", elide(s)))?;
    }
    if name.len() > QUALIFIED_NAME_MAX {
        return Err(format!(
            "{}: the name part must be no more than {QUALIFIED_NAME_MAX} characters",
            elide(s)
        ));
    }
    if !name_part_ok(name.as_bytes()) {
        return Err(format!(
            "{} is not a qualified name: an optional DNS subdomain prefix and '/', then \
             alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric",
            elide(s)
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 alphanumerics, '-', '_' and '.',
/// starting and ending with an alphanumeric.
pub fn label_value(s: &str) -> Result<(), String> {
    if let Some(e) = too_long(s, LABEL_VALUE_MAX) {
        return Err(e);
    }
    if s.is_empty() || name_part_ok(s.as_bytes()) {
        Ok(())
    } else {
        Err(format!(
            "{} is not a valid label value: alphanumerics, '-', '_' or '.', starting and \
             ending with an alphanumeric",
            elide(s)
        ))
    }
}

/// A named port (containerPort name, targetPort): an IANA service name,
/// at most 15 lowercase alphanumerics and '-', with a letter, no `--`,
/// not starting or ending with '-'.
pub fn iana_svc_name(s: &str) -> Result<(), String> {
    if let Some(e) = too_long(s, IANA_SVC_NAME_MAX) {
        return Err(e);
    }
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.iter().all(|&c| alnum_lower(c) || c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && !s.contains("--")
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not an IANA service name: at most 15 lowercase letters, digits and '-', \
             with at least one letter, no \"--\", not starting or ending with '-'",
            elide(s)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rule = fn(&str) -> Result<(), String>;

    #[test]
    fn rules_table() {
        let long = "a".repeat(64);
        let cases: &[(Rule, &str, bool)] = &[
            (dns1123_label, "web-0", true),
            (dns1123_label, "0web", true),
            (dns1123_label, "../../x", false),
            (dns1123_label, "Web", false),
            (dns1123_label, "-web", false),
            (dns1123_label, &long, false),
            (dns1123_label, "", false),
            (dns1035_label, "web", true),
            (dns1035_label, "0web", false),
            (dns1123_subdomain, "web.example.com", true),
            (dns1123_subdomain, "$(reboot)", false),
            (dns1123_subdomain, "a..b", false),
            (dns1123_subdomain, "..", false),
            (qualified_name, "app", true),
            (qualified_name, "app.kubernetes.io/name", true),
            (qualified_name, "App_1.x", true),
            (qualified_name, "/x", false),
            (qualified_name, "a/b/c", false),
            (qualified_name, "Bad.Prefix/x", false),
            (label_value, "", true),
            (label_value, "v1.2_3", true),
            (label_value, "a b", false),
            (label_value, &long, false),
            (iana_svc_name, "http", true),
            (iana_svc_name, "dns-tcp", true),
            (iana_svc_name, "8080", false),
            (iana_svc_name, "a--b", false),
            (iana_svc_name, "very-long-port-name", false),
        ];
        for (i, (check, value, ok)) in cases.iter().enumerate() {
            assert_eq!(check(value).is_ok(), *ok, "case {i}: {value:?}");
        }
    }
}
