//! The [`Executor`] trait: what runs a batch on one GPU.
use std::future::Future;

use crate::{Batch, ExecError, GpuId};

/// Runs batches on GPUs: a simulated GPU, a CPU model, a CUDA model.
///
/// The coordinator calls [`run`](Self::run) with a batch of at least one entry. The executor
/// works on the entries ([`Batch::iter_mut`], [`Entry::payload`](crate::Entry::payload),
/// [`Entry::take_payload`](crate::Entry::take_payload)) and answers them:
///
/// - [`Batch::finish`]`(i, output)` answers entry `i` at once (`Completed`): a finished sequence
///   leaves without waiting for the others; [`Batch::fail`] answers one entry `Failed`;
///   [`Batch::finish_all`] finishes every active entry.
/// - Iteration-level ("continuous") batching: between steps, [`Batch::refill`] takes more
///   requests from the GPU's lane up to the batch limits (the new slots are
///   [`Batch::joined`]) and [`Batch::prune`] drops cancelled / expired entries (answered
///   `Cancelled` / `TimedOut`). Each `refill` also counts as the lane's heartbeat, so a long
///   continuous run is not mistaken for a hung GPU.
///
/// Returning `Err(e)` fails the batch: its GPU's health is charged with a failure and the entries
/// still active are retried once on another usable GPU or answered `Failed(e)` (see
/// [`CoordinatorBuilder::retry_on_failure`](crate::CoordinatorBuilder::retry_on_failure)).
/// Returning `Ok(())` with entries still active is an executor bug: they are answered
/// `Failed` with [`ErrorKind::Unfinished`](crate::ErrorKind::Unfinished), never dropped
/// silently. A panic inside `run` is caught and treated like `Err`.
///
/// ```
/// use freelane::{Batch, ExecError, Executor, GpuId};
///
/// /// Doubles every number, one step per batch.
/// struct Doubler;
///
/// impl Executor for Doubler {
///     type Input = u64;
///     type Output = u64;
///
///     async fn run(&self, _gpu: GpuId, batch: &mut Batch<u64, u64>) -> Result<(), ExecError> {
///         batch.finish_all(|e| e.payload().copied().unwrap_or(0) * 2);
///         Ok(())
///     }
/// }
/// ```
pub trait Executor: Send + Sync + 'static {
    /// A request's payload.
    type Input: Send + 'static;
    /// A request's result.
    type Output: Send + 'static;

    /// Runs `batch` on `gpu` (see the trait docs for the contract).
    fn run<'a>(
        &'a self,
        gpu: GpuId,
        batch: &'a mut Batch<Self::Input, Self::Output>,
    ) -> impl Future<Output = Result<(), ExecError>> + Send + 'a;
}
