//! `GET /api/openapi.json` describes exactly the routes easel serves.
//!
//! Three checks, none of them a hand-kept list of routes:
//!
//! * the sources: every route registered with a plain axum `.route("…", …)` (or
//!   `.route_service`) under `host/src/api/` must be in the document, at its path under one of
//!   the `.nest("…")` prefixes found there, with its methods. Routes registered with
//!   utoipa-axum's `routes!` are described by construction (the router takes their method and
//!   path from the description), so this catches the other way of adding one;
//! * the running server: every documented operation is requested, without credentials and as
//!   the superuser; none may reach the fallback (`404 {"error":"Cannot <METHOD> <path>"}`) or
//!   a 405, each status must be one the document lists, with its content type and (for JSON)
//!   a body its schema accepts, and the routes that answer 401 without credentials are
//!   exactly those the document secures;
//! * the document itself: OpenAPI 3.x, path parameters matching the `{}` placeholders, every
//!   `$ref` resolving, tags, operation ids and security schemes defined.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::{Server, ServerOptions};
use serde_json::{Value, json};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
const TAGS: [&str; 10] = [
    "config",
    "lists",
    "models",
    "civitai",
    "queue",
    "images",
    "auth",
    "user",
    "admin",
    "dashboard",
];

fn document() -> Value {
    serde_json::to_value(easel::api::openapi()).unwrap()
}

/// `(METHOD, path)` of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut all = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                all.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    all
}

// ---- the sources ---------------------------------------------------------------------------

/// A route registered with a plain `.route(…)`, as found in the sources.
#[derive(Debug, PartialEq, Eq)]
struct Registered {
    /// `file:line`.
    at: String,
    /// The path literal, in OpenAPI's syntax (`{*rest}` → `{rest}`).
    path: String,
    /// Upper-case methods; `*` for any (`any(…)`, `route_service`).
    methods: Vec<String>,
}

/// The end of the string literal starting at `start` (which is a `"`): the index after it.
fn literal_end(text: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    text.len()
}

/// The text of the call's arguments: from `open` (just after a `(`) to its matching `)`.
fn arguments(text: &str, open: usize) -> &str {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (1, open);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i = literal_end(bytes, i);
                continue;
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open..i];
                }
            }
            _ => {}
        }
        i += 1;
    }
    &text[open..]
}

/// Axum's path syntax in OpenAPI's: `{*rest}` → `{rest}`, an old `:id` → `{id}`.
fn openapi_path(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if let Some(name) = segment.strip_prefix("{*") {
                format!("{{{name}")
            } else if let Some(name) = segment.strip_prefix(':') {
                format!("{{{name}}}")
            } else {
                segment.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every `.route("…", …)` / `.route_service("…", …)` in `source` (comment lines skipped), and
/// every `.nest("…"` / `.nest_service("…"` prefix.
fn scan(file: &str, source: &str) -> (Vec<Registered>, Vec<String>) {
    // Blank out comment lines, keeping offsets (and so line numbers) as they are.
    let text: String = source
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("//") {
                " ".repeat(line.len())
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let mut routes = Vec::new();
    let mut prefixes = Vec::new();
    for call in [".route(", ".route_service(", ".nest(", ".nest_service("] {
        for (offset, _) in text.match_indices(call) {
            let open = offset + call.len();
            let args = arguments(&text, open);
            let at = format!("{file}:{}", line_of(offset));
            let trimmed = args.trim_start();
            assert!(
                trimmed.starts_with('"'),
                "{at}: `{call}` with a path that is not a string literal; this test reads the \
                 paths it registers from the source, so write it as one"
            );
            let end = literal_end(trimmed.as_bytes(), 0);
            let path = trimmed[1..end - 1].to_owned();
            if call.starts_with(".nest") {
                prefixes.push(path);
                continue;
            }
            let mut methods = BTreeSet::new();
            if call == ".route_service(" {
                methods.insert("*".to_owned());
            }
            let bytes = args.as_bytes();
            for method in METHODS.iter().copied().chain(["any"]) {
                let pattern = format!("{method}(");
                for (i, _) in args.match_indices(&pattern) {
                    let before = i.checked_sub(1).map(|b| bytes[b]);
                    if before.is_none_or(|b| !(b.is_ascii_alphanumeric() || b == b'_')) {
                        methods.insert(if method == "any" {
                            "*".to_owned()
                        } else {
                            method.to_uppercase()
                        });
                    }
                }
            }
            routes.push(Registered {
                at,
                path: openapi_path(&path),
                methods: methods.into_iter().collect(),
            });
        }
    }
    (routes, prefixes)
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// What is registered with a plain `.route(…)` but missing from the document: one line each.
fn undescribed(
    routes: &[Registered],
    prefixes: &[String],
    documented: &BTreeSet<(String, String)>,
) -> Vec<String> {
    let mut prefixes: Vec<&str> = prefixes.iter().map(|p| p.trim_end_matches('/')).collect();
    prefixes.push("");
    prefixes.sort_unstable();
    prefixes.dedup();
    let mut missing = Vec::new();
    for route in routes {
        let candidates: Vec<String> = prefixes
            .iter()
            .map(|prefix| match route.path.as_str() {
                "/" if !prefix.is_empty() => (*prefix).to_owned(),
                path => format!("{prefix}{path}"),
            })
            .collect();
        for method in &route.methods {
            let found = candidates.iter().any(|path| {
                documented
                    .iter()
                    .any(|(m, p)| p == path && (method == "*" || m == method))
            });
            if !found {
                let method = if method == "*" { "ANY" } else { method };
                missing.push(format!(
                    "{method} {} ({}) is served but /api/openapi.json does not describe it \
                     at any of {}: register it with utoipa-axum's routes!(handler) and a \
                     #[utoipa::path] on the handler",
                    route.path,
                    route.at,
                    candidates.join(", ")
                ));
            }
        }
    }
    missing
}

#[test]
fn every_route_in_the_sources_is_described() {
    let api = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut files = Vec::new();
    rust_files(&api, &mut files);
    assert!(files.len() > 3, "no sources under {}", api.display());
    let (mut routes, mut prefixes) = (Vec::new(), Vec::new());
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        let name = file.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
        let (r, p) = scan(&name.display().to_string(), &source);
        routes.extend(r);
        prefixes.extend(p);
    }
    let missing = undescribed(&routes, &prefixes, &operations(&document()));
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// The source check finds a route added the plain way: in a module of its own, merged under
/// `/api`, or nested under `/3papi` (made-up routes the document does not have).
#[test]
fn a_plain_route_without_a_description_is_named() {
    let module = r#"
        // .route("/commented/out", get(nothing))
        pub(super) fn model_routes() -> Router<AppState> {
            Router::new()
                .route("/models/hypernetworks", get(hypernetworks))
                .route("/models/hypernetworks/{hash}", post(set_hypernetwork))
                .route(
                    "/user/category/{category_id}",
                    delete(user::delete_category).patch(user::rename_category),
                )
        }
        pub(super) fn third_party_routes() -> Router<AppState> {
            Router::new().route("/civitai/mirror/{*rest}", get(mirror))
        }
    "#;
    let parent = r#"
        let with_cors = Router::new()
            .nest("/api", api)
            .nest("/3papi", civitai::third_party_routes())
    "#;
    let (mut routes, prefixes) = scan("civitai.rs", module);
    routes.extend(scan("mod.rs", parent).0);
    assert_eq!(routes.len(), 4, "{routes:?}");
    assert_eq!(routes[2].methods, ["DELETE", "PATCH"]);
    assert_eq!(routes[3].path, "/civitai/mirror/{rest}");
    let prefixes: Vec<String> = prefixes
        .into_iter()
        .chain(scan("mod.rs", parent).1)
        .collect();
    let missing = undescribed(&routes, &prefixes, &operations(&document()));
    assert_eq!(missing.len(), 3, "{missing:#?}");
    assert!(
        missing[0].starts_with("GET /models/hypernetworks (civitai.rs:5) is served but")
            && missing[0].contains("/api/models/hypernetworks"),
        "{}",
        missing[0]
    );
    assert!(
        missing[1].starts_with("POST /models/hypernetworks/{hash} (civitai.rs:6)"),
        "{}",
        missing[1]
    );
    assert!(
        missing[2].contains("/3papi/civitai/mirror/{rest}"),
        "{}",
        missing[2]
    );
}

// ---- the document --------------------------------------------------------------------------

/// The `{name}` placeholders of a path.
fn placeholders(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(str::to_owned)
        .collect()
}

/// What a JSON pointer (`#/components/schemas/X`) points at.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    doc.pointer(pointer)
}

fn refs<'a>(value: &'a Value, at: String, into: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                if key == "$ref"
                    && let Some(reference) = item.as_str()
                {
                    into.push((at.clone(), reference));
                }
                refs(item, format!("{at}/{key}"), into);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                refs(item, format!("{at}/{i}"), into);
            }
        }
        _ => {}
    }
}

#[test]
fn the_document_is_valid_openapi() {
    let doc = document();
    let mut problems = Vec::new();
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "openapi: {version:?}");
    assert_eq!(doc["info"]["title"], "easel");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let description = doc["info"]["description"].as_str().unwrap_or_default();
    for needle in [
        "Navigator",
        "socket.io",
        "realtime port",
        "task-started",
        "task-progress",
        "task-finished",
        "task-failed",
        "task-interrupted",
        "model-changed",
        "models-refreshed",
        "connected",
    ] {
        if !description.contains(needle) {
            problems.push(format!("info.description does not mention {needle}"));
        }
    }

    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["bearer"]["bearerFormat"], "JWT");
    assert_eq!(schemes["superuser"]["type"], "apiKey");
    assert_eq!(schemes["superuser"]["in"], "header");
    assert_eq!(schemes["superuser"]["name"], "Authorization");

    let declared: BTreeSet<&str> = doc["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(declared, TAGS.into_iter().collect());

    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if !path.starts_with('/') {
            problems.push(format!("path {path:?} does not start with /"));
        }
        let wanted = placeholders(path);
        for (method, operation) in item.as_object().unwrap() {
            let at = format!("{} {path}", method.to_uppercase());
            if !METHODS.contains(&method.as_str()) {
                if method != "parameters" && method != "summary" && method != "description" {
                    problems.push(format!("{path}: unknown key {method:?}"));
                }
                continue;
            }
            let parameters: Vec<&Value> = item
                .get("parameters")
                .into_iter()
                .chain(operation.get("parameters"))
                .flat_map(|p| p.as_array().unwrap().iter())
                .collect();
            let mut seen = BTreeSet::new();
            let mut in_path = BTreeSet::new();
            for parameter in &parameters {
                let name = parameter["name"].as_str().unwrap_or_default().to_owned();
                let location = parameter["in"].as_str().unwrap_or_default().to_owned();
                if !["path", "query", "header", "cookie"].contains(&location.as_str()) {
                    problems.push(format!("{at}: parameter {name} is in {location:?}"));
                }
                if !seen.insert((name.clone(), location.clone())) {
                    problems.push(format!("{at}: parameter {name} ({location}) twice"));
                }
                if location == "path" {
                    if parameter["required"] != true {
                        problems.push(format!("{at}: path parameter {name} is not required"));
                    }
                    in_path.insert(name);
                }
            }
            if in_path != wanted {
                problems.push(format!(
                    "{at}: path parameters {in_path:?}, but the path has {wanted:?}"
                ));
            }
            match operation["operationId"].as_str() {
                Some(id) if operation_ids.insert(id.to_owned()) => {}
                id => problems.push(format!("{at}: operationId {id:?} missing or not unique")),
            }
            let tags: Vec<&str> = operation["tags"]
                .as_array()
                .map(|t| t.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if tags.len() != 1 || !TAGS.contains(&tags[0]) {
                problems.push(format!("{at}: tags {tags:?}, not one of {TAGS:?}"));
            }
            if operation["summary"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{at}: no summary"));
            }
            if operation["description"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{at}: no description"));
            }
            let responses = operation["responses"].as_object();
            if responses.is_none_or(|r| r.is_empty()) {
                problems.push(format!("{at}: no responses"));
            }
            for (status, response) in responses.into_iter().flatten() {
                if status.parse::<u16>().is_err() && status != "default" {
                    problems.push(format!("{at}: response status {status:?}"));
                }
                if response["description"].as_str().is_none() {
                    problems.push(format!("{at}: response {status} has no description"));
                }
            }
            for requirement in operation["security"].as_array().into_iter().flatten() {
                for name in requirement.as_object().unwrap().keys() {
                    if schemes.get(name).is_none() {
                        problems.push(format!("{at}: unknown security scheme {name}"));
                    }
                }
            }
            if let Some(body) = operation.get("requestBody")
                && body["content"].as_object().is_none_or(|c| c.is_empty())
            {
                problems.push(format!("{at}: a request body without content"));
            }
        }
    }

    let mut all = Vec::new();
    refs(&doc, "#".to_owned(), &mut all);
    assert!(all.len() > 20, "hardly any $ref: {}", all.len());
    for (at, reference) in all {
        if resolve(&doc, reference).is_none() {
            problems.push(format!("{at}: $ref {reference} does not resolve"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---- the running server --------------------------------------------------------------------

/// Whether `value` fits `schema` (the part of JSON Schema utoipa writes: `$ref`, `type`,
/// `properties`, `required`, `additionalProperties: false`, `items`, `oneOf`, `allOf`).
/// The reason when not.
fn fits(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let target = resolve(doc, reference).ok_or(format!("{at}: {reference} unresolved"))?;
        return fits(doc, target, value, at);
    }
    if let Some(all) = schema["allOf"].as_array() {
        for part in all {
            fits(doc, part, value, at)?;
        }
    }
    if let Some(one) = schema["oneOf"].as_array() {
        let matching = one
            .iter()
            .filter(|s| fits(doc, s, value, at).is_ok())
            .count();
        if matching != 1 {
            return Err(format!("{at}: {value} fits {matching} of oneOf {one:?}"));
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let ok = types.iter().any(|t| match *t {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => false,
        });
        if !ok {
            return Err(format!("{at}: {value} is not {types:?}"));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema["properties"].as_object();
        for required in schema["required"].as_array().into_iter().flatten() {
            let key = required.as_str().unwrap();
            if !object.contains_key(key) {
                return Err(format!("{at}: {value} lacks {key}"));
            }
        }
        for (key, item) in object {
            match properties.and_then(|p| p.get(key)) {
                Some(property) => fits(doc, property, item, &format!("{at}.{key}"))?,
                None if schema["additionalProperties"] == false => {
                    return Err(format!("{at}: {value} has {key}, not in its schema"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            fits(doc, schema, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Requests `method path` (placeholders filled with `1`, a JSON `{}` body where one is
/// described) and checks the answer against the document; returns the status.
async fn exercise(
    server: &Server,
    doc: &Value,
    method: &str,
    path: &str,
    credentials: Option<&str>,
    problems: &mut Vec<String>,
) -> u16 {
    let operation = &doc["paths"][path][method.to_lowercase()];
    let concrete: String = path
        .split('/')
        .map(|s| if s.starts_with('{') { "1" } else { s })
        .collect::<Vec<_>>()
        .join("/");
    let who = if credentials.is_some() {
        "as the superuser"
    } else {
        "without credentials"
    };
    let at = format!("{method} {concrete} {who}");
    let client = easel::forge::http_client();
    let mut request = client.request(method.parse().unwrap(), server.url(&concrete));
    if let Some(token) = credentials {
        request = request.header("Authorization", token);
    }
    if operation.get("requestBody").is_some() {
        request = request
            .header("content-type", "application/json")
            .body("{}");
    }
    let mut response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();
    let bytes = if content_type == "text/event-stream" {
        // A live stream never ends: its first event is the answer.
        tokio::time::timeout(std::time::Duration::from_secs(10), response.chunk())
            .await
            .unwrap_or_else(|_| panic!("{at}: no event in 10 s"))
            .unwrap()
            .unwrap_or_default()
    } else {
        response.bytes().await.unwrap()
    };
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    if status == 404
        && body.as_ref().and_then(|b| b["error"].as_str())
            == Some(&format!("Cannot {method} {concrete}"))
    {
        problems.push(format!(
            "{at}: reaches the fallback, but the document describes it"
        ));
        return status;
    }
    if status == 405 {
        problems.push(format!("{at}: 405, but the document describes it"));
        return status;
    }
    let Some(described) = operation["responses"]
        .get(status.to_string())
        .or_else(|| operation["responses"].get("default"))
    else {
        problems.push(format!(
            "{at}: answers {status} ({}), which the document does not list",
            String::from_utf8_lossy(&bytes)
        ));
        return status;
    };
    match described["content"].as_object() {
        None if !bytes.is_empty() => {
            problems.push(format!("{at}: {status} has a body, the document says none"))
        }
        None => {}
        Some(content) => match content.get(&content_type) {
            None => problems.push(format!(
                "{at}: {status} is {content_type:?}, the document says {:?}",
                content.keys().collect::<Vec<_>>()
            )),
            Some(media) if content_type == "application/json" => match &body {
                Some(body) => {
                    if let Err(err) = fits(doc, &media["schema"], body, "body") {
                        problems.push(format!("{at}: {status}: {err}"));
                    }
                }
                None => problems.push(format!("{at}: {status} is not JSON")),
            },
            Some(_) => {}
        },
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_what_the_document_describes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("easel.db").display());
    let civitai = format!(
        "[civitai]\napi = \"http://127.0.0.1:{}/api/v1\"\n",
        common::free_port()
    );
    let server = Server::start(ServerOptions {
        db_url: &url,
        dir: dir.path(),
        secret_key: "openapi-secret",
        // CivitAI's routes ask a port nobody answers: nothing leaves the machine.
        extra_toml: &civitai,
        ..ServerOptions::default()
    })
    .await;

    // The document, served with CORS like the other routes.
    let response = easel::forge::http_client()
        .get(server.url("/api/openapi.json"))
        .header("Origin", "https://compass.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert_eq!(response.headers()["content-type"], "application/json");
    let served: Value = response.json().await.unwrap();
    let doc = document();
    assert_eq!(
        served, doc,
        "the served document is not easel::api::openapi()"
    );
    let preflight = easel::forge::http_client()
        .request(reqwest::Method::OPTIONS, server.url("/api/openapi.json"))
        .header("Origin", "https://compass.example")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");

    let mut problems = Vec::new();
    let mut refused = BTreeMap::new();
    for (method, path) in operations(&doc) {
        let status = exercise(&server, &doc, &method, &path, None, &mut problems).await;
        refused.insert((method.clone(), path.clone()), status == 401);
        let status = exercise(
            &server,
            &doc,
            &method,
            &path,
            Some(&server.token),
            &mut problems,
        )
        .await;
        if status == 401 {
            problems.push(format!("{method} {path}: 401 for the superuser"));
        }
    }
    for ((method, path), was_refused) in &refused {
        let secured = doc["paths"][path][method.to_lowercase()]["security"]
            .as_array()
            .is_some_and(|s| !s.is_empty());
        if secured != *was_refused {
            problems.push(format!(
                "{method} {path}: the document {} credentials, but without them it answers {}",
                if secured { "asks for" } else { "asks for no" },
                if *was_refused { "401" } else { "as usual" }
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The document leaves nothing out that is easy to probe: the fallback still answers
    // routes it does not describe.
    let unknown = easel::forge::http_client()
        .get(server.url("/api/not-a-route"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.json::<Value>().await.unwrap(),
        json!({"error": "Cannot GET /api/not-a-route"})
    );
}
