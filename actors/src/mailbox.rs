//! Sending to a bounded mailbox without making the sender wait.

use actix::dev::{SendError, ToEnvelope};
use actix::{Actor, Addr, Handler, Message};

/// Delivers `msg` now if `addr`'s mailbox has room, else from a task that
/// waits for room (the sender never blocks, the message is never dropped).
/// A closed mailbox means the actor is stopping; the message is dropped then,
/// and each caller documents why that is safe for it.
pub(crate) fn send_now_or_later<A, M>(addr: &Addr<A>, msg: M)
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    if let Err(SendError::Full(msg)) = addr.try_send(msg) {
        let addr = addr.clone();
        actix::spawn(async move {
            let _ = addr.send(msg).await;
        });
    }
}
