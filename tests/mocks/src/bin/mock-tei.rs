//! `mock-tei`: a stand-in for TEI's `text-embeddings-router` (see
//! `multiverse_mocks::tei`).

use clap::Parser;
use multiverse_mocks::{common, tei};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = tei::TeiArgs::parse();
    common::init_tracing(args.json_output);
    tei::run(args).await
}
