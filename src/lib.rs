//! costguard: guards metered GPU time. See ARCHITECTURE.md for the map of the code.

pub mod cli;
pub mod cloud;
pub mod cmd;
pub mod config;
pub mod console;
pub mod events;
pub mod exit;
pub mod fleet;
pub mod fsutil;
pub mod hook;
pub mod http;
pub mod ledger;
pub mod manage;
pub mod metrics;
pub mod notify;
pub mod page;
pub mod policy;
pub mod redact;
pub mod report;
pub mod run;
pub mod series;
pub mod spend;
pub mod supervise;
pub mod telemetry;
pub mod timeline;
pub mod units;
