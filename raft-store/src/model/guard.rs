//! The content guard's replicated settings: feeds of patterns operators load
//! (`joch guard feed apply -f`), checked (every regex compiles, linear-time) when applied, so every
//! node scans with the same patterns.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::command::{Applied, Command};
use super::registry::{changed, invalid, unchanged, ApplyError, Registry, Stamp, Touched};
use super::validate::check_name;
use super::validate::FieldError;

/// One feed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Feed {
    /// Its name (`feed.NAME.ID` is each pattern's rule id).
    pub name: String,
    /// Where it comes from (a vendor, a team).
    pub source: String,
    /// Its version, as the source gives it.
    pub version: String,
    /// The patterns.
    pub patterns: Vec<joch_guard::FeedPattern>,
    /// Who loaded it, when.
    pub at: Stamp,
}

/// The guard's settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct GuardSettings {
    /// Feeds by name.
    pub feeds: BTreeMap<String, Feed>,
}

/// Most patterns in one feed.
pub const MAX_PATTERNS: usize = 10_000;

/// Every problem of a feed's patterns (ids, families, regexes), located.
pub fn check(name: &str, patterns: &[joch_guard::FeedPattern]) -> Vec<FieldError> {
    let mut out = Vec::new();
    if patterns.is_empty() {
        out.push(FieldError { field: "patterns".into(), message: "a feed needs at least one pattern".into() });
    }
    if patterns.len() > MAX_PATTERNS {
        out.push(FieldError {
            field: "patterns".into(),
            message: format!("{} patterns: at most {MAX_PATTERNS}", patterns.len()),
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in patterns.iter().enumerate() {
        let ok = !p.id.is_empty()
            && p.id.len() <= 64
            && p.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            out.push(FieldError {
                field: format!("patterns[{i}].id"),
                message: format!("{:?}: letters, digits, '-', '_', '.'; 1 to 64", p.id),
            });
        }
        if !seen.insert(p.id.as_str()) {
            out.push(FieldError { field: format!("patterns[{i}].id"), message: format!("{:?} is used twice", p.id) });
        }
    }
    if let Err(errs) = joch_guard::Extra::compile([(format!("feed.{name}"), patterns)]) {
        for e in errs {
            let (field, message) =
                e.split_once(": ").map(|(f, m)| (f.to_string(), m.to_string())).unwrap_or(("patterns".into(), e));
            out.push(FieldError { field, message });
        }
    }
    out
}

impl Registry {
    /// The content guard's feed commands.
    pub(super) fn apply_guard(
        &mut self,
        command: &Command,
        stamp: &Stamp,
        touched: &mut Touched,
    ) -> Result<(String, Applied), ApplyError> {
        Ok(match command {
            Command::SetGuardFeed { name, source, version, patterns } => {
                check_name("name", name).map_err(invalid)?;
                let problems = super::guard::check(name, patterns);
                if !problems.is_empty() {
                    return Err(ApplyError::Invalid(problems));
                }
                let feed = super::guard::Feed {
                    name: name.clone(),
                    source: source.clone(),
                    version: version.clone(),
                    patterns: patterns.clone(),
                    at: stamp.clone(),
                };
                let guard = Arc::make_mut(&mut self.guard);
                let same =
                    guard.feeds.get(name).is_some_and(|f| f.patterns == feed.patterns && f.version == feed.version);
                if same {
                    return Ok((format!("guardfeed/{name}"), unchanged("feed unchanged")));
                }
                let replaced = guard.feeds.insert(name.clone(), feed).is_some();
                touched.guard = true;
                let verb = if replaced { "replaced" } else { "loaded" };
                (
                    format!("guardfeed/{name}"),
                    changed(format!(
                        "content-guard feed {name} {verb}: {} patterns from {source} ({version})",
                        patterns.len()
                    )),
                )
            }
            Command::DeleteGuardFeed { name } => {
                if Arc::make_mut(&mut self.guard).feeds.remove(name).is_none() {
                    return Err(ApplyError::Access { kind: "guard feed".into(), name: name.clone(), exists: false });
                }
                touched.guard = true;
                (format!("guardfeed/{name}"), changed("content-guard feed removed".into()))
            }
            other => {
                return Err(invalid(FieldError {
                    field: "command".into(),
                    message: format!("{} is not a content-guard command", other.kind()),
                }))
            }
        })
    }
}
