//! `mock-openai`: an OpenAI-compatible mock model server (see `multiverse_mocks::openai`).

use clap::Parser;
use multiverse_mocks::{common, openai};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = openai::OpenAiArgs::parse();
    common::init_tracing(false);
    openai::run(args).await
}
