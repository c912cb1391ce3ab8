//! The Schedules section of a function's page: add (expression and args), pause/resume and
//! delete, each a CSRF-checked form posting to the service layer (`service::schedules`) and
//! redirecting back to the function's page.

use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::web::{self, Form};
use super::{finish, form, need, Ctx, PageError, PageResult, Viewer};
use crate::error::PortalError;
use crate::service::schedules as svc;

pub(super) fn routes(v: BoxedFilter<(Ctx, Option<Viewer>)>) -> BoxedFilter<(Response,)> {
    let add = warp::path!("functions" / String / "schedules")
        .and(warp::post())
        .and(v.clone())
        .and(form())
        .then(
            |name: String, c: Ctx, viewer: Option<Viewer>, f: Form| async move {
                let r = add(&c, need(viewer.clone()), &name, f).await;
                finish(viewer.as_ref(), r)
            },
        );
    let act = warp::path!("schedules" / String / String)
        .and(warp::post())
        .and(v)
        .and(form())
        .then(
            |id: String, action: String, c: Ctx, viewer: Option<Viewer>, f: Form| async move {
                let r = act(&c, need(viewer.clone()), &id, &action, f).await;
                finish(viewer.as_ref(), r)
            },
        );
    add.or(act).unify().boxed()
}

fn fail(e: PortalError) -> PageError {
    match e {
        PortalError::NotFound(_) => PageError::NotFound,
        PortalError::Invalid { message, .. } => PageError::BadForm(message),
        e => PageError::Internal(anyhow::anyhow!("{e}")),
    }
}

async fn add(c: &Ctx, v: Result<Viewer, PageError>, name: &str, f: Form) -> PageResult {
    let v = v?;
    if !f.csrf_ok(&v.csrf) {
        return Err(PageError::Csrf);
    }
    let raw = f.get("args").trim();
    let args = if raw.is_empty() {
        None
    } else {
        Some(
            serde_json::from_str::<Value>(raw)
                .map_err(|e| PageError::BadForm(format!("The args are not JSON: {e}")))?,
        )
    };
    let req = svc::NewSchedule {
        expression: f.get("expression").to_owned(),
        args,
        enabled: Some(true),
    };
    svc::create(&c.st, &v.user.id, name, &req)
        .await
        .map_err(fail)?;
    Ok(web::redirect(
        &format!("/functions/{name}?notice=schedule_added#schedules"),
        &[],
    ))
}

async fn act(c: &Ctx, v: Result<Viewer, PageError>, id: &str, action: &str, f: Form) -> PageResult {
    let v = v?;
    if !f.csrf_ok(&v.csrf) {
        return Err(PageError::Csrf);
    }
    let uid = &v.user.id;
    let (function, notice) = match action {
        "pause" | "resume" => {
            let d = svc::set_enabled(&c.st, uid, id, action == "resume")
                .await
                .map_err(fail)?;
            (d.function, format!("schedule_{action}d"))
        }
        "delete" => {
            svc::delete(&c.st, uid, id).await.map_err(fail)?;
            (f.get("function").to_owned(), "schedule_deleted".to_owned())
        }
        _ => return Err(PageError::NotFound),
    };
    if !schemas::rules::valid_function_name(&function) {
        return Ok(web::redirect("/functions", &[]));
    }
    Ok(web::redirect(
        &format!("/functions/{function}?notice={notice}#schedules"),
        &[],
    ))
}

/// The function page's view of its schedules.
pub(super) async fn section(c: &Ctx, uid: &str, name: &str) -> Vec<Value> {
    svc::list(&c.st, uid, name)
        .await
        .unwrap_or_default()
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "expression": d.expression,
                "args": d.args_json,
                "enabled": d.enabled,
                "next": if d.enabled && d.next_tick_ms < i64::MAX {
                    super::fmt::time(d.next_tick_ms)
                } else {
                    "paused".to_owned()
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::render::{context, fragment, Chrome};
    use serde_json::json;

    #[test]
    fn the_function_page_lists_schedules_with_csrf_forms() {
        let chrome = Chrome {
            csrf: "tok123".into(),
            ..Default::default()
        };
        let data = json!({
            "function": {"name": "echo", "args": []},
            "schedules": [
                {"id": "s1", "expression": "rate(5 minutes)", "args": "{\"a\":\"<b>\"}", "enabled": true, "next": "2026-12-07 05:00"},
                {"id": "s2", "expression": "cron(0 9 * * *)", "args": "{}", "enabled": false, "next": "paused"}
            ],
            "min_schedule_s": 60,
        });
        let body = fragment("function", &context(&chrome, data));
        for needle in [
            r#"action="/schedules/s1/pause""#,
            r#"action="/schedules/s2/resume""#,
            r#"action="/schedules/s1/delete""#,
            r#"action="/functions/echo/schedules""#,
            r#"name="function" value="echo""#,
            "rate(5 minutes)",
            "2026-12-07 05:00",
            "&lt;b&gt;",
        ] {
            assert!(body.contains(needle), "{needle} missing");
        }
        // Every schedule form carries the session's CSRF token.
        let forms = body.matches("<form method=\"post\"").count();
        let tokens = body.matches(r#"name="csrf" value="tok123""#).count();
        assert!(forms >= 6, "{forms}");
        assert_eq!(forms, tokens);
    }
}
