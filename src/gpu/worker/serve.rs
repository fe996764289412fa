//! The command loop: batches of commands in arrival order, one poll per
//! run of releases (answered before the batch's next command of another
//! kind, unless writes wait for submission, then at the batch's end), and
//! panic isolation per command.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

use crossbeam_channel::Receiver;

use super::{Command, Worker};

impl Worker {
    /// Serves batches until `Shutdown` (true) or until every sender is
    /// dropped (false).
    ///
    /// The channel is unbounded so that the engine never blocks on it; in
    /// practice it stays short, because every command carries a reply that a
    /// caller is awaiting before it sends more for that session.
    pub(super) fn serve(&mut self, commands: &Receiver<Command>, batch_max: usize) -> bool {
        // Blocking for the first command: an idle pool costs nothing.
        while let Ok(first) = commands.recv() {
            let mut pending = Vec::new();
            let mut stop = false;
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(command) = next.take() {
                taken += 1;
                if !pending.is_empty() && !command.is_release() && !self.unsubmitted_writes {
                    // A run of releases ends here: they are answered now,
                    // after one poll, instead of behind the rest of the
                    // batch. Measured (benches/gl_vs_vulkan.rs, BENCHMARKS.md
                    // "GL fallback against Vulkan"): with 64 clients
                    // allocating, close → released waited for every later
                    // allocation in the batch, about 6 µs each on GL
                    // (llvmpipe zero-fills every new buffer) and 1 µs on
                    // Vulkan, against about 1 µs for a poll with nothing
                    // submitted; busy close → released p99 fell from 2.95
                    // to 1.96 ms on GL, 1.89 to 1.01 ms on Vulkan. With
                    // writes unsubmitted the releases keep waiting for the
                    // batch's end, so that one submission and one wait
                    // serve them all.
                    self.finish_releases(std::mem::take(&mut pending));
                }
                // Panic isolation: a command that panics (a driver bug, an
                // injected fault) loses only its own reply; the buffer map,
                // the batch's pending releases and the commands still in the
                // channel are untouched, and nothing is released twice.
                let executed = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    match command {
                        Command::Allocate { request, reply } => {
                            // Answered at once: an allocation needs no poll.
                            let _ = reply.send(self.allocate(request));
                        }
                        Command::Release { session, reply } => {
                            pending.push(self.release(session, reply))
                        }
                        Command::ReleaseAllocations {
                            session,
                            ids,
                            reply,
                        } => pending.push(self.release_allocations(session, &ids, reply)),
                        Command::SessionsHoldingMemory { reply } => {
                            // Answered at once, from the map as it stands after every
                            // earlier command: destroyed buffers are already out of it,
                            // even if their release's reply still waits for the poll.
                            let _ = reply.send(self.sessions_holding_memory());
                        }
                        Command::Write {
                            session,
                            id,
                            offset,
                            data,
                            reply,
                        } => {
                            let _ = reply.send(self.write(session, id, offset, &data));
                        }
                        // The three below wait for the device themselves; releases
                        // earlier in the batch (destroyed already) are freed by that
                        // wait too, and still answered after the batch's poll.
                        Command::Read { session, id, reply } => {
                            let _ = reply.send(self.read(session, id));
                        }
                        Command::ReadRanges {
                            session,
                            ranges,
                            reply,
                        } => {
                            let _ = reply.send(self.read_ranges(session, &ranges));
                        }
                        Command::Buffer { id, reply } => {
                            let _ = reply.send(self.buffer_by_id(id));
                        }
                        Command::Offload { session, reply } => {
                            let _ = reply.send(self.offload(session));
                        }
                        Command::Restore { session, reply } => {
                            let _ = reply.send(self.restore(session));
                        }
                        Command::Shutdown => return true,
                        Command::Reopen { reply } => {
                            let _ = reply.send(self.reopen());
                        }
                        #[cfg(feature = "testing")]
                        Command::InjectDeviceLoss => self.device.destroy(),
                        #[cfg(feature = "testing")]
                        Command::InjectHang { until } => {
                            tracing::warn!(
                                "injected hang on the sessionbus-gpu thread (fault-injection)"
                            );
                            let _ = until.recv();
                        }
                        #[cfg(feature = "testing")]
                        Command::InjectPanic => {
                            panic!("injected panic on the sessionbus-gpu thread (fault-injection)")
                        }
                    }
                    false
                }));
                match executed {
                    Ok(true) => {
                        stop = true;
                        break;
                    }
                    Ok(false) => {}
                    Err(_) => {
                        self.stats.worker_panics.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            target: "sessionbus::supervisor",
                            event = "gpu.worker_panicked",
                            "a GPU command panicked on the sessionbus-gpu thread; its caller gets no answer, the thread goes on"
                        );
                    }
                }
                if taken < batch_max {
                    next = commands.try_recv().ok();
                }
            }
            self.submit_writes();
            self.finish_releases(pending);
            if stop {
                return true;
            }
        }
        false
    }
}
