//! What the host tests name a thread's partners with: plain numbers (shared by `life_model.rs`
//! and `life_loom.rs`).
use rl4_core::life::{Ident, Kinds};

pub struct K;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Id(pub usize);

impl Ident for Id {
    fn ident(&self) -> usize {
        self.0
    }
}

impl Kinds for K {
    type Ep = Id;
    type Ntf = Id;
    type Cap = u32;
    type Caller = usize;
}
