//! On-demand dispatch (the serverless model): each event of a function's inbox runs in a
//! fresh instance on a blocking thread, at most `max_concurrency` at once for the function
//! and never more than `runtime.max_instances` across all functions.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::inbox::Inbox;
use super::{Shared, guest_event, join_error};
use crate::metrics::FunctionStats;
use crate::runtime::LoadedFunction;

/// Runs `function`'s events from `inbox` until the inbox is closed and empty.
pub async fn run_on_demand(
    function: Arc<LoadedFunction>,
    max_concurrency: u32,
    stats: Arc<FunctionStats>,
    inbox: Arc<Inbox>,
    shared: Shared,
) {
    let own = Arc::new(Semaphore::new(max_concurrency as usize));
    while let Some(event) = inbox.pop().await {
        // Both semaphores live as long as the dispatcher; acquire cannot fail.
        let Ok(own_permit) = own.clone().acquire_owned().await else {
            break;
        };
        let Ok(pool_permit) = shared.instances.clone().acquire_owned().await else {
            break;
        };
        let function = function.clone();
        let stats = stats.clone();
        let output = shared.output.clone();
        shared.tracker.spawn(async move {
            let guest = guest_event(&event);
            let f = function.clone();
            let result = tokio::task::spawn_blocking(move || f.call_on_demand(&guest))
                .await
                .unwrap_or_else(|e| Err(join_error(e)));
            drop(pool_permit);
            output.finish(function.name(), &stats, event, result).await;
            drop(own_permit);
        });
    }
}
