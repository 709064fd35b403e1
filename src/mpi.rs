//! Data-parallel runs across processes over MPI (cargo feature `mpi`): an
//! [`AllReduce`] over an MPI communicator, so that the training loop of threads runs on
//! many processes (or machines) unchanged.
//!
//! Each process runs its rows of the batch ([`shard_rows`](crate::bptt::shard_rows) of
//! its rank), then [`MpiReduce`] gathers every process's loss and gradients in one flat
//! buffer per update (one `MPI_Allgather`, not one call per parameter) and adds them by
//! [`tree_sum`] in rank order on every process: the same order as
//! [`Parallel`](crate::bptt::Parallel) adds its threads' parts, so N processes of one
//! thread give, bit for bit, what N threads give, and every process ends the update
//! with the same gradient. The buffer is exchanged as `f64` (exact for `f32` values).
//! Every process must hold the same parameters (same store layout).

use crate::bptt::{tree_sum, tree_sum_scalars, AllReduce};
use crate::error::{invalid, Result};
use crate::params::Grads;
use crate::scalar::Scalar;
use mpi::traits::{Communicator, CommunicatorCollectives};

/// [`AllReduce`] over an MPI communicator (e.g. `mpi::initialize()?.world()`).
#[derive(Debug)]
pub struct MpiReduce<'c, C> {
    comm: &'c C,
}

impl<'c, C: Communicator> MpiReduce<'c, C> {
    /// The reduction over the processes of `comm`.
    pub fn new(comm: &'c C) -> Self {
        MpiReduce { comm }
    }
}

impl<F: Scalar, C: Communicator + CommunicatorCollectives> AllReduce<F> for MpiReduce<'_, C> {
    fn place(&self) -> (usize, usize) {
        let (rank, size) = (self.comm.rank(), self.comm.size());
        (rank.max(0) as usize, size.max(1) as usize)
    }

    fn all_reduce(&mut self, loss: &mut F, grads: &mut Grads<F>) -> Result<()> {
        let (_, n) = AllReduce::<F>::place(self);
        let mut flat = vec![loss.as_f64()];
        for (_, g) in grads.iter() {
            flat.extend(g.iter().map(|x| x.as_f64()));
        }
        let mut all = vec![0.0f64; flat.len() * n];
        self.comm.all_gather_into(&flat[..], &mut all[..]);
        let mut losses = Vec::with_capacity(n);
        let mut parts = Vec::with_capacity(n);
        for chunk in all.chunks(flat.len()) {
            losses.push(F::of(chunk[0]));
            let mut part = grads.clone();
            let mut values = chunk[1..].iter();
            for (_, g) in part.iter_mut() {
                for x in g.iter_mut() {
                    let v = values
                        .next()
                        .ok_or_else(|| invalid("MpiReduce::all_reduce", "short buffer"))?;
                    *x = F::of(*v);
                }
            }
            parts.push(part);
        }
        *loss = tree_sum_scalars(&losses);
        *grads = tree_sum(parts)?;
        Ok(())
    }
}
