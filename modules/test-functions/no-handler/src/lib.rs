//! Test function that is a valid component but does not export the `handler` interface:
//! the agent must refuse it at start-up, naming the function.

/// Uses the SDK (so the component imports `edge:agent/log`) but exports nothing.
pub fn unused() {
    edge_agent_sdk::log::info("never called");
}
