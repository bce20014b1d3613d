//! What a condition tests a value with, compiled once from the manifest's YAML: equality, globs,
//! numeric comparisons (`"<0.75"`), any-of lists, regular expressions (the `regex` crate: linear
//! time, no backtracking), `in`/`notIn`/`exists`.

use serde_json::Value;

use crate::PolicyError;

/// A value a condition looks at, borrowed from the request's facts.
#[derive(Debug, Clone, Copy)]
pub enum Val<'a> {
    /// Not there (an unknown trust score, a missing argument).
    Missing,
    /// Text.
    Str(&'a str),
    /// A number.
    Num(f64),
    /// A flag.
    Bool(bool),
    /// Several words (risk tags): a test holds when it holds for any of them.
    Words(&'a [String]),
    /// A JSON value (arguments, results).
    Json(&'a Value),
}

/// A compiled test.
#[derive(Debug, Clone)]
pub enum Test {
    /// Equal text.
    Str(String),
    /// A glob over text: `*` any run, `?` one character.
    Glob(Glob),
    /// Equal number.
    Num(f64),
    /// Equal flag.
    Bool(bool),
    /// A numeric comparison.
    Cmp(Cmp, f64),
    /// A regular expression (searched, as `regex` does; anchor it with `^...$`).
    Regex(regex::Regex),
    /// Any of these holds.
    Any(Vec<Test>),
    /// None of these holds (also holds for a missing value).
    None(Vec<Test>),
    /// All of these hold.
    All(Vec<Test>),
    /// The value is there (or, with `false`, is not).
    Exists(bool),
}

/// A numeric comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Cmp {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
        }
    }
}

impl Test {
    /// Compiles a matcher as written in a manifest, at `field`.
    pub fn compile(field: &str, v: &Value) -> Result<Test, PolicyError> {
        let err = |message: String| PolicyError::at(field, message);
        Ok(match v {
            Value::Bool(b) => Test::Bool(*b),
            Value::Number(n) => Test::Num(n.as_f64().ok_or_else(|| err("not a finite number".into()))?),
            Value::String(s) => Test::from_str(s),
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(err("an empty list matches nothing; remove the condition or name values".into()));
                }
                Test::Any(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, x)| Test::compile(&format!("{field}[{i}]"), x))
                        .collect::<Result<_, _>>()?,
                )
            }
            Value::Object(m) => {
                if m.is_empty() {
                    return Err(err("an empty mapping: expected a value or one of regex, in, notIn, exists, glob, eq, ne, lt, lte, gt, gte".into()));
                }
                let mut all = Vec::new();
                for (k, x) in m {
                    let at = format!("{field}.{k}");
                    let num = |x: &Value| {
                        x.as_f64()
                            .or_else(|| x.as_str().and_then(|s| s.trim().parse().ok()))
                            .ok_or_else(|| PolicyError::at(&at, format!("expected a number, got {x}")))
                    };
                    all.push(match k.as_str() {
                        "regex" => {
                            let src = x.as_str().ok_or_else(|| PolicyError::at(&at, "expected a string".into()))?;
                            // `^literal`: a prefix test, no automaton.
                            if let Some(lit) = src.strip_prefix('^').filter(|l| {
                                !l.is_empty() && !l.chars().any(|c| "\\.^$*+?()[]{}|".contains(c))
                            }) {
                                all.push(Test::Glob(Glob::new(&format!("{lit}*"))));
                                continue;
                            }
                            let re = regex::RegexBuilder::new(src)
                                .size_limit(1 << 20)
                                .build()
                                .map_err(|e| PolicyError::at(&at, format!("invalid regular expression: {e}")))?;
                            Test::Regex(re)
                        }
                        "glob" => Test::Glob(Glob::new(
                            x.as_str().ok_or_else(|| PolicyError::at(&at, "expected a string".into()))?,
                        )),
                        "in" | "notIn" => {
                            let list = match Test::compile(&at, x)? {
                                Test::Any(l) => l,
                                one => vec![one],
                            };
                            if k == "in" {
                                Test::Any(list)
                            } else {
                                Test::None(list)
                            }
                        }
                        "exists" => Test::Exists(
                            x.as_bool().ok_or_else(|| PolicyError::at(&at, "expected true or false".into()))?,
                        ),
                        "eq" => Test::compile(&at, x)?,
                        "ne" => Test::None(vec![Test::compile(&at, x)?]),
                        "lt" => Test::Cmp(Cmp::Lt, num(x)?),
                        "lte" => Test::Cmp(Cmp::Le, num(x)?),
                        "gt" => Test::Cmp(Cmp::Gt, num(x)?),
                        "gte" => Test::Cmp(Cmp::Ge, num(x)?),
                        other => {
                            return Err(PolicyError::at(
                                &at,
                                format!("unknown test {other:?}: expected regex, in, notIn, exists, glob, eq, ne, lt, lte, gt, gte"),
                            ))
                        }
                    });
                }
                if all.len() == 1 {
                    all.pop().unwrap_or(Test::Exists(true))
                } else {
                    Test::All(all)
                }
            }
            Value::Null => return Err(err("a condition needs a value (null given)".into())),
        })
    }

    /// A string as written: `"<0.75"` (a comparison), `"repo-*"` (a glob), else equal text.
    fn from_str(s: &str) -> Test {
        let t = s.trim_start();
        for (op, cmp) in
            [("<=", Cmp::Le), (">=", Cmp::Ge), ("==", Cmp::Eq), ("!=", Cmp::Ne), ("<", Cmp::Lt), (">", Cmp::Gt)]
        {
            if let Some(rest) = t.strip_prefix(op) {
                if let Ok(n) = rest.trim().parse::<f64>() {
                    if n.is_finite() {
                        return Test::Cmp(cmp, n);
                    }
                }
            }
        }
        if s.contains('*') || s.contains('?') {
            Test::Glob(Glob::new(s))
        } else {
            Test::Str(s.to_string())
        }
    }

    /// Whether the test holds for `v`.
    pub fn holds(&self, v: Val<'_>) -> bool {
        match (self, v) {
            (Test::Exists(want), v) => *want != matches!(v, Val::Missing | Val::Json(Value::Null)),
            (Test::None(list), v) => !list.iter().any(|t| t.holds(v)),
            (Test::Any(list), v) => list.iter().any(|t| t.holds(v)),
            (Test::All(list), v) => list.iter().all(|t| t.holds(v)),
            (_, Val::Missing) => false,
            (t, Val::Words(ws)) => ws.iter().any(|w| t.holds(Val::Str(w))),
            (t, Val::Json(j)) => match j {
                Value::String(s) => t.holds(Val::Str(s)),
                Value::Number(n) => n.as_f64().is_some_and(|n| t.holds(Val::Num(n))),
                Value::Bool(b) => t.holds(Val::Bool(*b)),
                Value::Array(items) => items.iter().any(|x| t.holds(Val::Json(x))),
                Value::Null | Value::Object(_) => false,
            },
            (Test::Str(want), Val::Str(s)) => want == s,
            (Test::Str(want), Val::Num(n)) => want.parse::<f64>().is_ok_and(|w| w == n),
            (Test::Str(want), Val::Bool(b)) => want == if b { "true" } else { "false" },
            (Test::Glob(g), Val::Str(s)) => g.matches(s),
            (Test::Glob(_), _) => false,
            (Test::Num(want), Val::Num(n)) => *want == n,
            (Test::Num(want), Val::Str(s)) => s.trim().parse::<f64>().is_ok_and(|n| n == *want),
            (Test::Num(_), Val::Bool(_)) => false,
            (Test::Bool(want), Val::Bool(b)) => *want == b,
            (Test::Bool(want), Val::Str(s)) => s == if *want { "true" } else { "false" },
            (Test::Bool(_), Val::Num(_)) => false,
            (Test::Cmp(c, want), Val::Num(n)) => c.holds(n, *want),
            (Test::Cmp(c, want), Val::Str(s)) => s.trim().parse::<f64>().is_ok_and(|n| c.holds(n, *want)),
            (Test::Cmp(..), Val::Bool(_)) => false,
            (Test::Regex(re), Val::Str(s)) => re.is_match(s),
            (Test::Regex(re), Val::Num(n)) => re.is_match(&n.to_string()),
            (Test::Regex(re), Val::Bool(b)) => re.is_match(if b { "true" } else { "false" }),
        }
    }

    /// Exact names this test can hold for (for indexing), if it only holds for a known set.
    pub fn exact_names(&self) -> Option<Vec<&str>> {
        match self {
            Test::Str(s) => Some(vec![s.as_str()]),
            Test::Any(list) => {
                let mut out = Vec::new();
                for t in list {
                    out.extend(t.exact_names()?);
                }
                Some(out)
            }
            _ => None,
        }
    }
}

/// A glob: `*` matches any run of characters (none included), `?` one character; the rest is
/// literal. Matching is linear in practice (the classic two-pointer algorithm), on bytes when
/// pattern and text are ASCII (no allocation), else on characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    /// A pattern without `*` or `?` after a literal prefix ends in one `*` (`create_*`): a prefix test.
    prefix: Option<String>,
}

impl Glob {
    /// Compiles a glob.
    pub fn new(s: &str) -> Glob {
        let prefix = s.strip_suffix('*').filter(|p| !p.contains('*') && !p.contains('?')).map(str::to_string);
        Glob { pattern: s.to_string(), prefix }
    }

    /// What every match begins with: the pattern up to its first wildcard.
    pub(crate) fn literal_prefix(&self) -> &str {
        let end = self.pattern.find(['*', '?']).unwrap_or(self.pattern.len());
        &self.pattern[..end]
    }

    /// Whether `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        if let Some(p) = &self.prefix {
            return s.starts_with(p.as_str());
        }
        if self.pattern.is_ascii() && s.is_ascii() {
            two_pointer(self.pattern.as_bytes(), s.as_bytes())
        } else {
            let p: Vec<char> = self.pattern.chars().collect();
            let t: Vec<char> = s.chars().collect();
            two_pointer(&p, &t)
        }
    }
}

fn two_pointer<T: PartialEq + Copy + Star>(p: &[T], t: &[T]) -> bool {
    let (mut i, mut j) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && (p[i].any_one() || p[i] == t[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i].any_run() {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| c.any_run())
}

trait Star {
    fn any_run(self) -> bool;
    fn any_one(self) -> bool;
}

impl Star for u8 {
    fn any_run(self) -> bool {
        self == b'*'
    }
    fn any_one(self) -> bool {
        self == b'?'
    }
}

impl Star for char {
    fn any_run(self) -> bool {
        self == '*'
    }
    fn any_one(self) -> bool {
        self == '?'
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(v: Value) -> Test {
        Test::compile("x", &v).unwrap()
    }

    #[test]
    fn strings_compare_glob_or_equal() {
        assert!(t(json!("<0.75")).holds(Val::Num(0.5)));
        assert!(!t(json!("<0.75")).holds(Val::Num(0.75)));
        assert!(!t(json!("<0.75")).holds(Val::Missing), "an unknown score matches no comparison");
        assert!(t(json!(">= 3")).holds(Val::Json(&json!(3))));
        assert!(t(json!("*")).holds(Val::Str("github")));
        assert!(t(json!("repo-?")).holds(Val::Str("repo-1")));
        assert!(!t(json!("repo-?")).holds(Val::Str("repo-12")));
        assert!(t(json!("a*b*c")).holds(Val::Str("aXXbYYc")));
        assert!(!t(json!("a*b*c")).holds(Val::Str("aXXbYY")));
        assert!(t(json!("é*ü")).holds(Val::Str("éxxü")) && !t(json!("é?ü")).holds(Val::Str("éxxü")));
        assert!(t(json!("create_*")).holds(Val::Str("create_")) && !t(json!("create_*")).holds(Val::Str("creat")));
        assert!(t(json!("read")).holds(Val::Str("read")));
        assert!(!t(json!("read")).holds(Val::Str("reader")));
        assert!(t(json!(true)).holds(Val::Bool(true)));
        assert!(!t(json!(true)).holds(Val::Missing));
    }

    #[test]
    fn lists_words_and_objects() {
        let prod = vec!["prod".to_string(), "pii".to_string()];
        assert!(t(json!(["prod"])).holds(Val::Words(&prod)));
        assert!(!t(json!(["non_prod"])).holds(Val::Words(&prod)));
        assert!(t(json!({"notIn": ["github", "jira"]})).holds(Val::Str("notion")));
        assert!(!t(json!({"notIn": ["github", "jira"]})).holds(Val::Str("jira")));
        assert!(t(json!({"regex": "^acme/"})).holds(Val::Json(&json!("acme/x"))));
        assert!(!t(json!({"regex": "^acme/"})).holds(Val::Json(&json!("x/acme/"))));
        assert!(t(json!({"regex": "^a.c"})).holds(Val::Str("abc")), "a metacharacter: a real regex");
        assert!(matches!(t(json!({"regex": "^acme/"})), Test::Glob(_)));
        assert!(t(json!({"gt": 10, "lte": 20})).holds(Val::Num(20.0)));
        assert!(!t(json!({"gt": 10, "lte": 20})).holds(Val::Num(21.0)));
        assert!(t(json!({"exists": false})).holds(Val::Missing));
        assert!(t(json!({"exists": true})).holds(Val::Json(&json!(0))));
        assert!(t(json!("main")).holds(Val::Json(&json!(["dev", "main"]))), "any element of an array argument");
    }

    #[test]
    fn bad_matchers_name_the_field() {
        let e = Test::compile("spec.rules[0].when.x", &json!({"regex": "("})).unwrap_err();
        assert_eq!(e.field, "spec.rules[0].when.x.regex");
        assert!(e.message.contains("invalid regular expression"), "{e}");
        assert!(Test::compile("f", &json!({"like": 1})).unwrap_err().message.contains("unknown test \"like\""));
        assert!(Test::compile("f", &json!([])).is_err());
        assert!(Test::compile("f", &Value::Null).is_err());
    }
}
