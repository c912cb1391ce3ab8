//! The leader's side of `max_concurrency` (rules in `crate::limits`): admitting, parking and
//! refusing invocations, and starting parked ones as slots free.

use lapin::options::BasicAckOptions;
use lapin::Acker;
use schemas::run_error_codes as codes;
use schemas::{InvocationMsg, Mode};

use super::{Dispatcher, Held};
use crate::drf::Task;
use crate::limits::{Admission, Limiter};

impl Dispatcher {
    /// Applies the function's limit to a new invocation: `Some` to schedule it now; `None` when
    /// it was parked (held, not scheduled) or refused (answered and acked).
    pub(super) async fn admit(
        &mut self,
        inv: InvocationMsg,
        acker: &Acker,
        repeat: bool,
    ) -> Option<InvocationMsg> {
        let sync = inv.mode == Mode::Sync;
        match self.limiter.admit(
            &inv.run_id,
            &inv.function_id,
            inv.config.max_concurrency,
            sync,
        ) {
            Admission::Go => Some(inv),
            Admission::Refuse => {
                self.metrics.throttled.inc();
                let limit = inv.config.max_concurrency.unwrap_or_default();
                tracing::debug!(
                    run_id = inv.run_id,
                    function = inv.function,
                    limit,
                    "refusing a sync invocation over its function's max_concurrency"
                );
                let msg = format!(
                    "the function {:?} already runs {limit} invocations at once (its max_concurrency); retry later",
                    inv.function
                );
                self.end_unrun(&inv, codes::CONCURRENCY_LIMIT, &msg, 0)
                    .await;
                let _ = acker.ack(BasicAckOptions::default()).await;
                None
            }
            Admission::Park => {
                tracing::debug!(
                    run_id = inv.run_id,
                    function = inv.function,
                    "parking an async invocation until its function has a free slot"
                );
                self.held.insert(
                    inv.run_id.clone(),
                    Held {
                        inv,
                        acker: acker.clone(),
                        repeat,
                    },
                );
                None
            }
        }
    }

    /// A run ended or was handed back: its function's slot goes to the next parked run.
    pub(super) fn run_ended(&mut self, run_id: &str) {
        let ready = self.limiter.finish(run_id);
        self.enqueue_unparked(ready);
    }

    /// Puts parked runs that may start now into the DRF queues.
    pub(super) fn enqueue_unparked(&mut self, ready: Vec<String>) {
        for run_id in ready {
            let Some(h) = self.held.get(&run_id) else {
                // Not held here (e.g. a standby): nothing to start.
                let _ = self.limiter.finish(&run_id);
                continue;
            };
            let task = Task::new(run_id.clone(), h.inv.function_key(), h.inv.resources);
            if let Err(e) = self.sched.enqueue(&h.inv.user_id, task) {
                tracing::warn!(run_id, error = %e, "cannot schedule a parked invocation; it stays held");
            }
        }
    }

    /// Counts from the workers' latest heartbeats only (a new or stepped-down leader).
    pub(super) fn reset_limiter(&mut self) {
        self.limiter = Limiter::new();
        for w in self.workers.values() {
            let _ = self.limiter.observe(&w.beat.worker_id, &w.beat.running);
        }
    }
}
