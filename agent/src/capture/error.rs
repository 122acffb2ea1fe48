use std::path::PathBuf;

/// Everything that can go wrong while capturing, each naming the step that failed and, where
/// there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{0}")]
    Environment(String),

    #[error("opening cgroup {path}: {source} (is it a directory under the cgroup v2 mount?)")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("preparing the bpffs pin directory {path}: {message}")]
    Bpffs { path: PathBuf, message: String },

    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),

    #[error(
        "eBPF program {0} is missing from the object (stale build? run `cargo xtask setup` and rebuild)"
    )]
    MissingProgram(&'static str),

    #[error("eBPF map {0} is missing from the object (stale build?)")]
    MissingMap(&'static str),

    #[error("loading program {program} into the kernel: {source}")]
    LoadProgram {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },

    #[error("attaching program {program} to cgroup {cgroup}: {source}")]
    Attach {
        program: &'static str,
        cgroup: PathBuf,
        #[source]
        source: aya::programs::ProgramError,
    },

    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}
