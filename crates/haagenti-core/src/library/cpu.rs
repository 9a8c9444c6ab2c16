//! The threads a library's CPU work runs on (hashing, signatures, encoding, decoding):
//! `parallelism` workers, plus one spare that takes only decodes into memory fresh from
//! the allocator (see [`FragmentLibrary::on_cpu_fresh`](super::FragmentLibrary)).
//!
//! Work waits in a queue that the workers drain back to back: a worker that finishes one
//! item takes the next without a wake-up in between. Before, each item waited on a
//! semaphore permit and then for a thread of tokio's blocking pool; every hand-off (the
//! permit's waiter woken, polled, its thread woken) left a core idle, 15% of a 2 GiB
//! ingest's core-seconds on 2 cores (ARCHITECTURE.md, *Decisions*).

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::{FragmentError, Result};

type Job = Box<dyn FnOnce() + Send>;

/// The workers and their queues. Threads start with the first item and end when the
/// pool is dropped (after the items already queued).
#[derive(Debug)]
pub(super) struct CpuPool {
    shared: Arc<Shared>,
    parallelism: usize,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled for every item: any worker may take it.
    general: Condvar,
    /// Signalled for fresh-memory items: the spare worker may take those too.
    spare: Condvar,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Queue {
    plain: VecDeque<Job>,
    fresh: VecDeque<Job>,
    started: bool,
    closed: bool,
}

impl CpuPool {
    pub(super) fn new(parallelism: usize) -> Self {
        Self {
            shared: Arc::default(),
            parallelism: parallelism.max(1),
        }
    }

    /// Runs `f` on a worker (`fresh`: the spare one may take it too) and returns what it
    /// returned. Errors: [`FragmentError::TaskFailed`] if `f` panicked or no worker
    /// thread could be started.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        fresh: bool,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        {
            let mut queue = self.lock();
            if !queue.started {
                self.start()?;
                queue.started = true;
            }
            if fresh {
                queue.fresh.push_back(job);
            } else {
                queue.plain.push_back(job);
            }
        }
        self.shared.general.notify_one();
        if fresh {
            self.shared.spare.notify_one();
        }
        // A job that panicked dropped its sender (the worker lives on).
        rx.await
            .map_err(|_| FragmentError::task_failed("cpu work", "panicked"))
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(&self) -> Result<()> {
        for i in 0..=self.parallelism {
            let spare = i == self.parallelism;
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name(format!("haagenti-cpu-{i}"))
                .spawn(move || work(&shared, spare))
                .map_err(|e| FragmentError::task_failed("cpu worker start", e))?;
        }
        Ok(())
    }
}

impl Drop for CpuPool {
    fn drop(&mut self) {
        self.lock().closed = true;
        self.shared.general.notify_all();
        self.shared.spare.notify_all();
    }
}

/// A worker's loop: general workers take plain items first, the spare only fresh ones.
fn work(shared: &Shared, spare: bool) {
    let lock = || shared.queue.lock().unwrap_or_else(|e| e.into_inner());
    let mut queue = lock();
    loop {
        let job = if spare {
            queue.fresh.pop_front()
        } else {
            queue.plain.pop_front().or_else(|| queue.fresh.pop_front())
        };
        match job {
            Some(job) => {
                drop(queue);
                // A panic is reported to the caller through its dropped sender.
                let _ = catch_unwind(AssertUnwindSafe(job));
                queue = lock();
            }
            None if queue.closed => return,
            None => {
                let signal = if spare {
                    &shared.spare
                } else {
                    &shared.general
                };
                queue = signal.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}
