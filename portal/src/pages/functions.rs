//! Func manage: the list, add (multipart upload), detail with the Test form, modify (a new
//! version; the code is kept when no file is chosen), delete with a confirmation page.

use std::collections::HashMap;

use schemas::limits::{DESCRIPTION_CHARS, TIMEOUT_MS};
use schemas::rules::{
    valid_arg_name, valid_function_name, ARG_NAME_HELP, FUNCTION_NAME_HELP,
    FUNCTION_NAME_HTML_PATTERN,
};
use schemas::{ArgType, FunctionDoc, Mode, Resources, RunDoc, RunStatus, Runtime};
use serde_json::{json, Map, Value};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::backend::{self, FormFail, FunctionInput, TestFail};
use super::data::{self, RECENT_RUNS};
use super::fmt;
use super::render;
use super::web::{self, Form, FormError};
use super::{
    finish, form, need, notice, query, upload, Ctx, PageError, PageResult, Upload, Viewer,
};

/// Largest values a form may ask for (the services check the real limits).
const MAX_CPU: u64 = 64_000;
const MAX_MEMORY_MB: u64 = 1024 * 1024;
const MAX_DISK_MB: u64 = 1024 * 1024;

pub(super) fn routes(v: BoxedFilter<(Ctx, Option<Viewer>)>) -> BoxedFilter<(Response,)> {
    let list = warp::path!("functions")
        .and(warp::get())
        .and(v.clone())
        .and(query())
        .then(
            |c: Ctx, viewer: Option<Viewer>, q: HashMap<String, String>| async move {
                let r = list(&c, need(viewer.clone()), &q).await;
                finish(viewer.as_ref(), r)
            },
        );
    let new_form = warp::path!("functions" / "new")
        .and(warp::get())
        .and(v.clone())
        .map(|_c: Ctx, viewer: Option<Viewer>| {
            let r = need(viewer.clone()).map(|v| {
                form_page(
                    &v,
                    None,
                    &default_fields(),
                    &Map::new(),
                    None,
                    StatusCode::OK,
                )
            });
            finish(viewer.as_ref(), r)
        });
    let create = warp::path!("functions")
        .and(warp::post())
        .and(v.clone())
        .and(upload())
        .then(|c: Ctx, viewer: Option<Viewer>, up: Upload| async move {
            let r = save(&c, need(viewer.clone()), None, up).await;
            finish(viewer.as_ref(), r)
        });
    let detail = warp::path!("functions" / String)
        .and(warp::get())
        .and(v.clone())
        .and(query())
        .then(
            |name: String, c: Ctx, viewer: Option<Viewer>, q: HashMap<String, String>| async move {
                let r = detail(&c, need(viewer.clone()), &name, &q).await;
                finish(viewer.as_ref(), r)
            },
        );
    let edit_form = warp::path!("functions" / String / "edit")
        .and(warp::get())
        .and(v.clone())
        .then(|name: String, c: Ctx, viewer: Option<Viewer>| async move {
            let r = edit_form(&c, need(viewer.clone()), &name).await;
            finish(viewer.as_ref(), r)
        });
    let update = warp::path!("functions" / String / "edit")
        .and(warp::post())
        .and(v.clone())
        .and(upload())
        .then(
            |name: String, c: Ctx, viewer: Option<Viewer>, up: Upload| async move {
                let r = save(&c, need(viewer.clone()), Some(name), up).await;
                finish(viewer.as_ref(), r)
            },
        );
    let delete_form = warp::path!("functions" / String / "delete")
        .and(warp::get())
        .and(v.clone())
        .then(|name: String, c: Ctx, viewer: Option<Viewer>| async move {
            let r = delete_form(&c, need(viewer.clone()), &name).await;
            finish(viewer.as_ref(), r)
        });
    let delete = warp::path!("functions" / String / "delete")
        .and(warp::post())
        .and(v.clone())
        .and(form())
        .then(
            |name: String, c: Ctx, viewer: Option<Viewer>, f: Form| async move {
                let r = delete(&c, need(viewer.clone()), &name, f).await;
                finish(viewer.as_ref(), r)
            },
        );
    let test = warp::path!("functions" / String / "test")
        .and(warp::post())
        .and(v)
        .and(form())
        .then(
            |name: String, c: Ctx, viewer: Option<Viewer>, f: Form| async move {
                let r = test(&c, need(viewer.clone()), &name, f).await;
                finish(viewer.as_ref(), r)
            },
        );
    list.or(new_form)
        .unify()
        .or(create)
        .unify()
        .or(edit_form)
        .unify()
        .or(update)
        .unify()
        .or(delete_form)
        .unify()
        .or(delete)
        .unify()
        .or(test)
        .unify()
        .or(detail)
        .unify()
        .boxed()
}

async fn list(c: &Ctx, v: Result<Viewer, PageError>, q: &HashMap<String, String>) -> PageResult {
    let v = v?;
    let fns = data::functions(&c.db, &v.user.id, "", data::MAX_FUNCTIONS).await?;
    let rows: Vec<Value> = fns
        .iter()
        .map(|f| {
            json!({
                "name": f.name, "runtime": f.runtime.as_str(), "mode": f.mode.as_str(),
                "version": f.version, "description": f.description, "updated": fmt::time(f.updated_at_ms),
            })
        })
        .collect();
    let mut chrome = v.chrome("Functions", "functions");
    chrome.notice = notice(q);
    Ok(render::page(
        StatusCode::OK,
        "functions",
        &chrome,
        json!({"functions": rows}),
    ))
}

/// Parses the `name:type` lines of the arguments box.
pub(crate) fn parse_schema(text: &str) -> Result<Vec<(String, ArgType)>, String> {
    let mut out: Vec<(String, ArgType)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((name, ty)) = line.split_once(':') else {
            return Err(format!(
                "line {}: write name:type (e.g. num1:int), not “{line}”",
                i + 1
            ));
        };
        let (name, ty) = (name.trim(), ty.trim().to_ascii_lowercase());
        if !valid_arg_name(name) {
            return Err(format!(
                "line {}: the argument name “{name}” may use {ARG_NAME_HELP}",
                i + 1
            ));
        }
        let Some(t) = ArgType::parse(&ty) else {
            return Err(format!(
                "line {}: unknown type “{ty}”; use one of {}",
                i + 1,
                ArgType::choices()
            ));
        };
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("line {}: “{name}” is declared twice", i + 1));
        }
        out.push((name.to_owned(), t));
    }
    Ok(out)
}

fn schema_text(s: &[(String, ArgType)]) -> String {
    s.iter()
        .map(|(n, t)| format!("{n}:{}", t.as_str()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The form's fields for a new function.
fn default_fields() -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in [
        ("runtime", "python3"),
        ("handler", "main.handle"),
        ("mode", "sync"),
        ("cpu_millicores", "500"),
        ("memory_mb", "128"),
        ("disk_mb", "64"),
        ("timeout_ms", "3000"),
    ] {
        m.insert(k.into(), json!(v));
    }
    m
}

fn fields_of(f: &FunctionDoc) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("name".into(), json!(f.name));
    m.insert("runtime".into(), json!(f.runtime.as_str()));
    m.insert("handler".into(), json!(f.handler));
    m.insert("description".into(), json!(f.description));
    m.insert("args_schema".into(), json!(schema_text(&f.args_schema)));
    m.insert("mode".into(), json!(f.mode.as_str()));
    m.insert(
        "cpu_millicores".into(),
        json!(f.resources.cpu_millicores.to_string()),
    );
    m.insert("memory_mb".into(), json!(f.resources.memory_mb.to_string()));
    m.insert("disk_mb".into(), json!(f.resources.disk_mb.to_string()));
    m.insert("timeout_ms".into(), json!(f.timeout_ms.to_string()));
    m
}

/// The add / modify form, with what was typed and what to fix.
fn form_page(
    v: &Viewer,
    editing: Option<&FunctionDoc>,
    fields: &Map<String, Value>,
    errors: &Map<String, Value>,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let runtime = fields.get("runtime").and_then(Value::as_str).unwrap_or("");
    let runtimes: Vec<Value> = Runtime::ALL
        .iter()
        .map(|r| json!({"value": r.as_str(), "selected": r.as_str() == runtime}))
        .collect();
    let mode_sync = fields
        .get("mode")
        .and_then(Value::as_str)
        .and_then(Mode::parse)
        != Some(Mode::Async);
    let (title, data) = match editing {
        Some(f) => (
            format!("Modify {}", f.name),
            json!({
                "heading": format!("Modify {}", f.name), "editing": true,
                "action": format!("/functions/{}/edit", f.name), "next_version": f.version + 1,
                "submit": "Save a new version", "cancel_href": format!("/functions/{}", f.name),
            }),
        ),
        None => (
            "Add a function".to_owned(),
            json!({
                "heading": "Add a function", "editing": false, "action": "/functions",
                "submit": "Create function", "cancel_href": "/functions",
            }),
        ),
    };
    let mut data = data;
    data["form"] = Value::Object(fields.clone());
    data["errors"] = Value::Object(errors.clone());
    data["runtimes"] = json!(runtimes);
    data["mode_sync"] = json!(mode_sync);
    data["name_pattern"] = json!(FUNCTION_NAME_HTML_PATTERN);
    let mut chrome = v.chrome(title, "functions");
    chrome.error = error;
    render::page(status, "function_form", &chrome, data)
}

async fn edit_form(c: &Ctx, v: Result<Viewer, PageError>, name: &str) -> PageResult {
    let v = v?;
    let f = data::function(&c.db, &v.user.id, name)
        .await?
        .ok_or(PageError::NotFound)?;
    Ok(form_page(
        &v,
        Some(&f),
        &fields_of(&f),
        &Map::new(),
        None,
        StatusCode::OK,
    ))
}

/// Reads the add / modify form into a function input, or the fields to fix.
fn read_form(f: &Form, editing: bool) -> Result<FunctionInput, Map<String, Value>> {
    let mut errors = Map::new();
    let mut err = |k: &str, m: String| {
        errors.entry(k.to_owned()).or_insert(json!(m));
    };
    let name = f.get("name").trim().to_owned();
    if !editing && !valid_function_name(&name) {
        err("name", format!("use {FUNCTION_NAME_HELP}"));
    }
    let runtime = Runtime::parse(f.get("runtime"));
    if runtime.is_none() {
        err("runtime", format!("choose one of {}", Runtime::choices()));
    }
    let handler = f.get("handler").trim().to_owned();
    if handler.is_empty() {
        err(
            "handler",
            "enter the handler, e.g. main.handle (module main, function handle)".into(),
        );
    }
    let description = f.get("description").trim().to_owned();
    if description.chars().count() > DESCRIPTION_CHARS {
        err(
            "description",
            format!("at most {DESCRIPTION_CHARS} characters"),
        );
    }
    let args_schema = parse_schema(f.get("args_schema")).unwrap_or_else(|e| {
        err("args_schema", e);
        Vec::new()
    });
    let mode = Mode::parse(f.get("mode")).unwrap_or_default();
    let mut num = |k: &str, label: &str, max: u64| {
        fmt::parse_positive(label, f.get(k), max).unwrap_or_else(|e| {
            err(k, e);
            0
        })
    };
    let cpu = num("cpu_millicores", "CPU", MAX_CPU);
    let mem = num("memory_mb", "memory", MAX_MEMORY_MB);
    let disk = num("disk_mb", "disk", MAX_DISK_MB);
    let timeout = num("timeout_ms", "timeout", TIMEOUT_MS.1);
    let code = f
        .file
        .as_ref()
        .filter(|u| u.field == "code")
        .map(|u| (u.filename.clone(), u.bytes.to_vec()));
    if code.is_none() && !editing {
        err(
            "code",
            "choose the function's source file or a .zip / .tar.gz package".into(),
        );
    }
    if let Some((_, b)) = &code {
        if b.is_empty() {
            err("code", "the chosen file is empty".into());
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(FunctionInput {
        name,
        runtime: runtime.unwrap_or(Runtime::Python3),
        handler,
        code,
        description,
        args_schema,
        mode,
        resources: Resources::new(cpu, mem, disk),
        timeout_ms: timeout,
    })
}

/// Create (`editing: None`) or modify a function from the multipart form.
async fn save(
    c: &Ctx,
    v: Result<Viewer, PageError>,
    editing: Option<String>,
    up: Upload,
) -> PageResult {
    // The session first: an anonymous upload is redirected to the login page unread.
    let v = v?;
    let f = up.read().await;
    let current = match &editing {
        Some(name) => Some(
            data::function(&c.db, &v.user.id, name)
                .await?
                .ok_or(PageError::NotFound)?,
        ),
        None => None,
    };
    let f = match f {
        Ok(f) => f,
        Err(FormError::TooLarge) => {
            // The form cannot be re-filled from a body that was not read; say what happened.
            let fields = current
                .as_ref()
                .map(fields_of)
                .unwrap_or_else(default_fields);
            let mut errors = Map::new();
            errors.insert("code".into(), json!(FormError::TooLarge.to_string()));
            return Ok(form_page(
                &v,
                current.as_ref(),
                &fields,
                &errors,
                Some("The upload was too large and was not read; fill the form again with a smaller package.".into()),
                StatusCode::PAYLOAD_TOO_LARGE,
            ));
        }
        Err(e) => return Err(PageError::BadForm(e.to_string())),
    };
    if !f.csrf_ok(&v.csrf) {
        return Err(PageError::Csrf);
    }
    // What was typed, to fill the form again if something is wrong (never the file).
    let mut typed = Map::new();
    for k in [
        "name",
        "runtime",
        "handler",
        "description",
        "args_schema",
        "mode",
        "cpu_millicores",
        "memory_mb",
        "disk_mb",
        "timeout_ms",
    ] {
        typed.insert(k.into(), json!(f.get(k)));
    }
    if let Some(cur) = &current {
        typed.insert("name".into(), json!(cur.name));
    }
    let input = read_form(&f, current.is_some()).map(|mut i| {
        if let Some(cur) = &current {
            i.name = cur.name.clone();
        }
        i
    });
    let chosen_file = f.file.is_some();
    let fail = |mut errors: Map<String, Value>, status: StatusCode, top: Option<String>| {
        if chosen_file && !errors.contains_key("code") {
            errors.insert(
                "code".into(),
                json!("choose the file again (browsers do not keep a chosen file when a form comes back)"),
            );
        }
        let top = top.unwrap_or_else(|| "Nothing was saved; see below what to fix.".into());
        Ok(form_page(
            &v,
            current.as_ref(),
            &typed,
            &errors,
            Some(top),
            status,
        ))
    };
    let input = match input {
        Ok(i) => i,
        Err(errors) => return fail(errors, StatusCode::BAD_REQUEST, None),
    };
    let name = input.name.clone();
    let res = match &current {
        None => backend::create_function(c, &v.user.id, input).await,
        Some(_) => backend::update_function(c, &v.user.id, input).await,
    };
    match res {
        Ok(()) => {
            let n = if current.is_some() {
                "updated"
            } else {
                "created"
            };
            Ok(web::redirect(&format!("/functions/{name}?notice={n}"), &[]))
        }
        Err(FormFail::Field(field, msg)) => {
            let mut errors = Map::new();
            errors.insert(field.into(), json!(msg));
            fail(errors, StatusCode::BAD_REQUEST, None)
        }
        Err(FormFail::Page(msg)) => fail(Map::new(), StatusCode::BAD_REQUEST, Some(msg)),
        Err(FormFail::NotFound) => Err(PageError::NotFound),
        Err(FormFail::Other(e)) => Err(PageError::Internal(e)),
    }
}

async fn delete_form(c: &Ctx, v: Result<Viewer, PageError>, name: &str) -> PageResult {
    let v = v?;
    let f = data::function(&c.db, &v.user.id, name)
        .await?
        .ok_or(PageError::NotFound)?;
    Ok(render::page(
        StatusCode::OK,
        "function_delete",
        &v.chrome(format!("Delete {}", f.name), "functions"),
        json!({"function": {"name": f.name}}),
    ))
}

async fn delete(c: &Ctx, v: Result<Viewer, PageError>, name: &str, f: Form) -> PageResult {
    let v = v?;
    if !f.csrf_ok(&v.csrf) {
        return Err(PageError::Csrf);
    }
    match backend::delete_function(c, &v.user.id, name).await {
        Ok(()) => Ok(web::redirect("/functions?notice=deleted", &[])),
        Err(FormFail::NotFound) => Err(PageError::NotFound),
        Err(FormFail::Other(e)) => Err(PageError::Internal(e)),
        Err(FormFail::Field(_, m)) | Err(FormFail::Page(m)) => Err(PageError::BadForm(m)),
    }
}

/// One input of the Test form.
fn test_inputs(f: &FunctionDoc, typed: Option<&Form>, errors: &Map<String, Value>) -> Vec<Value> {
    f.args_schema
        .iter()
        .map(|(name, ty)| {
            let key = format!("arg.{name}");
            let value = typed.map(|t| t.get(&key).to_owned()).unwrap_or_default();
            let (input_type, step, placeholder) = match ty {
                ArgType::Int => ("number", "1", ""),
                ArgType::Float => ("number", "any", ""),
                ArgType::Object => ("", "", "{\"key\": \"value\"}"),
                ArgType::Array => ("", "", "[1, 2, 3]"),
                _ => ("text", "", ""),
            };
            json!({
                "name": name, "ty": ty.as_str(), "value": value,
                "input_type": input_type, "step": step, "placeholder": placeholder,
                "is_bool": *ty == ArgType::Bool, "checked": value == "true",
                "is_json": matches!(ty, ArgType::Object | ArgType::Array),
                "error": errors.get(name).cloned().unwrap_or(Value::Null),
            })
        })
        .collect()
}

/// A curl command invoking `f` through the gateway at `gateway_url` (empty: a placeholder
/// host), with example args built from its argument schema and the key from `$COLORFAAS_KEY`.
pub(crate) fn curl_example(gateway_url: &str, f: &FunctionDoc) -> String {
    let base = if gateway_url.is_empty() {
        "http://GATEWAY"
    } else {
        gateway_url
    };
    let args: Map<String, Value> = f
        .args_schema
        .iter()
        .map(|(name, ty)| {
            let example = match ty {
                ArgType::Int => json!(1),
                ArgType::Float => json!(1.5),
                ArgType::String => json!("text"),
                ArgType::Bool => json!(true),
                ArgType::Object => json!({}),
                ArgType::Array => json!([]),
            };
            (name.clone(), example)
        })
        .collect();
    // Single quotes around the body: a `'` inside it is closed, escaped and reopened.
    let body = Value::Object(args).to_string().replace('\'', r"'\''");
    format!(
        "curl -X POST '{base}/v1/invoke/{}' \\\n  -H \"Authorization: Bearer $COLORFAAS_KEY\" \\\n  -H 'content-type: application/json' \\\n  -d '{body}'",
        f.name
    )
}

/// The Test form's fields holding a run's args.
fn form_of_args(f: &FunctionDoc, args_json: &str) -> Form {
    let args: Value = serde_json::from_str(args_json).unwrap_or(Value::Null);
    let mut form = Form::default();
    if f.args_schema.is_empty() {
        form.fields.insert("raw_args".into(), args_json.to_owned());
    }
    for (name, _) in &f.args_schema {
        let text = match args.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        };
        form.fields.insert(format!("arg.{name}"), text);
    }
    form
}

/// Builds the args object from the Test form, typed by the schema.
pub(crate) fn read_args(
    schema: &[(String, ArgType)],
    f: &Form,
) -> Result<Value, Map<String, Value>> {
    let mut errors = Map::new();
    if schema.is_empty() {
        let raw = f.get("raw_args").trim();
        if raw.is_empty() {
            return Ok(json!({}));
        }
        return match serde_json::from_str::<Value>(raw) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => {
                errors.insert("raw_args".into(), json!("the args must be a JSON object"));
                Err(errors)
            }
            Err(e) => {
                errors.insert("raw_args".into(), json!(format!("not JSON: {e}")));
                Err(errors)
            }
        };
    }
    let mut args = Map::new();
    for (name, ty) in schema {
        let raw = f.get(&format!("arg.{name}")).trim();
        let numeric = matches!(
            ty,
            ArgType::Int | ArgType::Float | ArgType::Object | ArgType::Array
        );
        if raw.is_empty() && numeric {
            errors.insert(
                name.clone(),
                json!(format!("enter {name} ({})", ty.as_str())),
            );
            continue;
        }
        let v = match ty {
            ArgType::Int => raw
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("{name} must be a whole number, not “{raw}”")),
            ArgType::Float => raw
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| format!("{name} must be a number, not “{raw}”")),
            ArgType::String => Ok(Value::String(raw.to_owned())),
            ArgType::Bool => match raw {
                "true" => Ok(Value::Bool(true)),
                "false" | "" => Ok(Value::Bool(false)),
                _ => Err(format!("{name} must be true or false")),
            },
            ArgType::Object | ArgType::Array => {
                let want_obj = *ty == ArgType::Object;
                match serde_json::from_str::<Value>(raw) {
                    Ok(v @ Value::Object(_)) if want_obj => Ok(v),
                    Ok(v @ Value::Array(_)) if !want_obj => Ok(v),
                    Ok(_) | Err(_) => Err(format!(
                        "{name} must be a JSON {}",
                        if want_obj {
                            "object, e.g. {\"a\": 1}"
                        } else {
                            "array, e.g. [1, 2]"
                        }
                    )),
                }
            }
        };
        match v {
            Ok(v) => {
                args.insert(name.clone(), v);
            }
            Err(m) => {
                errors.insert(name.clone(), json!(m));
            }
        }
    }
    if errors.is_empty() {
        Ok(Value::Object(args))
    } else {
        Err(errors)
    }
}

/// A run as the Test panel and the run page show it.
pub(crate) fn run_view(r: &RunDoc) -> Value {
    let result = r.result_json.as_deref().map(|t| {
        serde_json::from_str::<Value>(t)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| t.to_owned())
    });
    let args = serde_json::from_str::<Value>(&r.args_json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| r.args_json.clone());
    json!({
        "run_id": r.id, "short_id": fmt::short_id(&r.id), "function": r.function, "version": r.version,
        "status": r.status.as_str(), "status_label": fmt::status_label(r.status.as_str()),
        "done": r.status.is_final(), "finished": r.status.is_final(),
        "created": fmt::time(r.created_at_ms),
        "started": r.started_at_ms.map(fmt::time), "finished_at": r.finished_at_ms.map(fmt::time),
        "duration": fmt::duration(r.duration_ms), "cold_start": r.cold_start,
        "cost": fmt::money(r.billed_micros), "resources": fmt::resources(&r.resources),
        "bill_id": r.bill_id,
        "bill_state": match r.bill_state {
            schemas::BillState::Unbilled => "not billed yet",
            schemas::BillState::Billed => "billed",
            schemas::BillState::Exempt => "free (failed because of the platform)",
        },
        "args": args, "has_result": result.is_some(), "result": result, "output": result,
        "error": r.error.as_ref().map(|e| format!("{}: {}", e.code, e.message)),
        "logs": r.logs,
    })
}

/// A row of a runs table.
pub(crate) fn run_row(r: &RunDoc, show_function: bool) -> Value {
    json!({
        "run_id": r.id, "short_id": fmt::short_id(&r.id), "function": r.function,
        "show_function": show_function,
        "status": r.status.as_str(), "status_label": fmt::status_label(r.status.as_str()),
        "duration": if r.status.is_final() { fmt::duration(r.duration_ms) } else { "–".into() },
        "created": fmt::time(r.created_at_ms),
        "cost": fmt::money(r.billed_micros),
    })
}

/// What the detail page shows besides the function: a test's result, or a refused Test form
/// to fill again (`typed`, `errors`), and the messages on top.
#[derive(Default)]
struct Shown<'a> {
    result: Option<&'a RunDoc>,
    typed: Option<&'a Form>,
    errors: Map<String, Value>,
    error: Option<String>,
    notice: Option<String>,
}

/// The last 24 hours' charts from the metric buckets (empty when they cannot be read).
async fn function_charts(c: &Ctx, user_id: &str, f: &FunctionDoc) -> String {
    let win = crate::service::metrics::WINDOWS[1];
    let now = schemas::now_ms();
    let since = now - now.rem_euclid(win.size_ms) - (win.buckets - 1) * win.size_ms;
    match common::fnmetrics::read(&c.db, user_id, &f.id, win.size_ms, since).await {
        Ok(stored) => {
            super::charts::function_charts(&crate::service::metrics::series(win, now, &stored))
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "reading metric buckets failed");
            String::new()
        }
    }
}

/// The detail page.
async fn detail_page(
    c: &Ctx,
    v: &Viewer,
    f: &FunctionDoc,
    shown: Shown<'_>,
    status: StatusCode,
) -> PageResult {
    let Shown {
        result,
        typed,
        errors,
        error,
        notice: notice_text,
    } = shown;
    let errors = &errors;
    // After a test, the form shows the args it ran with.
    let from_run = match (typed, result) {
        (None, Some(r)) => Some(form_of_args(f, &r.args_json)),
        _ => None,
    };
    let typed = typed.or(from_run.as_ref());
    let runs = data::recent_runs(&c.db, &v.user.id, Some(&f.name), RECENT_RUNS).await?;
    let counts = c.status.get(&c.db, &v.user.id).await?;
    let cnt = counts.get(&f.name).copied().unwrap_or_default();
    let count_rows: Vec<Value> = [
        (RunStatus::Pending, cnt.pending),
        (RunStatus::Running, cnt.running),
        (RunStatus::Succeeded, cnt.succeeded),
        (RunStatus::Failed, cnt.failed),
        (RunStatus::TimedOut, cnt.timed_out),
    ]
    .iter()
    .map(|(s, n)| json!({"key": s.as_str(), "label": fmt::status_label(s.as_str()), "n": n}))
    .collect();
    let versions = backend::versions(c, f).await.unwrap_or_default();
    let charts = function_charts(c, &v.user.id, f).await;
    let func = json!({
        "env": f.config.env.keys().collect::<Vec<_>>(),
        "secret_names": f.config.secrets.keys().collect::<Vec<_>>(),
        "max_concurrency": f.config.max_concurrency,
        "name": f.name, "description": f.description, "runtime": f.runtime.as_str(),
        "handler": f.handler, "mode": f.mode.as_str(),
        "code": format!("{} ({}, {})", if f.filename.is_empty() { "package" } else { &f.filename },
            match f.code_kind { schemas::CodeKind::Single => "single file", k => k.as_str() },
            fmt::bytes(f.code_size)),
        "resources": fmt::resources(&f.resources), "timeout": format!("{} ms", f.timeout_ms),
        "args": f.args_schema.iter().map(|(n, t)| json!({"name": n, "ty": t.as_str()})).collect::<Vec<_>>(),
        "version": f.version, "updated": fmt::time(f.updated_at_ms), "created": fmt::time(f.created_at_ms),
    });
    let mut chrome = v.chrome(f.name.clone(), "functions");
    chrome.error = error;
    chrome.notice = notice_text;
    Ok(render::page(
        status,
        "function",
        &chrome,
        json!({
            "function": func,
            "test_inputs": test_inputs(f, typed, errors),
            "raw_args": typed.map(|t| t.get("raw_args").to_owned()).unwrap_or_default(),
            "raw_args_error": errors.get("raw_args").cloned().unwrap_or(Value::Null),
            "result": result.map(run_view),
            "counts": count_rows,
            "last_run": cnt.last_run_at_ms.map(fmt::time),
            "versions": versions,
            "charts": charts,
            "invoke_url": format!("{}/v1/invoke/{}", c.st.cfg.gateway_url, f.name),
            "curl": curl_example(&c.st.cfg.gateway_url, f),
            "schedules": super::schedules::section(c, &v.user.id, &f.name).await,
            "min_schedule_s": c.st.cfg.min_schedule_ms / 1000,
            "runs": runs.iter().map(|r| run_row(r, false)).collect::<Vec<_>>(),
        }),
    ))
}

async fn detail(
    c: &Ctx,
    v: Result<Viewer, PageError>,
    name: &str,
    q: &HashMap<String, String>,
) -> PageResult {
    let v = v?;
    let f = data::function(&c.db, &v.user.id, name)
        .await?
        .ok_or(PageError::NotFound)?;
    let result = match q.get("run") {
        Some(id) => data::run(&c.db, &v.user.id, id).await?,
        None => None,
    };
    let shown = Shown {
        result: result.as_ref(),
        notice: notice(q),
        ..Default::default()
    };
    detail_page(c, &v, &f, shown, StatusCode::OK).await
}

async fn test(c: &Ctx, v: Result<Viewer, PageError>, name: &str, form: Form) -> PageResult {
    let v = v?;
    if !form.csrf_ok(&v.csrf) {
        return Err(PageError::Csrf);
    }
    let f = data::function(&c.db, &v.user.id, name)
        .await?
        .ok_or(PageError::NotFound)?;
    let args = match read_args(&f.args_schema, &form) {
        Ok(a) => a,
        Err(errors) => {
            let shown = Shown {
                typed: Some(&form),
                errors,
                error: Some("The test did not run; see below what to fix.".into()),
                ..Default::default()
            };
            return detail_page(c, &v, &f, shown, StatusCode::BAD_REQUEST).await;
        }
    };
    let res = backend::invoke_test(c, &v.user.id, &f.name, args).await;
    match res {
        Ok(run_id) => Ok(web::redirect(
            &format!("/functions/{}?run={run_id}#test", f.name),
            &[],
        )),
        Err(TestFail::Refused(status, msg)) => {
            let shown = Shown {
                typed: Some(&form),
                error: Some(msg),
                ..Default::default()
            };
            detail_page(c, &v, &f, shown, status).await
        }
        Err(TestFail::Other(e)) => Err(PageError::Internal(e)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_curl_example_names_the_gateway_and_example_args() {
        let f = schemas::FunctionDoc {
            id: "f1".into(),
            user_id: "u1".into(),
            name: "adder".into(),
            runtime: schemas::Runtime::Python3,
            handler: "main.handle".into(),
            filename: "main.py".into(),
            description: String::new(),
            args_schema: vec![
                ("num1".into(), schemas::ArgType::Int),
                ("who".into(), schemas::ArgType::String),
            ],
            mode: schemas::Mode::Sync,
            resources: schemas::Resources::new(100, 128, 16),
            timeout_ms: 1000,
            version: 1,
            code_sha256: "0".repeat(64),
            code_size: 1,
            code_kind: schemas::CodeKind::Single,
            created_at_ms: 0,
            updated_at_ms: 0,
            retries: 0,
            max_event_age_s: schemas::rules::DEFAULT_MAX_EVENT_AGE_S,
            config: Default::default(),
        };
        let c = super::curl_example("https://api.example.com", &f);
        assert!(
            c.starts_with("curl -X POST 'https://api.example.com/v1/invoke/adder'"),
            "{c}"
        );
        assert!(c.contains(r#"-d '{"num1":1,"who":"text"}'"#), "{c}");
        assert!(c.contains("Bearer $COLORFAAS_KEY"), "{c}");
        assert!(super::curl_example("", &f).contains("http://GATEWAY/v1/invoke/adder"));
    }

    use super::*;

    #[test]
    fn schemas_parse_with_reasons() {
        assert_eq!(
            parse_schema("num1:int\n\n num2 : float\nflag:bool").unwrap(),
            vec![
                ("num1".to_owned(), ArgType::Int),
                ("num2".to_owned(), ArgType::Float),
                ("flag".to_owned(), ArgType::Bool)
            ]
        );
        let e = parse_schema("num1:integer").unwrap_err();
        assert!(e.contains("int, float, string, bool, object, array"), "{e}");
        assert!(parse_schema("num1").unwrap_err().contains("name:type"));
        assert!(parse_schema("a:int\na:int").unwrap_err().contains("twice"));
        assert!(parse_schema("a b:int").is_err());
        assert_eq!(
            schema_text(&parse_schema("a:int\nb:object").unwrap()),
            "a:int\nb:object"
        );
    }

    #[test]
    fn args_are_typed_by_the_schema() {
        let schema = parse_schema("n:int\nx:float\ns:string\nb:bool\no:object\na:array").unwrap();
        let f = web::urlencoded(
            b"arg.n=42&arg.x=1.5&arg.s=hi&arg.b=true&arg.o=%7B%22k%22%3A1%7D&arg.a=%5B1%5D",
        );
        assert_eq!(
            read_args(&schema, &f).unwrap(),
            json!({"n": 42, "x": 1.5, "s": "hi", "b": true, "o": {"k": 1}, "a": [1]})
        );
        let bad = web::urlencoded(b"arg.n=two&arg.x=1&arg.o=[1]&arg.a=[]");
        let errs = read_args(&schema, &bad).unwrap_err();
        assert!(errs["n"].as_str().unwrap().contains("whole number"));
        assert!(errs.contains_key("o"));
        assert!(!errs.contains_key("a"));
        let raw = web::urlencoded(b"raw_args=%7B%22a%22%3A1%7D");
        assert_eq!(read_args(&[], &raw).unwrap(), json!({"a": 1}));
        assert!(read_args(&[], &web::urlencoded(b"raw_args=%5B%5D")).is_err());
    }
}
