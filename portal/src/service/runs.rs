//! Runs (the seed's Func Running Record), read-only here. Invariants: only the user's own runs
//! are ever returned (others' are 404); lists are newest first and bounded ([`MAX_LIMIT`]); the
//! JSON is the gateway's (`gateway::views::run_json`), so the portal and `GET /v1/runs/{id}`
//! answer the same run identically.

use bson::doc;
use futures::TryStreamExt;
use schemas::names::collections;
use schemas::{RunDoc, RunStatus};

use super::{coll, db_err};
use crate::error::PortalError;
use crate::state::State;

/// Runs listed when no limit is given.
pub const DEFAULT_LIMIT: i64 = 50;
/// Most runs one list returns.
pub const MAX_LIMIT: i64 = 1000;

/// Which runs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only runs of the function with this name.
    pub function: Option<String>,
    pub status: Option<RunStatus>,
    /// 1..=[`MAX_LIMIT`]; default [`DEFAULT_LIMIT`].
    pub limit: Option<i64>,
    /// Only runs of this version of their function.
    pub version: Option<u32>,
    /// The next page: runs listed after this one (older, in the list's order).
    pub before: Option<String>,
}

impl RunFilter {
    /// From the query string's raw values (`function`, `status`, `limit`); 400 on bad ones.
    pub fn parse(
        function: Option<&str>,
        status: Option<&str>,
        limit: Option<&str>,
    ) -> Result<RunFilter, PortalError> {
        let function = function
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let status = match status.map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
                PortalError::invalid(
                    "status",
                    format!(
                        "{s:?} is not a status: pending, running, succeeded, failed or timed_out"
                    ),
                )
            })?),
        };
        let limit = match limit.map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(l) => match l.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Some(n),
                _ => {
                    return Err(PortalError::invalid(
                        "limit",
                        format!("must be a number from 1 to {MAX_LIMIT}"),
                    ))
                }
            },
        };
        Ok(RunFilter {
            function,
            status,
            limit,
            version: None,
            before: None,
        })
    }

    /// Adds the `version` and `before` query values (contract v1.1); 400 on bad ones.
    pub fn paged(
        mut self,
        version: Option<&str>,
        before: Option<&str>,
    ) -> Result<RunFilter, PortalError> {
        self.version = match version.map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(v) => Some(v.parse::<u32>().ok().filter(|v| *v >= 1).ok_or_else(|| {
                PortalError::invalid("version", "must be a version number (1 or more)")
            })?),
        };
        self.before = before
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        Ok(self)
    }
}

fn runs(st: &State) -> mongodb::Collection<RunDoc> {
    coll(st, collections::RUNS)
}

/// The user's runs matching `f`, newest first.
pub async fn list(st: &State, user_id: &str, f: &RunFilter) -> Result<Vec<RunDoc>, PortalError> {
    let mut filter = doc! {"user_id": user_id};
    if let Some(name) = &f.function {
        filter.insert("function", name);
    }
    if let Some(s) = f.status {
        filter.insert("status", s.as_str());
    }
    if let Some(v) = f.version {
        filter.insert("version", i64::from(v));
    }
    if let Some(before) = &f.before {
        // Keyset paging in the list's order (newest first, then id): what comes after `before`.
        let after = get(st, user_id, before).await.map_err(|e| match e {
            PortalError::NotFound(_) => {
                PortalError::invalid("before", "is not the id of one of your runs")
            }
            e => e,
        })?;
        let t = after.created_at_ms;
        filter.insert(
            "$or",
            vec![
                doc! {"created_at_ms": {"$lt": t}},
                doc! {"created_at_ms": t, "_id": {"$lt": &after.id}},
            ],
        );
    }
    let limit = f.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    runs(st)
        .find(filter)
        .sort(doc! {"created_at_ms": -1, "_id": -1})
        .limit(limit)
        .await
        .map_err(db_err("listing runs"))?
        .try_collect()
        .await
        .map_err(db_err("listing runs"))
}

/// One run of the user; 404 when it does not exist or is someone else's.
pub async fn get(st: &State, user_id: &str, run_id: &str) -> Result<RunDoc, PortalError> {
    runs(st)
        .find_one(doc! {"_id": run_id, "user_id": user_id})
        .await
        .map_err(db_err("reading the run"))?
        .ok_or(PortalError::NotFound("run"))
}

/// The contract's Run.
pub fn run_json(d: &RunDoc) -> serde_json::Value {
    gateway::views::run_json(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_parsed() {
        let f = RunFilter::parse(Some("adder"), Some("timed_out"), Some("5")).unwrap();
        assert_eq!(f.function.as_deref(), Some("adder"));
        assert_eq!((f.status, f.limit), (Some(RunStatus::TimedOut), Some(5)));
        assert_eq!(
            RunFilter::parse(None, None, None).unwrap(),
            RunFilter::default()
        );
        assert_eq!(
            RunFilter::parse(None, Some("done"), None)
                .unwrap_err()
                .field(),
            Some("status")
        );
        for bad in ["0", "x", "1001", "-1"] {
            assert!(RunFilter::parse(None, None, Some(bad)).is_err(), "{bad}");
        }
    }
}
