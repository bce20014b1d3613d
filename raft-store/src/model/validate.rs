//! Checks on names, versions and specs shared by the admin API and the state machine.
//!
//! The state machine re-runs them on apply so a bad command is rejected deterministically on every
//! replica, whoever proposed it.

use super::resource::{Auth, AuthKind, EnvValue, GuardianSpec, McpServerSpec, Transport};

/// One problem with one field of a resource.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `spec.endpoint.url`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn err(field: &str, message: impl Into<String>) -> FieldError {
    FieldError { field: field.to_string(), message: message.into() }
}

/// A resource name: 1..=63 characters of `a-z`, `0-9` and `-`, starting with a letter and not
/// ending with `-`. No dots: aggregate tool names are `server.tool`.
pub fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_lowercase()
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!("invalid name {name:?}: use 1-63 lowercase letters, digits and '-', starting with a letter"),
        ))
    }
}

/// A server version as used by pins: `MAJOR[.MINOR[.PATCH]][-PRE][+BUILD]`, optional leading `v`.
pub fn check_version(field: &str, version: &str) -> Result<(), FieldError> {
    let bad =
        || err(field, format!("invalid version {version:?}: expected MAJOR[.MINOR[.PATCH]][-PRE][+BUILD], e.g. 1.2.0"));
    if version.is_empty() || version.len() > 64 {
        return Err(bad());
    }
    let v = version.strip_prefix('v').unwrap_or(version);
    let (core, build) = match v.split_once('+') {
        Some((c, b)) => (c, Some(b)),
        None => (v, None),
    };
    let (core, pre) = match core.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (core, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty() || parts.len() > 3 {
        return Err(bad());
    }
    if !parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(bad());
    }
    let ident_ok = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    if pre.is_some_and(|p| !ident_ok(p)) || build.is_some_and(|b| !ident_ok(b)) {
        return Err(bad());
    }
    Ok(())
}

/// Parses a duration such as `10m`, `30s`, `1h30m`.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0u64;
    let mut num = String::new();
    let mut saw_unit = false;
    let bytes: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_digit() {
            num.push(c);
            i += 1;
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let (mult, len) = match (c, bytes.get(i + 1)) {
            ('m', Some('s')) => (0, 2),
            ('h', _) => (3_600_000, 1),
            ('m', _) => (60_000, 1),
            ('s', _) => (1_000, 1),
            ('d', _) => (86_400_000, 1),
            _ => return None,
        };
        total = total.checked_add(if len == 2 { n } else { n.checked_mul(mult)? })?;
        saw_unit = true;
        i += len;
    }
    if !num.is_empty() || !saw_unit {
        return None;
    }
    Some(std::time::Duration::from_millis(total))
}

impl McpServerSpec {
    /// Every problem with this spec, at once.
    pub fn problems(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        match self.transport {
            Transport::StreamableHttp => match &self.endpoint {
                None => out.push(err("spec.endpoint.url", "required for transport streamable_http")),
                Some(ep) => {
                    let u = ep.url.as_str();
                    let rest = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://"));
                    match rest {
                        Some(r) if !r.is_empty() && !r.starts_with('/') => {}
                        _ => out.push(err(
                            "spec.endpoint.url",
                            format!("invalid URL {u:?}: expected http://HOST[:PORT]/PATH or https://..."),
                        )),
                    }
                }
            },
            Transport::Stdio => match &self.stdio {
                None => out.push(err("spec.stdio.command", "required for transport stdio")),
                Some(s) if s.command.trim().is_empty() => out.push(err("spec.stdio.command", "must not be empty")),
                Some(_) => {}
            },
        }
        if let Some(auth) = &self.auth {
            self.auth_problems(auth, &mut out);
        }
        if let Some(stdio) = &self.stdio {
            for (k, v) in &stdio.env {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    out.push(err(&format!("spec.stdio.env.{k}"), "not a valid environment variable name"));
                }
                if let EnvValue::SecretRef(r) = v {
                    if let Err(e) = check_name(&format!("spec.stdio.env.{k}.secretRef.name"), &r.name) {
                        out.push(e);
                    }
                }
            }
        }
        let tag_ok = |t: &str| {
            !t.is_empty() && t.len() <= 63 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        for (i, t) in self.risk_tags.iter().enumerate().filter(|(_, t)| !tag_ok(t)) {
            out.push(err(
                &format!("spec.riskTags[{i}]"),
                format!("invalid risk tag {t:?}: letters, digits, '-', '_', '.'"),
            ));
        }
        for (name, tool) in &self.tools {
            if name.is_empty() {
                out.push(err("spec.tools", "a tool name is empty"));
            }
            for (i, t) in tool.risk_tags.iter().enumerate().filter(|(_, t)| !tag_ok(t)) {
                out.push(err(
                    &format!("spec.tools.{name}.riskTags[{i}]"),
                    format!("invalid risk tag {t:?}: letters, digits, '-', '_', '.'"),
                ));
            }
        }
        if parse_duration(&self.discovery.refresh_interval).is_none() {
            out.push(err(
                "spec.discovery.refreshInterval",
                format!("invalid duration {:?}: expected e.g. 30s, 10m, 1h", self.discovery.refresh_interval),
            ));
        }
        if let Some(v) = &self.security.pinned_version {
            if let Err(e) = check_version("spec.security.pinnedVersion", v) {
                out.push(e);
            }
        } else if self.security.pin_server_version {
            out.push(err("spec.security.pinnedVersion", "required when pinServerVersion is true"));
        }
        if let Some(t) = self.security.min_trust_score {
            if !(0.0..=1.0).contains(&t) || t.is_nan() {
                out.push(err("spec.security.minTrustScore", format!("{t} is outside 0..1")));
            }
        }
        for (i, class) in self.scanning.redact_fields_in_results.iter().enumerate() {
            if joch_guard::class_rules(class).is_none() {
                out.push(err(
                    &format!("spec.scanning.redactFieldsInResults[{i}]"),
                    format!("unknown class {class:?} (one of {})", joch_guard::CLASSES.join(", ")),
                ));
            }
        }
        for (i, p) in self.policies.iter().enumerate() {
            if let Err(e) = check_name(&format!("spec.policies[{i}].name"), &p.name) {
                out.push(e);
            }
        }
        if let Some(g) = &self.guardian {
            out.extend(g.problems("spec.guardian"));
        }
        if let Some(d) = &self.description {
            let n = d.chars().count();
            if n == 0 || n > 100 {
                out.push(err(
                    "spec.description",
                    format!("{n} characters: a description has 1 to 100 (it is served as server.json's description)"),
                ));
            }
        }
        if let Some(p) = &self.publisher {
            let ok = !p.is_empty()
                && p.len() <= 100
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            if !ok {
                out.push(err("spec.publisher", format!("invalid publisher {p:?}: a reverse-DNS namespace such as io.github.acme (letters, digits, '.', '-')")));
            }
        }
        out
    }
}

impl McpServerSpec {
    fn auth_problems(&self, auth: &Auth, out: &mut Vec<FieldError>) {
        if auth.kind == AuthKind::None {
            return;
        }
        if self.transport == Transport::Stdio {
            out.push(err(
                "spec.auth",
                "applies to streamable_http servers; a stdio server gets secrets through spec.stdio.env secretRef",
            ));
        }
        match &auth.secret_ref {
            None => out.push(err("spec.auth.secretRef.name", format!("required for auth type {}", auth.kind.as_str()))),
            Some(r) => {
                if let Err(e) = check_name("spec.auth.secretRef.name", &r.name) {
                    out.push(e);
                }
            }
        }
        if auth.kind == AuthKind::Header && auth.header.is_none() {
            out.push(err("spec.auth.header", "required for auth type header (the header's name)"));
        }
        if let Some(h) = &auth.header {
            let ok = !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !ok {
                out.push(err("spec.auth.header", format!("{h:?} is not a header name")));
            }
        }
        if auth.kind == AuthKind::Oauth2 {
            // Absent: the secret's `token_url` key names it (the seeds' form: type and secretRef).
            match auth.token_url.as_deref() {
                None => {}
                Some(u) if !(u.starts_with("https://") || u.starts_with("http://")) => {
                    out.push(err("spec.auth.tokenUrl", format!("invalid URL {u:?}: expected https://...")))
                }
                Some(_) => {}
            }
        } else if auth.token_url.is_some() || !auth.scopes.is_empty() || auth.audience.is_some() {
            out.push(err("spec.auth.tokenUrl", "tokenUrl, scopes and audience apply to auth type oauth2 only"));
        }
    }
}

impl GuardianSpec {
    /// Every problem with it; `at` is where it is written (`spec.guardian`, `guardian`).
    pub fn problems(&self, at: &str) -> Vec<FieldError> {
        let mut out = Vec::new();
        let u = self.endpoint.as_str();
        match u.strip_prefix("http://").or_else(|| u.strip_prefix("https://")) {
            Some(r) if !r.is_empty() && !r.starts_with('/') => {}
            _ => out.push(err(
                &format!("{at}.endpoint"),
                format!("invalid URL {u:?}: expected http://HOST[:PORT]/PATH or https://..."),
            )),
        }
        if let Some(t) = &self.timeout {
            match parse_duration(t) {
                Some(d) if d >= std::time::Duration::from_millis(1) && d <= std::time::Duration::from_secs(60) => {}
                _ => out.push(err(
                    &format!("{at}.timeout"),
                    format!("invalid timeout {t:?}: expected a duration from 1ms to 60s, e.g. 500ms"),
                )),
            }
        }
        if let Some(n) = &self.name {
            if let Err(e) = check_name(&format!("{at}.name"), n) {
                out.push(e);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["github", "a", "mcp-server-time", "x1"] {
            assert!(check_name("n", ok).is_ok(), "{ok}");
        }
        for bad in ["", "GitHub", "git.hub", "-x", "x-", "1abc", &"a".repeat(64), "a b"] {
            assert!(check_name("n", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions() {
        for ok in ["1.2.0", "v1.3.0", "1", "1.2", "2.0.0-rc.1", "1.0.0+build.5", "1.0.0-beta+exp.sha.5114f85"] {
            assert!(check_version("v", ok).is_ok(), "{ok}");
        }
        for bad in ["", "latest", "1.2.3.4", "1..2", "1.x", "1.2.0-", "1.2.0+", "v", " 1.2.0"] {
            assert!(check_version("v", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Some(std::time::Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Some(std::time::Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(std::time::Duration::from_millis(250)));
        assert_eq!(parse_duration("24h"), Some(std::time::Duration::from_secs(86400)));
        for bad in ["", "10", "m", "10x", "1h30", "-1m"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn spec_problems_are_all_reported() {
        let mut spec = McpServerSpec::default();
        spec.discovery.refresh_interval = "soon".into();
        spec.security.pin_server_version = true;
        spec.security.min_trust_score = Some(1.5);
        let fields: Vec<String> = spec.problems().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.endpoint.url",
                "spec.discovery.refreshInterval",
                "spec.security.pinnedVersion",
                "spec.security.minTrustScore"
            ]
        );
    }
}
