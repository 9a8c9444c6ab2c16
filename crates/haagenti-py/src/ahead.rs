//! Read-ahead across tensors: `{k: f.get_tensor(k) for k in f.keys()}` asks for one
//! tensor at a time, so without it a small tensor keeps one core busy while the other
//! waits, and nothing is decoded while Python wraps the last result. The Python half
//! predicts the next tensors (when calls follow `keys()` or file order) and passes them
//! with each read; their reads run on the runtime until asked for.
//!
//! Bounded: the tensors ahead total at most the budget (the first one whatever its
//! size), and a read that predicts nothing (the pattern broke) drops the window. Each
//! read is the same verified read as a direct one; a read ahead that failed is done
//! again when asked for, so a transient failure surfaces only if it happens again.

use std::sync::Mutex;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use haagenti_fragments::{FragmentError, ModelHandle, TensorInfo};
use tokio::task::AbortHandle;

use crate::model::read_whole;

type Fetch = Shared<BoxFuture<'static, Result<Bytes, FragmentError>>>;

/// One tensor being read ahead.
#[derive(Debug)]
struct Ahead {
    index: usize,
    len: u64,
    fetch: Fetch,
    abort: AbortHandle,
}

/// The tensor reads under way ahead of a reader (one per open model).
#[derive(Debug)]
pub struct ReadAhead {
    window: Mutex<Vec<Ahead>>,
    /// Most bytes of tensors read ahead at once, unless one tensor alone is larger.
    budget: u64,
}

impl ReadAhead {
    pub fn new(budget: u64) -> Self {
        Self {
            window: Mutex::default(),
            budget,
        }
    }

    /// Tensor `index`'s bytes (`info`): from the window when it was read ahead, else
    /// read now. Before waiting, the window becomes the reads of `next` (tensor index
    /// and info, in the order they are expected) that fit the budget. Must run on the
    /// runtime (it spawns the reads ahead).
    pub async fn read(
        &self,
        handle: &ModelHandle,
        index: usize,
        info: &TensorInfo,
        next: Vec<(usize, TensorInfo)>,
    ) -> Result<Bytes, FragmentError> {
        let ahead = self.advance(handle, index, next);
        if let Some(fetch) = ahead
            && let Ok(bytes) = fetch.await
        {
            return Ok(bytes);
        }
        read_whole(handle, info).await
    }

    /// Takes tensor `index`'s read out of the window and moves the window to `next`.
    fn advance(
        &self,
        handle: &ModelHandle,
        index: usize,
        next: Vec<(usize, TensorInfo)>,
    ) -> Option<Fetch> {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let current = window
            .iter()
            .position(|a| a.index == index)
            .map(|at| window.swap_remove(at).fetch);
        let mut kept = Vec::new();
        let mut bytes = 0;
        for (i, info) in next {
            if i == index || kept.iter().any(|a: &Ahead| a.index == i) {
                continue;
            }
            if !kept.is_empty() && bytes + info.len > self.budget {
                break;
            }
            bytes += info.len;
            let ahead = match window.iter().position(|a| a.index == i) {
                Some(at) => window.swap_remove(at),
                None => spawn(handle, i, info),
            };
            kept.push(ahead);
        }
        // Whatever is left was mispredicted.
        for stale in window.drain(..) {
            stale.abort.abort();
        }
        *window = kept;
        current
    }

    /// The most bytes read ahead at once (see the field).
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// `(tensors, bytes)` in the window now (for tests).
    pub fn size(&self) -> (usize, u64) {
        let window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        (window.len(), window.iter().map(|a| a.len).sum())
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        let window = self.window.get_mut().unwrap_or_else(|e| e.into_inner());
        for ahead in window.drain(..) {
            ahead.abort.abort();
        }
    }
}

fn spawn(handle: &ModelHandle, index: usize, info: TensorInfo) -> Ahead {
    let handle = handle.clone();
    let len = info.len;
    let task = tokio::spawn(async move { read_whole(&handle, &info).await });
    let abort = task.abort_handle();
    let fetch = async move {
        task.await.unwrap_or_else(|e| {
            Err(FragmentError::InvalidInput(format!(
                "a read ahead ended early: {e}"
            )))
        })
    }
    .boxed()
    .shared();
    Ahead {
        index,
        len,
        fetch,
        abort,
    }
}
