//! `skiff man DIR`: roff man pages generated from the CLI's own definition (clap_mangen), so
//! they say what `--help` says: `skiff.1`, then `skiff-<command>[-<sub>].1` for every command
//! users can type (the internal `shim` has none).

use std::path::Path;

/// Writes every page into `dir`; returns the paths written, in order.
pub fn write_pages(root: clap::Command, dir: &Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    page(&root, "skiff", "skiff", dir, &mut written)?;
    Ok(written)
}

/// Writes `cmd`'s page as `name` (e.g. skiff-queues-send; typed as `bin`, skiff queues send)
/// and its subcommands'.
fn page(
    cmd: &clap::Command,
    name: &str,
    bin: &str,
    dir: &Path,
    written: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut roff = Vec::new();
    let shown = cmd
        .clone()
        .display_name(name.to_string())
        .bin_name(bin.to_string());
    clap_mangen::Man::new(shown)
        .title(name.to_uppercase())
        .render(&mut roff)?;
    let path = dir.join(format!("{name}.1"));
    let tmp = dir.join(format!(".{name}.1.tmp"));
    std::fs::write(&tmp, roff)?;
    std::fs::rename(&tmp, &path)?;
    written.push(path.display().to_string());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let sub_name = sub.get_name();
        page(
            sub,
            &format!("{name}-{sub_name}"),
            &format!("{bin} {sub_name}"),
            dir,
            written,
        )?;
    }
    Ok(())
}
