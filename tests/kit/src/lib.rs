//! `multiverse-testkit`: what the integration tests (`tests/`) and the benchmarks
//! (`benches/`) need to run Multiverse's binaries as processes on 127.0.0.1, written once.
//!
//! - [`process`]: child processes ([`Proc`]) with a parent-death signal, killed and reaped on
//!   drop, stderr in a log file, the mocks' `LISTENING <addr>` readiness line.
//! - [`binaries`]: the workspace binaries, from the target directory of the running executable.
//! - [`ports`]: free loopback ports, each handed out once.
//! - [`wait`]: the one [`READY_TIMEOUT`], readiness polls that watch the child.
//! - [`dirs`]: a test's directory, a scratch directory removed on drop.
//! - [`config_file`]: config files written by serialising the binaries' own config types.
//! - [`routes`]: standalone routes files.
//! - [`stack`]: the one stack launcher — mocks, control plane, proxy.
//! - [`otlp_sink`]: an OTLP/gRPC trace sink recording the spans it is sent.
//! - [`steady`]: a steady client load that records every outcome, for tests that break
//!   things under traffic.
//!
//! Functions come in two flavours: `try_*` return errors, for tools that report and exit
//! cleanly; the others panic with the child's log, for tests.

pub mod binaries;
pub mod config_file;
pub mod dirs;
pub mod otlp_sink;
pub mod ports;
pub mod process;
pub mod routes;
pub mod stack;
pub mod steady;
pub mod wait;

pub use binaries::{bin, try_bin, Binaries};
pub use dirs::{temp_dir, ScratchDir};
pub use otlp_sink::{OtlpSink, ReceivedSpan};
pub use ports::{free_port, try_free_addr, try_free_addr_on, try_free_port, try_free_port_on};
pub use process::{kill_process_groups, Proc};
pub use routes::{model_toml, Ep};
pub use stack::control::{backends_toml, Control};
pub use stack::mocks::{MockOpenAi, MockTei};
pub use stack::proxy::Proxy;
pub use stack::Launch;
pub use wait::{eventually, try_wait_accepting, try_wait_ok, wait_ok, READY_TIMEOUT};
