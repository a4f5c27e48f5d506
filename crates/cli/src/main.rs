//! The `flash-moe` command line. (Skeleton.)

fn main() -> anyhow::Result<()> {
    anyhow::bail!("not yet: the engine is being written")
}
