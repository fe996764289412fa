//! GPU memory budgets: the device's, each owner's, and (in `[sessions]`)
//! each session's cap; what an allocation past one does (fail, wait, or
//! make room by evicting idle sessions); and the books behind them.

mod accounts;
mod charge;
mod config;

pub(crate) use accounts::Budget;
pub use accounts::{BudgetScope, BudgetStats};
pub(crate) use charge::{Charge, WaitRules, acquire};
pub use config::{BudgetConfig, WhenExhausted};
