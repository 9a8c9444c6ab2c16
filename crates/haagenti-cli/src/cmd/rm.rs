//! `haagenti rm`: remove a model.

use anyhow::Result;
use haagenti_fragments::OpenOptions;

use crate::location::Location;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model to remove.
    #[arg(long)]
    model: String,
}

pub async fn run(location: &Location, args: Args) -> Result<()> {
    let lib = location.open(OpenOptions::default()).await?;
    lib.remove(&args.model).await?;
    outln!(
        "removed {} (run `haagenti gc` to free its unshared fragments)",
        args.model
    )?;
    Ok(())
}
