//! Test invocations (`POST /api/v1/functions/{name}/test` and the function page's Test form)
//! as a sync invoke through the gateway's own machinery, in-process: the same args check
//! (`gateway::args`), reservation of the worst case (`accounts::hold`: 402, 429), pending run record
//! (`common::runstore::pending_doc`), RabbitMQ publish with confirms and reply queue
//! (`gateway::broker::Broker`), and the same answer (`gateway::sync_response`). So the outcome,
//! its headers and the run record are those of a real sync invoke. The portal instance has a
//! reply queue of its own (`<prefix>.replies.portal-<id>`); like a gateway it also serves its
//! share of the callbacks queue.

use std::sync::Arc;
use std::time::Duration;

use accounts::Limits;
use common::runstore::{pending_doc, RunWrite, RunWriter};
use gateway::broker::{Broker, PublishError};
use gateway::{GatewayError, Outcome};
use schemas::{InvocationMsg, Mode};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::error::PortalError;
use crate::state::State;

/// The sync-invoke machinery of one portal instance.
pub struct Invoker {
    pub broker: Arc<Broker>,
    pub writer: RunWriter,
    pub store: gateway::store::Store,
    pub inflight: Arc<Semaphore>,
    pub sync_grace: Duration,
    pub prices: accounts::PriceBook,
}

impl std::fmt::Debug for Invoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invoker")
            .field("reply_queue", &self.broker.reply_queue())
            .finish_non_exhaustive()
    }
}

fn unavailable(e: &PublishError) -> PortalError {
    PortalError::Invoke(GatewayError::Unavailable(format!("{e}; try again shortly")))
}

/// Runs the user's function `name` with `args` as a sync invoke and waits for it. A finished
/// run — succeeded, failed or timed out — is `Ok` (map it with `gateway::sync_response`, or
/// show it); errors are those a sync invoke answers before or instead of a result: 400 args,
/// 402 budget, 404 function, 429 per-user limit (the gateway's defaults), 503 no RabbitMQ or no
/// capacity, 504 no result in time (with the run id).
pub async fn invoke_test(
    st: &State,
    user_id: &str,
    name: &str,
    args: Value,
) -> Result<Outcome, PortalError> {
    if st.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(PortalError::Invoke(GatewayError::ShuttingDown));
    }
    let inv_ = &st.invoker;
    let func = super::functions::find(st, user_id, name)
        .await?
        .ok_or_else(|| PortalError::Invoke(GatewayError::NoSuchFunction(name.to_owned())))?;
    gateway::args::validate(&func.args_schema, &args)
        .map_err(|e| PortalError::Invoke(GatewayError::InvalidArgs(e)))?;
    let prices = inv_
        .prices
        .current(&st.db)
        .await
        .map_err(|e| PortalError::Invoke(GatewayError::Unavailable(format!("{e:#}"))))?;
    let worst = prices.worst_case(func.timeout_ms, func.resources);
    let reservation =
        match accounts::reserve(&st.db, user_id, worst, true, &Limits::default()).await {
            Ok(r) => r,
            Err(accounts::ReserveError::UnknownUser) => return Err(PortalError::Unauthorized),
            Err(e) => return Err(PortalError::Invoke(e.into())),
        };
    let _permit = inv_
        .inflight
        .clone()
        .try_acquire_owned()
        .map_err(|_| PortalError::Invoke(GatewayError::NoCapacity))?;
    if !inv_.broker.is_connected() {
        return Err(unavailable(&PublishError::NotConnected));
    }
    let inv = InvocationMsg {
        reply_to: Some(inv_.broker.reply_queue().to_owned()),
        hold: Some(reservation.hold()),
        ..InvocationMsg::of_function(
            &func,
            uuid::Uuid::now_v7().to_string(),
            args,
            Mode::Sync,
            schemas::now_ms(),
        )
    };
    let waiter = inv_.broker.register(&inv.run_id);
    inv_.writer
        .write(RunWrite::Pending(Box::new(pending_doc(&inv))))
        .await;
    // From the publish on, the run's final record releases the reservation.
    reservation.hand_over();
    if let Err(e) = inv_.broker.publish_invocation(&inv).await {
        tracing::warn!(run_id = inv.run_id, error = %e, "a test invocation was not published");
        let d = gateway::unpublished_doc(&inv, &e.to_string());
        inv_.writer.write(RunWrite::Finished(Box::new(d))).await;
        return Err(unavailable(&e));
    }
    tracing::info!(
        user_id,
        function = name,
        run_id = inv.run_id,
        "test invocation published"
    );
    let wait = Duration::from_millis(inv.timeout_ms) + inv_.sync_grace;
    if let Some(r) = waiter.wait(wait).await {
        return Ok(r.into());
    }
    if let Ok(Some(d)) = inv_.store.run(&inv.run_id).await {
        if d.status.is_final() {
            return Ok(Outcome::from(&d));
        }
    }
    Err(PortalError::Invoke(GatewayError::TimedOut {
        message: format!(
            "no result within {} ms; the run may still finish: GET /api/v1/runs/{}",
            wait.as_millis(),
            inv.run_id
        ),
        run_id: inv.run_id,
    }))
}
