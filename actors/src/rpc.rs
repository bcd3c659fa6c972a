//! Request/reply between actors, always with a deadline: a caller never
//! waits forever on an actor that is stuck or gone.

use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use std::future::Future;
use std::time::Duration;

/// Default deadline for a call to a repository or cache actor.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call got no answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RpcError {
    /// The actor did not answer in time.
    #[error("{0} did not answer within {1:?}")]
    Timeout(&'static str, Duration),
    /// The actor is stopped, or dropped the request without answering.
    #[error("{0} is not running")]
    Gone(&'static str),
}

/// Sends the message built by `build` to `actor` and waits up to `timeout`
/// for the answer. `who` names the actor in errors.
pub async fn ask<M, T>(
    actor: &ActorRef<M>,
    who: &'static str,
    timeout: Duration,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, RpcError>
where
    M: ractor::Message,
    T: Send + 'static,
{
    match actor.call(build, Some(timeout)).await {
        Ok(CallResult::Success(value)) => Ok(value),
        Ok(CallResult::Timeout) => Err(RpcError::Timeout(who, timeout)),
        Ok(CallResult::SenderError) | Err(_) => Err(RpcError::Gone(who)),
    }
}

/// Runs `work` as its own task and sends its result to `reply`: how a
/// repository actor answers without its mailbox waiting on the database.
pub fn answer<T: Send + 'static>(
    reply: RpcReplyPort<T>,
    work: impl Future<Output = T> + Send + 'static,
) {
    tokio::spawn(async move {
        let _ = reply.send(work.await);
    });
}
