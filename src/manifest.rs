//! The `.eserveless.yaml` schema: parsing, validation, runtime detection and warnings.
//!
//! This module is pure: it sees the manifest text and the names of the files at the
//! checkout's root, and returns either a validated [`Manifest`] or a [`ManifestError`]
//! whose message names every problem and says how to fix it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::names::FunctionName;

/// The manifest's file name at the repository root.
pub const MANIFEST_FILE: &str = ".eserveless.yaml";

/// Default per-request / per-run timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest timeout a manifest may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Default in-flight requests per instance.
pub const DEFAULT_CONCURRENCY: u32 = 16;
/// Default cap on instances per function.
pub const DEFAULT_MAX_INSTANCES: u32 = 4;
/// Hard cap on instances per function.
pub const LIMIT_MAX_INSTANCES: u32 = 64;
/// Default idle time before an instance is paused.
pub const DEFAULT_PAUSE_AFTER: Duration = Duration::from_secs(30);
/// Default idle time before an instance is removed (scale to zero).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// What kind of function this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunctionKind {
    /// Served over HTTP through the gateway.
    Http,
    /// Run once per firing of `schedule`.
    Cron { schedule: String },
}

impl FunctionKind {
    pub fn as_str(&self) -> &'static str {
        self.function_type().as_str()
    }
    /// The kind without its settings: what the store and the API record.
    pub fn function_type(&self) -> FunctionType {
        match self {
            FunctionKind::Http => FunctionType::Http,
            FunctionKind::Cron { .. } => FunctionType::Cron,
        }
    }
    pub fn schedule(&self) -> Option<&str> {
        match self {
            FunctionKind::Http => None,
            FunctionKind::Cron { schedule } => Some(schedule),
        }
    }
}

/// A function's `type`, as the manifest, the store (`functions.kind`) and the API's `type`
/// field spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FunctionType {
    Http,
    Cron,
}

impl FunctionType {
    pub const ALL: [FunctionType; 2] = [FunctionType::Http, FunctionType::Cron];

    /// The text stored in SQL, used as template set name and in container labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionType::Http => "http",
            FunctionType::Cron => "cron",
        }
    }

    /// The inverse of [`FunctionType::as_str`]; `None` for any other text.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl fmt::Display for FunctionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Scaling settings of an http function.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Scaling {
    pub concurrency: u32,
    pub min_instances: u32,
    pub max_instances: u32,
    #[serde(with = "humantime_serde_secs")]
    #[schema(value_type = f64)]
    pub pause_after: Duration,
    #[serde(with = "humantime_serde_secs")]
    #[schema(value_type = f64)]
    pub idle_timeout: Duration,
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            concurrency: DEFAULT_CONCURRENCY,
            min_instances: 0,
            max_instances: DEFAULT_MAX_INSTANCES,
            pause_after: DEFAULT_PAUSE_AFTER,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Durations stored as fractional seconds in JSON.
mod humantime_serde_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// Who may invoke an http function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone who can reach the gateway.
    #[default]
    Public,
    /// Only callers that send the project's invoke key.
    Private,
}

/// Access and resources of one function; `None` resources take the operator's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FunctionOptions {
    pub auth: Access,
    pub memory_bytes: Option<u64>,
    /// Thousandths of a CPU.
    pub cpu_millis: Option<u32>,
}

/// The operator's ceilings on what a manifest may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceCaps {
    pub max_memory_bytes: u64,
    pub max_cpu_millis: u32,
}

impl Default for ResourceCaps {
    fn default() -> Self {
        ResourceCaps { max_memory_bytes: 2 * 1024 * 1024 * 1024, max_cpu_millis: 2000 }
    }
}

/// Smallest memory limit a function may ask for.
pub const MIN_MEMORY_BYTES: u64 = 32 * 1024 * 1024;
/// Smallest CPU share a function may ask for, in thousandths.
pub const MIN_CPU_MILLIS: u32 = 50;

/// One validated function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSpec {
    pub name: FunctionName,
    pub kind: FunctionKind,
    /// `ESERVELESS_*` environment variables derived from `meta`, sorted by name.
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    pub scaling: Scaling,
    pub options: FunctionOptions,
    /// A `container` function's Dockerfile, relative to the repository's root.
    pub dockerfile: Option<String>,
}

/// Parses a memory size: a number of bytes, or a number with `k`/`m`/`g` (or `Ki`/`Mi`/`Gi`,
/// `KB`/`MB`/`GB`), all binary as in Docker: `256m` and `256Mi` are both 256 MiB.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{text}` is not a size; write e.g. `256Mi` or `1Gi`"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kb" | "kib" => 1 << 10,
        "m" | "mi" | "mb" | "mib" => 1 << 20,
        "g" | "gi" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("`{text}` has an unknown unit `{other}`; use Ki, Mi or Gi, e.g. `256Mi`")),
    };
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > (1u64 << 50) as f64 {
        return Err(format!("`{text}` is not a sensible size; write e.g. `256Mi`"));
    }
    // In range and finite (checked above): the conversion is exact up to f64's precision.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bytes as u64)
}

/// Parses a CPU share: a number of CPUs (`0.5`, `2`) or thousandths (`500m`).
pub fn parse_cpu(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let millis = match t.strip_suffix('m') {
        Some(m) => m.parse::<f64>().ok(),
        None => t.parse::<f64>().ok().map(|c| c * 1000.0),
    }
    .filter(|m| m.is_finite() && *m > 0.0 && *m < 1e6)
    .ok_or_else(|| format!("`{text}` is not a CPU amount; write a number of CPUs like `0.5` or thousandths like `500m`"))?;
    // Positive, finite and below 1e6 (checked above), so it fits.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(millis.round() as u32)
}

/// A size as the manifest writes it: `2Gi`, `256Mi`.
pub fn format_bytes(b: u64) -> String {
    if b % (1 << 30) == 0 {
        format!("{}Gi", b >> 30)
    } else {
        format!("{}Mi", b >> 20)
    }
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub runtime: String,
    pub functions: Vec<FunctionSpec>,
    pub warnings: Vec<String>,
}

/// Every problem found in a manifest, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {MANIFEST_FILE}: {}", list_problems(.problems))]
pub struct ManifestError {
    pub problems: Vec<String>,
}

/// One problem inline; several as an indented list, one per line.
fn list_problems(problems: &[String]) -> String {
    match problems {
        [one] => one.clone(),
        many => many.iter().map(|p| format!("\n  - {p}")).collect(),
    }
}

/// What the parser needs to know about its surroundings.
pub struct ParseContext<'a> {
    /// Runtimes that have templates (embedded plus operator-supplied).
    pub known_runtimes: &'a [String],
    /// Names of the files and directories at the checkout's root.
    pub root_files: &'a [String],
    /// Scaling used where the manifest says nothing (the operator's defaults).
    pub defaults: &'a Scaling,
    /// The operator's ceilings on `memory` and `cpu`.
    pub caps: ResourceCaps,
}

#[derive(Deserialize)]
struct RawManifest {
    #[allow(dead_code)]
    repo: Option<Value>,
    runtime: Option<String>,
    functions: Option<Vec<RawFunction>>,
}

#[derive(Deserialize)]
struct RawFunction {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    schedule: Option<String>,
    meta: Option<BTreeMap<String, Value>>,
    timeout: Option<String>,
    concurrency: Option<u32>,
    min_instances: Option<u32>,
    max_instances: Option<u32>,
    pause_after: Option<String>,
    idle_timeout: Option<String>,
    auth: Option<String>,
    memory: Option<Value>,
    cpu: Option<Value>,
    dockerfile: Option<String>,
}

const TOP_KEYS: &[&str] = &["repo", "runtime", "functions"];
const FUNCTION_KEYS: &[&str] = &[
    "name",
    "type",
    "schedule",
    "meta",
    "timeout",
    "concurrency",
    "min_instances",
    "max_instances",
    "pause_after",
    "idle_timeout",
    "auth",
    "memory",
    "cpu",
    "dockerfile",
];

/// The runtime whose functions are the repository's own container images.
pub const CONTAINER_RUNTIME: &str = "container";

/// The Dockerfile a `container` function is built from when it names none.
pub const DEFAULT_DOCKERFILE: &str = "Dockerfile";

/// Suggests the closest of `candidates` to `word`, if any is close enough.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match suggest(word, candidates) {
        Some(s) => format!("; did you mean `{s}`?"),
        None => String::new(),
    }
}

/// Parses a cron schedule: 5 standard fields, or 6 with seconds first.
pub fn parse_schedule(expr: &str) -> Result<croner::Cron, String> {
    let fields = expr.split_whitespace().count();
    if fields != 5 && fields != 6 && !expr.trim_start().starts_with('@') {
        return Err(format!(
            "has {fields} fields; use 5 fields (minute hour day-of-month month day-of-week) \
             or 6 with seconds first, e.g. \"*/10 * * * * *\""
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| {
            format!(
                "{e} (fields: [second 0-59] minute 0-59, hour 0-23, day-of-month 1-31, month 1-12, day-of-week 0-7)"
            )
        })
}

/// Turns a `meta` key into its environment variable name.
pub fn meta_env_name(key: &str) -> String {
    let mut name = String::from("ESERVELESS_");
    name.extend(key.chars().map(|c| {
        let c = c.to_ascii_uppercase();
        if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    name
}

/// Detects the runtime from the files at the checkout's root.
pub fn detect_runtime(root_files: &[String]) -> Option<(&'static str, &'static str)> {
    let has = |f: &str| root_files.iter().any(|n| n == f);
    if has("package.json") {
        Some(("node", "package.json"))
    } else if has("functions.js") {
        Some(("node", "functions.js"))
    } else if has("go.mod") {
        Some(("golang", "go.mod"))
    } else if has("functions.py") {
        Some(("python", "functions.py"))
    } else if has("requirements.txt") {
        Some(("python", "requirements.txt"))
    } else if has("pyproject.toml") {
        Some(("python", "pyproject.toml"))
    } else {
        None
    }
}

fn parse_duration(field: &str, who: &str, text: &str, problems: &mut Vec<String>) -> Option<Duration> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => {
            problems.push(format!("{who}: `{field}` must be greater than zero, got `{text}`"));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            problems.push(format!(
                "{who}: `{field}` value `{text}` is not a duration ({e}); write it like `10s`, `500ms` or `5m`"
            ));
            None
        }
    }
}

fn scalar_to_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

fn yaml_error_message(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    match e.location() {
        Some(loc) if !text.contains("line ") => {
            format!("{text} at line {} column {}", loc.line(), loc.column())
        }
        _ => text,
    }
}

fn unknown_key_warnings(doc: &Value, warnings: &mut Vec<String>) {
    let Value::Mapping(top) = doc else { return };
    for key in top.keys() {
        let Some(k) = key.as_str() else { continue };
        if !TOP_KEYS.contains(&k) {
            warnings.push(format!(
                "unknown key `{k}`{}",
                did_you_mean(k, TOP_KEYS.iter().copied())
            ));
        }
    }
    if let Some(Value::Sequence(fns)) = top.get("functions") {
        for (i, f) in fns.iter().enumerate() {
            let Value::Mapping(m) = f else { continue };
            let who = m
                .get("name")
                .and_then(|n| n.as_str())
                .map(|n| format!("function `{n}`"))
                .unwrap_or_else(|| format!("function #{}", i + 1));
            for key in m.keys() {
                let Some(k) = key.as_str() else { continue };
                if !FUNCTION_KEYS.contains(&k) {
                    warnings.push(format!(
                        "{who}: unknown key `{k}`{}",
                        did_you_mean(k, FUNCTION_KEYS.iter().copied())
                    ));
                }
            }
        }
    }
}

/// What the checks found so far: problems make the manifest invalid, warnings do not.
#[derive(Default)]
struct Findings {
    warnings: Vec<String>,
    problems: Vec<String>,
}

/// Parses and validates a manifest. Every check runs, so one answer names every problem;
/// the problems keep the order of the file (top level first, then each function in turn).
pub fn parse(text: &str, ctx: &ParseContext<'_>) -> Result<Manifest, ManifestError> {
    let (doc, raw) = read_document(text)?;
    let mut found = Findings::default();
    unknown_key_warnings(&doc, &mut found.warnings);
    let runtime = resolve_runtime(raw.runtime.as_deref(), ctx, &mut found);
    let raw_functions = function_list(raw.functions, &mut found.problems);

    let mut functions = Vec::new();
    // Lower-cased name → the name as first written, to refuse names differing only in case.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (i, rf) in raw_functions.into_iter().enumerate() {
        if let Some(f) = parse_function(i, rf, runtime.as_deref(), &mut seen, ctx, &mut found) {
            functions.push(f);
        }
    }

    if !found.problems.is_empty() {
        return Err(ManifestError { problems: found.problems });
    }
    Ok(Manifest {
        runtime: runtime.expect("a missing runtime is reported as a problem above"),
        functions,
        warnings: found.warnings,
    })
}

/// The YAML document, and its typed reading; a file that is not a mapping stops here.
fn read_document(text: &str) -> Result<(Value, RawManifest), ManifestError> {
    let fail = |p: String| ManifestError { problems: vec![p] };
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| fail(format!("malformed YAML: {}", yaml_error_message(&e))))?;
    if doc.is_null() {
        return Err(fail("the file is empty; it needs a `functions` list".into()));
    }
    if !doc.is_mapping() {
        return Err(fail("the top level must be a mapping with a `functions` list".into()));
    }
    let raw: RawManifest = serde_yaml_ng::from_str(text).map_err(|e| fail(yaml_error_message(&e)))?;
    Ok((doc, raw))
}

/// The `runtime` key if it names a known runtime, else the one detected from the root files.
fn resolve_runtime(declared: Option<&str>, ctx: &ParseContext<'_>, found: &mut Findings) -> Option<String> {
    match declared.map(str::trim) {
        Some(r) if ctx.known_runtimes.iter().any(|k| k == r) => Some(r.to_string()),
        Some(r) => {
            let mut known: Vec<&str> = ctx.known_runtimes.iter().map(String::as_str).collect();
            known.sort_unstable();
            let hint = match r {
                "go" => "; did you mean `golang`?".to_string(),
                "nodejs" | "javascript" | "js" => "; did you mean `node`?".to_string(),
                _ => did_you_mean(r, known.iter().copied()),
            };
            found.problems.push(format!("unknown runtime `{r}`{hint} (known runtimes: {})", known.join(", ")));
            None
        }
        None => match detect_runtime(ctx.root_files) {
            Some((rt, file)) => {
                found
                    .warnings
                    .push(format!("no `runtime` key; detected `{rt}` from `{file}`; add `runtime: {rt}` to silence this"));
                Some(rt.to_string())
            }
            None => {
                found.problems.push(
                    "no `runtime` key, and none could be detected (no package.json, functions.js, go.mod, functions.py, \
                     requirements.txt or pyproject.toml at the root); add `runtime: node`, `runtime: golang` or `runtime: python`"
                        .into(),
                );
                None
            }
        },
    }
}

/// The `functions` list, which must hold at least one function.
fn function_list(functions: Option<Vec<RawFunction>>, problems: &mut Vec<String>) -> Vec<RawFunction> {
    match functions {
        None => {
            problems.push("no `functions` list; add at least one function, e.g. `functions: [{name: API, type: http}]`".into());
            Vec::new()
        }
        Some(f) if f.is_empty() => {
            problems.push("`functions` is empty; add at least one function".into());
            Vec::new()
        }
        Some(f) => f,
    }
}

/// Checks the function at `index` (0-based); `None` if any part of it is invalid.
fn parse_function(
    index: usize,
    rf: RawFunction,
    runtime: Option<&str>,
    seen: &mut BTreeMap<String, String>,
    ctx: &ParseContext<'_>,
    found: &mut Findings,
) -> Option<FunctionSpec> {
    let position = format!("function #{}", index + 1);
    let Some(name_text) = rf.name.as_deref() else {
        // Without a name the other problems could not say which function they are about.
        found.problems.push(format!("{position} has no `name`; add the exported function's name, e.g. `name: API`"));
        return None;
    };
    let who = format!("function `{name_text}`");
    let name = function_name(&position, &who, name_text, runtime, seen, &mut found.problems);
    let kind = function_kind(&who, rf.kind.as_deref(), rf.schedule.as_deref(), found);
    let env = meta_env(&who, rf.meta.as_ref(), &mut found.problems);
    let timeout = function_timeout(&who, rf.timeout.as_deref(), &mut found.problems);
    let scaling = function_scaling(&who, &rf, kind.as_ref(), ctx.defaults, found);
    let mut options = FunctionOptions { auth: function_access(&who, rf.auth.as_deref(), kind.as_ref(), found), ..Default::default() };
    if let Some(v) = &rf.memory {
        options.memory_bytes = function_memory(&who, v, ctx.caps, &mut found.problems);
    }
    if let Some(v) = &rf.cpu {
        options.cpu_millis = function_cpu(&who, v, ctx.caps, &mut found.problems);
    }
    let dockerfile = function_dockerfile(&who, rf.dockerfile.as_deref(), runtime, &mut found.problems);
    Some(FunctionSpec { name: name?, kind: kind?, env, timeout, scaling, options, dockerfile })
}

/// A `container` function's Dockerfile: a relative path inside the repository (default
/// `Dockerfile`); other runtimes have none.
fn function_dockerfile(who: &str, text: Option<&str>, runtime: Option<&str>, problems: &mut Vec<String>) -> Option<String> {
    if runtime != Some(CONTAINER_RUNTIME) {
        if let Some(t) = text {
            problems.push(format!(
                "{who}: `dockerfile: {t}` applies only to `runtime: {CONTAINER_RUNTIME}`; remove it, or set `runtime: {CONTAINER_RUNTIME}` to build the function from that Dockerfile"
            ));
        }
        return None;
    }
    let t = text.unwrap_or(DEFAULT_DOCKERFILE);
    let path = std::path::Path::new(t);
    let inside = !t.is_empty()
        && path.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir))
        && !t.contains(['\n', '\r', '\0']);
    if !inside {
        problems.push(format!(
            "{who}: `dockerfile: {t}` must be a path inside the repository, relative to its root, like `Dockerfile` or `api/Dockerfile`"
        ));
        return None;
    }
    Some(t.to_string())
}

/// The function's name: valid, exported for Go, and unique ignoring case.
fn function_name(
    position: &str,
    who: &str,
    text: &str,
    runtime: Option<&str>,
    seen: &mut BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> Option<FunctionName> {
    let name = match FunctionName::parse(text) {
        Ok(n) => n,
        Err(e) => {
            problems.push(format!("{position}: {e}"));
            return None;
        }
    };
    if runtime == Some("golang") && !name.as_str().starts_with(|c: char| c.is_ascii_uppercase()) {
        let mut fixed = name.as_str().to_string();
        fixed[..1].make_ascii_uppercase();
        problems.push(format!(
            "{who}: Go only exports names that start with an upper-case letter; rename it to `{fixed}` in the code and the manifest"
        ));
    }
    let folded = name.as_str().to_ascii_lowercase();
    if let Some(prev) = seen.insert(folded, name.as_str().to_string()) {
        problems.push(format!("duplicate function name `{text}` (already used by `{prev}`; names must be unique, ignoring case)"));
    }
    Some(name)
}

/// The `type`, with the `schedule` a cron function needs.
fn function_kind(who: &str, kind: Option<&str>, schedule: Option<&str>, found: &mut Findings) -> Option<FunctionKind> {
    match kind.map(str::trim) {
        Some("http") => {
            if schedule.is_some() {
                found.warnings.push(format!("{who}: `schedule` is ignored for http functions"));
            }
            Some(FunctionKind::Http)
        }
        Some("cron") => match schedule {
            None => {
                found.problems.push(format!("{who}: cron functions need a `schedule`, e.g. `schedule: \"*/5 * * * *\"`"));
                None
            }
            Some(s) => match parse_schedule(s) {
                Ok(_) => Some(FunctionKind::Cron { schedule: s.trim().to_string() }),
                Err(e) => {
                    found.problems.push(format!("{who}: invalid schedule `{s}`: {e}"));
                    None
                }
            },
        },
        Some(other) => {
            found.problems.push(format!(
                "{who}: unknown type `{other}`{}; expected `http` or `cron`",
                did_you_mean(other, FunctionType::ALL.map(FunctionType::as_str))
            ));
            None
        }
        None => {
            found.problems.push(format!("{who} has no `type`; add `type: http` or `type: cron`"));
            None
        }
    }
}

/// `meta` as `ESERVELESS_*` environment variables; two keys may not become the same variable.
fn meta_env(who: &str, meta: Option<&BTreeMap<String, Value>>, problems: &mut Vec<String>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut env_sources: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in meta.into_iter().flatten() {
        if key.trim().is_empty() {
            problems.push(format!("{who}: `meta` has an empty key"));
            continue;
        }
        let var = meta_env_name(key);
        let Some(value) = scalar_to_string(value) else {
            problems.push(format!("{who}: `meta.{key}` must be a string, number or boolean, not a list or mapping"));
            continue;
        };
        if value.contains('\0') {
            problems.push(format!("{who}: `meta.{key}` contains a NUL character"));
            continue;
        }
        if let Some(prev) = env_sources.insert(var.clone(), key.clone()) {
            problems.push(format!("{who}: `meta` keys `{prev}` and `{key}` both become `{var}`; rename one of them"));
        }
        env.insert(var, value);
    }
    env
}

/// The per-request / per-run timeout, at most [`MAX_TIMEOUT`].
fn function_timeout(who: &str, text: Option<&str>, problems: &mut Vec<String>) -> Duration {
    let Some(t) = text else { return DEFAULT_TIMEOUT };
    match parse_duration("timeout", who, t, problems) {
        Some(d) if d > MAX_TIMEOUT => {
            problems.push(format!("{who}: `timeout` `{t}` is longer than the maximum of 15m"));
            DEFAULT_TIMEOUT
        }
        Some(d) => d,
        None => DEFAULT_TIMEOUT,
    }
}

/// The operator's scaling defaults with the function's own settings applied.
fn function_scaling(
    who: &str,
    rf: &RawFunction,
    kind: Option<&FunctionKind>,
    defaults: &Scaling,
    found: &mut Findings,
) -> Scaling {
    let problems = &mut found.problems;
    let mut scaling = defaults.clone();
    if let Some(c) = rf.concurrency {
        if c == 0 || c > 1000 {
            problems.push(format!("{who}: `concurrency` must be between 1 and 1000, got {c}"));
        } else {
            scaling.concurrency = c;
        }
    }
    if let Some(m) = rf.max_instances {
        if m == 0 || m > LIMIT_MAX_INSTANCES {
            problems.push(format!("{who}: `max_instances` must be between 1 and {LIMIT_MAX_INSTANCES}, got {m}"));
        } else {
            scaling.max_instances = m;
        }
    }
    if let Some(m) = rf.min_instances {
        if m > scaling.max_instances {
            problems.push(format!(
                "{who}: `min_instances` ({m}) is larger than `max_instances` ({}); lower it or raise `max_instances`",
                scaling.max_instances
            ));
        } else {
            scaling.min_instances = m;
        }
    }
    if let Some(p) = rf.pause_after.as_deref() {
        if let Some(d) = parse_duration("pause_after", who, p, problems) {
            scaling.pause_after = d;
        }
    }
    if let Some(p) = rf.idle_timeout.as_deref() {
        if let Some(d) = parse_duration("idle_timeout", who, p, problems) {
            scaling.idle_timeout = d;
        }
    }
    if scaling.pause_after > scaling.idle_timeout {
        // Pausing later than removal is pointless; pause never happens.
        scaling.pause_after = scaling.idle_timeout;
    }
    let scaling_set = rf.concurrency.is_some() || rf.min_instances.is_some() || rf.max_instances.is_some();
    if matches!(kind, Some(FunctionKind::Cron { .. })) && scaling_set {
        found.warnings.push(format!("{who}: scaling settings are ignored for cron functions"));
    }
    scaling
}

/// `auth`: who may invoke the function.
fn function_access(who: &str, auth: Option<&str>, kind: Option<&FunctionKind>, found: &mut Findings) -> Access {
    match auth.map(str::trim) {
        None | Some("public") => Access::Public,
        Some("private") => {
            if matches!(kind, Some(FunctionKind::Cron { .. })) {
                found.warnings.push(format!("{who}: `auth` is ignored for cron functions, which are never reachable over HTTP"));
            }
            Access::Private
        }
        Some(other) => {
            found.problems.push(format!(
                "{who}: unknown `auth` `{other}`{}; expected `public` (anyone may invoke) or `private` (needs the project's invoke key)",
                did_you_mean(other, ["public", "private"])
            ));
            Access::Public
        }
    }
}

/// `memory`, within [`MIN_MEMORY_BYTES`] and the operator's ceiling.
fn function_memory(who: &str, value: &Value, caps: ResourceCaps, problems: &mut Vec<String>) -> Option<u64> {
    let text = scalar_to_string(value).unwrap_or_default();
    match parse_memory(&text) {
        Err(e) => problems.push(format!("{who}: `memory` {e}")),
        Ok(b) if b < MIN_MEMORY_BYTES => problems.push(format!(
            "{who}: `memory` `{text}` is below the minimum of {}; ask for at least that",
            format_bytes(MIN_MEMORY_BYTES)
        )),
        Ok(b) if b > caps.max_memory_bytes => problems.push(format!(
            "{who}: `memory` `{text}` is above this server's maximum of {}; ask for less, or have the operator raise `max_memory`",
            format_bytes(caps.max_memory_bytes)
        )),
        Ok(b) => return Some(b),
    }
    None
}

/// `cpu`, within [`MIN_CPU_MILLIS`] and the operator's ceiling.
fn function_cpu(who: &str, value: &Value, caps: ResourceCaps, problems: &mut Vec<String>) -> Option<u32> {
    let text = scalar_to_string(value).unwrap_or_default();
    match parse_cpu(&text) {
        Err(e) => problems.push(format!("{who}: `cpu` {e}")),
        Ok(m) if m < MIN_CPU_MILLIS => {
            problems.push(format!("{who}: `cpu` `{text}` is below the minimum of {MIN_CPU_MILLIS}m (0.05 CPU)"))
        }
        Ok(m) if m > caps.max_cpu_millis => problems.push(format!(
            "{who}: `cpu` `{text}` is above this server's maximum of {}m; ask for less, or have the operator raise `max_cpu`",
            caps.max_cpu_millis
        )),
        Ok(m) => return Some(m),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_files(files: &[&str]) -> (Vec<String>, Vec<String>) {
        (
            vec!["node".to_string(), "golang".to_string()],
            files.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn parse_with(text: &str, files: &[&str]) -> Result<Manifest, ManifestError> {
        let (rt, files) = ctx_files(files);
        parse(
            text,
            &ParseContext { known_runtimes: &rt, root_files: &files, defaults: &Scaling::default(), caps: ResourceCaps::default() },
        )
    }

    #[test]
    fn access_memory_and_cpu() {
        let m = parse_with(
            "runtime: node\nfunctions:\n  - {name: A, type: http, auth: private, memory: 512Mi, cpu: 0.5}\n  - {name: B, type: http, memory: 128m, cpu: 250m}\n  - {name: C, type: http}\n",
            &["package.json"],
        )
        .expect("valid");
        let o: Vec<_> = m.functions.iter().map(|f| f.options.clone()).collect();
        assert_eq!(o[0], FunctionOptions { auth: Access::Private, memory_bytes: Some(512 << 20), cpu_millis: Some(500) });
        assert_eq!(o[1], FunctionOptions { auth: Access::Public, memory_bytes: Some(128 << 20), cpu_millis: Some(250) });
        assert_eq!(o[2], FunctionOptions::default());

        let e = err("runtime: node\nfunctions:\n  - {name: A, type: http, auth: secret, memory: 64Gi, cpu: 16}\n");
        assert!(e.contains("unknown `auth` `secret`"), "{e}");
        assert!(e.contains("`memory` `64Gi` is above this server's maximum of 2Gi"), "{e}");
        assert!(e.contains("`cpu` `16` is above this server's maximum of 2000m"), "{e}");
        let e = err("runtime: node\nfunctions:\n  - {name: A, type: http, memory: lots, cpu: -1}\n");
        assert!(e.contains("`memory` `lots` is not a size"), "{e}");
        assert!(e.contains("`cpu` `-1` is not a CPU amount"), "{e}");
        let e = err("runtime: node\nfunctions:\n  - {name: A, type: http, memory: 1Mi}\n");
        assert!(e.contains("below the minimum of 32Mi"), "{e}");
        assert_eq!(parse_memory("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_memory("268435456"), Ok(256 << 20));
        assert_eq!(parse_cpu("2"), Ok(2000));
    }

    fn err(text: &str) -> String {
        parse_with(text, &["package.json"]).expect_err("manifest should be rejected").to_string()
    }

    #[test]
    fn parses_the_original_format() {
        let m = parse_with(
            r#"
repo: https://github.com/someone/some-project
runtime: node
functions:
  - name: API
    type: http
  - name: Ticker
    type: cron
    schedule: "*/1 * * * *"
    meta:
      path: "/usr/bin"
      name: prod
      some-key.x: 3
"#,
            &[],
        )
        .expect("valid");
        assert_eq!(m.runtime, "node");
        assert_eq!(m.functions.len(), 2);
        assert_eq!(m.functions[0].kind, FunctionKind::Http);
        assert_eq!(m.functions[1].kind.schedule(), Some("*/1 * * * *"));
        let env = &m.functions[1].env;
        assert_eq!(env.get("ESERVELESS_PATH").map(String::as_str), Some("/usr/bin"));
        assert_eq!(env.get("ESERVELESS_NAME").map(String::as_str), Some("prod"));
        assert_eq!(env.get("ESERVELESS_SOME_KEY_X").map(String::as_str), Some("3"));
        assert_eq!(m.functions[0].timeout, DEFAULT_TIMEOUT);
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }

    #[test]
    fn detects_runtime_with_a_warning() {
        let m = parse_with("functions: [{name: API, type: http}]", &["go.mod", "main.go"]).expect("valid");
        assert_eq!(m.runtime, "golang");
        assert_eq!(m.warnings, vec!["no `runtime` key; detected `golang` from `go.mod`; add `runtime: golang` to silence this"]);
        let m = parse_with("functions: [{name: API, type: http}]", &["functions.js"]).expect("valid");
        assert_eq!(m.runtime, "node");
        assert_eq!(detect_runtime(&["package.json".into(), "go.mod".into()]), Some(("node", "package.json")));
        assert_eq!(detect_runtime(&["README.md".into()]), None);
    }

    #[test]
    fn unknown_keys_are_warnings_with_suggestions() {
        let m = parse_with(
            "rutime: node\nfunctions:\n  - name: API\n    type: http\n    shedule: x\n    colour: red\n",
            &["package.json"],
        )
        .expect("unknown keys never fail");
        assert_eq!(
            m.warnings,
            vec![
                "unknown key `rutime`; did you mean `runtime`?",
                "function `API`: unknown key `shedule`; did you mean `schedule`?",
                "function `API`: unknown key `colour`",
                "no `runtime` key; detected `node` from `package.json`; add `runtime: node` to silence this",
            ]
        );
    }

    #[test]
    fn durations_and_scaling() {
        let m = parse_with(
            "functions:\n  - {name: API, type: http, timeout: 10s, concurrency: 4, max_instances: 2, min_instances: 1, pause_after: 2s, idle_timeout: 1m}\n",
            &["package.json"],
        )
        .expect("valid");
        let f = &m.functions[0];
        assert_eq!(f.timeout, Duration::from_secs(10));
        assert_eq!(
            f.scaling,
            Scaling {
                concurrency: 4,
                min_instances: 1,
                max_instances: 2,
                pause_after: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(60)
            }
        );
    }

    #[test]
    fn schedules() {
        assert!(parse_schedule("*/1 * * * *").is_ok());
        assert!(parse_schedule("*/2 * * * * *").is_ok());
        assert!(parse_schedule("0 0 1 1 *").is_ok());
        assert!(parse_schedule("@hourly").is_ok());
        assert!(parse_schedule("* * *").is_err());
        assert!(parse_schedule("61 * * * *").is_err());
        assert!(parse_schedule("* * * * * * *").is_err());
    }

    #[test]
    fn meta_names() {
        assert_eq!(meta_env_name("path"), "ESERVELESS_PATH");
        assert_eq!(meta_env_name("some-key.v2"), "ESERVELESS_SOME_KEY_V2");
        assert_eq!(meta_env_name("ünï"), "ESERVELESS__N_");
    }

    // Golden error messages: each bad manifest paired with the exact text users see.
    #[test]
    fn golden_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "functions:\n  - name: API\n    type: [http\n",
                "invalid .eserveless.yaml: malformed YAML: did not find expected ',' or ']' at line 4 column 1, while parsing a flow sequence at line 3 column 11",
            ),
            ("", "invalid .eserveless.yaml: the file is empty; it needs a `functions` list"),
            ("- a\n- b\n", "invalid .eserveless.yaml: the top level must be a mapping with a `functions` list"),
            (
                "runtime: node\n",
                "invalid .eserveless.yaml: no `functions` list; add at least one function, e.g. `functions: [{name: API, type: http}]`",
            ),
            ("runtime: node\nfunctions: []\n", "invalid .eserveless.yaml: `functions` is empty; add at least one function"),
            (
                "functions:\n  - {name: API, type: http}\n  - {name: api, type: http}\n",
                "invalid .eserveless.yaml: duplicate function name `api` (already used by `API`; names must be unique, ignoring case)",
            ),
            (
                "functions:\n  - {name: ../etc, type: http}\n",
                "invalid .eserveless.yaml: function #1: invalid function name `../etc`: use letters, digits and `_`, starting with a letter or `_` (an exported identifier such as `API`), at most 63 characters",
            ),
            (
                "functions:\n  - {name: API, type: htp}\n",
                "invalid .eserveless.yaml: function `API`: unknown type `htp`; did you mean `http`?; expected `http` or `cron`",
            ),
            (
                "runtime: pyhton\nfunctions:\n  - {name: API, type: http}\n",
                "invalid .eserveless.yaml: unknown runtime `pyhton` (known runtimes: golang, node)",
            ),
            (
                "runtime: nod\nfunctions:\n  - {name: API, type: http}\n",
                "invalid .eserveless.yaml: unknown runtime `nod`; did you mean `node`? (known runtimes: golang, node)",
            ),
            (
                "functions:\n  - {name: Tick, type: cron}\n",
                "invalid .eserveless.yaml: function `Tick`: cron functions need a `schedule`, e.g. `schedule: \"*/5 * * * *\"`",
            ),
            (
                "functions:\n  - {name: Tick, type: cron, schedule: \"* * *\"}\n",
                "invalid .eserveless.yaml: function `Tick`: invalid schedule `* * *`: has 3 fields; use 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, e.g. \"*/10 * * * * *\"",
            ),
            (
                "functions:\n  - {name: API, type: http, timeout: soon}\n",
                "invalid .eserveless.yaml: function `API`: `timeout` value `soon` is not a duration (expected number at 0); write it like `10s`, `500ms` or `5m`",
            ),
            (
                "functions:\n  - {name: API, type: http, min_instances: 9}\n",
                "invalid .eserveless.yaml: function `API`: `min_instances` (9) is larger than `max_instances` (4); lower it or raise `max_instances`",
            ),
            (
                "runtime: golang\nfunctions:\n  - {name: api, type: http}\n",
                "invalid .eserveless.yaml: function `api`: Go only exports names that start with an upper-case letter; rename it to `Api` in the code and the manifest",
            ),
            (
                "functions:\n  - {type: http}\n  - {name: X, type: cron, schedule: \"99 * * * *\"}\n",
                "invalid .eserveless.yaml: \n  - function #1 has no `name`; add the exported function's name, e.g. `name: API`\n  - function `X`: invalid schedule `99 * * * *`: Component error: Number out of bounds. (fields: [second 0-59] minute 0-59, hour 0-23, day-of-month 1-31, month 1-12, day-of-week 0-7)",
            ),
        ];
        let mut failures = Vec::new();
        for (input, expected) in cases {
            let got = err(input);
            if &got != expected {
                failures.push(format!("input:\n{input}\nexpected: {expected}\n     got: {got}\n"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn golden_error_without_detectable_runtime() {
        let e = parse_with("functions: [{name: API, type: http}]", &["README.md"]).expect_err("no runtime");
        assert_eq!(
            e.to_string(),
            "invalid .eserveless.yaml: no `runtime` key, and none could be detected (no package.json, functions.js, go.mod, functions.py, requirements.txt or pyproject.toml at the root); add `runtime: node`, `runtime: golang` or `runtime: python`"
        );
    }
    // Every check of one function runs, and the problems keep the file's order: top level,
    // then name, type, meta, timeout, scaling, auth, memory, cpu; warnings likewise.
    #[test]
    fn golden_problem_order_within_one_function() {
        let text = "runtime: golang\nfunctions:\n  - {name: api, type: cron, meta: {\" \": 1, a.b: x, a_b: y, l: [1]}, timeout: soon, concurrency: 0, max_instances: 99, pause_after: 0s, idle_timeout: never, auth: secret, memory: lots, cpu: 1m}\n  - {name: Api, type: http, timeout: 1h}\n";
        let (rt, files) = ctx_files(&["go.mod"]);
        let e = parse(
            text,
            &ParseContext { known_runtimes: &rt, root_files: &files, defaults: &Scaling::default(), caps: ResourceCaps::default() },
        )
        .expect_err("many problems");
        assert_eq!(
            e.problems,
            vec![
                "function `api`: Go only exports names that start with an upper-case letter; rename it to `Api` in the code and the manifest",
                "function `api`: cron functions need a `schedule`, e.g. `schedule: \"*/5 * * * *\"`",
                "function `api`: `meta` has an empty key",
                "function `api`: `meta` keys `a.b` and `a_b` both become `ESERVELESS_A_B`; rename one of them",
                "function `api`: `meta.l` must be a string, number or boolean, not a list or mapping",
                "function `api`: `timeout` value `soon` is not a duration (expected number at 0); write it like `10s`, `500ms` or `5m`",
                "function `api`: `concurrency` must be between 1 and 1000, got 0",
                "function `api`: `max_instances` must be between 1 and 64, got 99",
                "function `api`: `pause_after` must be greater than zero, got `0s`",
                "function `api`: `idle_timeout` value `never` is not a duration (expected number at 0); write it like `10s`, `500ms` or `5m`",
                "function `api`: unknown `auth` `secret`; expected `public` (anyone may invoke) or `private` (needs the project's invoke key)",
                "function `api`: `memory` `lots` is not a size; write e.g. `256Mi` or `1Gi`",
                "function `api`: `cpu` `1m` is below the minimum of 50m (0.05 CPU)",
                "duplicate function name `Api` (already used by `api`; names must be unique, ignoring case)",
                "function `Api`: `timeout` `1h` is longer than the maximum of 15m",
            ]
        );
        let m = parse_with(
            "functions:\n  - {name: T, type: cron, schedule: \"* * * * *\", max_instances: 2, auth: private}\n  - {name: H, type: http, schedule: x}\n",
            &["package.json"],
        )
        .expect("warnings only");
        assert_eq!(
            m.warnings,
            vec![
                "no `runtime` key; detected `node` from `package.json`; add `runtime: node` to silence this",
                "function `T`: scaling settings are ignored for cron functions",
                "function `T`: `auth` is ignored for cron functions, which are never reachable over HTTP",
                "function `H`: `schedule` is ignored for http functions",
            ]
        );
    }
}
