use std::path::PathBuf;

/// Everything that can go wrong while capturing, each naming the step that failed and, where
/// there is one, the fix. The cause is the error's source, printed once by an error-chain
/// renderer (`{:#}` at the command line), never repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{0}")]
    Environment(String),

    #[error("opening cgroup {path} (is it a directory under the cgroup v2 mount?)")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("preparing the bpffs pin directory {path}: {message}")]
    Bpffs { path: PathBuf, message: String },

    #[error("{action}: {}", path.display())]
    PinFile {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),

    #[error(
        "eBPF program {0} is missing from the object (stale build? run `cargo xtask setup` and rebuild)"
    )]
    MissingProgram(&'static str),

    #[error("eBPF map {0} is missing from the object (stale build?)")]
    MissingMap(&'static str),

    #[error("loading program {program} into the kernel")]
    LoadProgram {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },

    #[error("attaching program {program} to cgroup {}", cgroup.display())]
    Attach {
        program: &'static str,
        cgroup: PathBuf,
        #[source]
        source: aya::programs::ProgramError,
    },

    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}
