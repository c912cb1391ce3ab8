//! Task manage: search functions by name, each one's status counts and last run, the recent
//! runs, and a run's page with its logs. `/tasks/live` answers the status part alone (an HTML
//! fragment) for the page's refresh script; without JavaScript the page refreshes itself.

use std::collections::HashMap;

use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::data::{self, RECENT_RUNS};
use super::fmt;
use super::functions::{run_row, run_view};
use super::render;
use super::{finish, need, query, Ctx, PageError, PageResult, Viewer};

/// Functions shown in the status table at most (the search narrows it).
pub const STATUS_ROWS: usize = 100;
/// Refresh period of the page without JavaScript.
const NOSCRIPT_REFRESH_SECS: u32 = 10;

pub(super) fn routes(v: BoxedFilter<(Ctx, Option<Viewer>)>) -> BoxedFilter<(Response,)> {
    let page = warp::path!("tasks")
        .and(warp::get())
        .and(v.clone())
        .and(query())
        .then(
            |c: Ctx, viewer: Option<Viewer>, q: HashMap<String, String>| async move {
                let r = tasks(&c, need(viewer.clone()), &q, false).await;
                finish(viewer.as_ref(), r)
            },
        );
    let live = warp::path!("tasks" / "live")
        .and(warp::get())
        .and(v.clone())
        .and(query())
        .then(
            |c: Ctx, viewer: Option<Viewer>, q: HashMap<String, String>| async move {
                match &viewer {
                    Some(v) => finish(Some(v), tasks(&c, Ok(v.clone()), &q, true).await),
                    // A fragment request is never redirected: the script keeps what it shows.
                    None => render::html(StatusCode::UNAUTHORIZED, String::new()),
                }
            },
        );
    let run = warp::path!("runs" / String).and(warp::get()).and(v).then(
        |id: String, c: Ctx, viewer: Option<Viewer>| async move {
            let r = run(&c, need(viewer.clone()), &id).await;
            finish(viewer.as_ref(), r)
        },
    );
    page.or(live).unify().or(run).unify().boxed()
}

/// The task page's data: the matching functions' counts and the recent runs.
pub async fn status_data(c: &Ctx, user_id: &str, q: &str) -> anyhow::Result<Value> {
    let fns = data::function_names(&c.db, user_id, q, data::MAX_FUNCTIONS).await?;
    let counts = c.status.get(&c.db, user_id).await?;
    let names: Vec<&str> = fns.iter().map(String::as_str).collect();
    let rows: Vec<Value> = fns
        .iter()
        .take(STATUS_ROWS)
        .map(|name| {
            let n = counts.get(name).copied().unwrap_or_default();
            json!({
                "name": name, "pending": n.pending, "running": n.running, "succeeded": n.succeeded,
                "failed": n.failed, "timed_out": n.timed_out, "last_run": n.last_run_at_ms.map(fmt::time),
            })
        })
        .collect();
    // Recent runs: the user's newest (index `user_created`), or those of the matching functions
    // (`user_function_created`), limited.
    let runs = if q.is_empty() {
        data::recent_runs(&c.db, user_id, None, RECENT_RUNS).await?
    } else if names.is_empty() {
        Vec::new()
    } else {
        data::recent_runs_of(&c.db, user_id, Some(names), RECENT_RUNS).await?
    };
    Ok(json!({
        "q": q,
        "q_query": serde_urlencoded::to_string([("q", q)]).unwrap_or_default(),
        "functions": rows,
        "more": fns.len() > STATUS_ROWS, "shown": STATUS_ROWS, "total": fns.len(),
        "runs": runs.iter().map(|r| run_row(r, true)).collect::<Vec<_>>(),
        "updated": fmt::time(schemas::now_ms()),
    }))
}

async fn tasks(
    c: &Ctx,
    v: Result<Viewer, PageError>,
    q: &HashMap<String, String>,
    fragment_only: bool,
) -> PageResult {
    let v = v?;
    let search: String = q
        .get("q")
        .map(|s| s.trim())
        .unwrap_or("")
        .chars()
        .take(100)
        .collect();
    let mut data = status_data(c, &v.user.id, &search).await?;
    if fragment_only {
        return Ok(render::html(
            StatusCode::OK,
            render::fragment("tasks_status", &data),
        ));
    }
    data["live"] = json!(true);
    data["refresh_secs"] = json!(NOSCRIPT_REFRESH_SECS);
    Ok(render::page(
        StatusCode::OK,
        "tasks",
        &v.chrome("Tasks", "tasks"),
        data,
    ))
}

async fn run(c: &Ctx, v: Result<Viewer, PageError>, id: &str) -> PageResult {
    let v = v?;
    let r = data::run(&c.db, &v.user.id, id)
        .await?
        .ok_or(PageError::NotFound)?;
    let mut view = run_view(&r);
    view["finished"] = json!(r.finished_at_ms.map(fmt::time));
    let mut data = json!({"run": view});
    if !r.status.is_final() {
        data["refresh_secs"] = json!(3);
    }
    Ok(render::page(
        StatusCode::OK,
        "run",
        &v.chrome(format!("Run {}", fmt::short_id(&r.id)), "tasks"),
        data,
    ))
}
