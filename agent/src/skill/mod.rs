//! `shunt skill install [--dir D]`: writes the `shunt-validate` agent skill (the agent-skills
//! format: `SKILL.md` with YAML front matter `name` and `description`), which teaches a coding
//! agent the validation loop with Shunt's MCP tools.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};

/// The skill's text.
pub const SKILL_MD: &str = include_str!("SKILL.md");
/// Its directory name (also its `name`).
pub const SKILL_NAME: &str = "shunt-validate";

#[derive(Debug, Clone, Args)]
pub struct SkillArgs {
    #[command(subcommand)]
    pub command: SkillCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SkillCommand {
    /// Write shunt-validate/SKILL.md into the agent's skills directory.
    Install(InstallArgs),
}

#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// The skills directory. Default: `.claude/skills/` of the current repository (the
    /// nearest directory up from here with a `.git`), else of the current directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The nearest directory at or above `from` holding a `.git`.
fn repo_root(from: &Path) -> Option<PathBuf> {
    from.ancestors()
        .find(|d| d.join(".git").exists())
        .map(Path::to_path_buf)
}

/// Writes the skill under `dir` (or the default) and returns the file written.
pub fn install(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => {
            let cwd = std::env::current_dir().context("the current directory")?;
            repo_root(&cwd).unwrap_or(cwd).join(".claude/skills")
        }
    };
    let skill_dir = dir.join(SKILL_NAME);
    std::fs::create_dir_all(&skill_dir)
        .with_context(|| format!("creating {}", skill_dir.display()))?;
    let file = skill_dir.join("SKILL.md");
    std::fs::write(&file, SKILL_MD).with_context(|| format!("writing {}", file.display()))?;
    Ok(file)
}

pub fn run(args: SkillArgs) -> anyhow::Result<()> {
    match args.command {
        SkillCommand::Install(a) => {
            let file = install(a.dir.as_deref())?;
            println!("wrote {}", file.display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_has_the_name_and_a_description() {
        let rest = SKILL_MD.strip_prefix("---\n").expect("front matter");
        let (yaml, _) = rest.split_once("\n---\n").expect("end of front matter");
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Front {
            name: String,
            description: String,
        }
        let f: Front = serde_saphyr::from_str(yaml).expect("YAML");
        assert_eq!(f.name, SKILL_NAME);
        assert!(f.description.len() > 40 && f.description.len() <= 1024);
    }

    #[test]
    fn installs_under_the_given_dir() {
        let dir = std::env::temp_dir().join(format!("shunt-skill-{}", std::process::id()));
        let file = install(Some(&dir)).expect("install");
        assert_eq!(file, dir.join("shunt-validate/SKILL.md"));
        assert_eq!(std::fs::read_to_string(&file).expect("read"), SKILL_MD);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
