//! Loads the capture programs, attaches them to a cgroup v2 directory and exposes the maps as
//! typed functions. This is the only module that touches aya.
//!
//! Programs are attached with links owned by [`Capture`]: dropping it (or the agent dying)
//! releases them, and new connections go direct to their destination again (fail open). Maps are
//! pinned under the bpffs directory so a restarted agent resumes its state.
mod env;
mod error;
mod maps;
mod pins;
mod pod_cgroup;
mod pods_cgroup;

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use agent_common::{config, flows, marked, orig, programs, stats, steered};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{CgroupAttachMode, CgroupSockAddr, SockOps},
};

pub mod run_stats;

/// Why a map write failed (what [`SteeredMap`] returns).
pub use aya::maps::MapError;
pub use env::{cgroup_id, cgroup_level, cgroup2_mount, mount_bpffs, own_cgroup_dir};
pub use error::CaptureError;
pub use maps::{CaptureStats, Flow, FlowsMap, MarkedMap, OrigDstMap, SteeredMap};
pub use pod_cgroup::{KubeletPodCgroups, PodCgroups};
pub use pods_cgroup::{CgroupSelector, find_pods_cgroup, resolve as resolve_cgroup};

/// The eBPF object built by `agent/build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shunt-capture"));

const SOCK_ADDR_PROGRAMS: [&str; 4] = programs::SOCK_ADDR;
const SOCK_OPS_PROGRAM: &str = programs::SOCK_OPS;

/// The embedded eBPF object, for checks that read it (map and program names).
pub fn ebpf_object() -> &'static [u8] {
    EBPF_OBJECT
}

/// How to capture.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// The cgroup v2 directory whose processes are captured.
    pub cgroup: PathBuf,
    /// Where maps are pinned.
    pub bpffs_dir: PathBuf,
    /// Mount bpffs at `bpffs_dir` when it is not one already (local mode only).
    pub mount_bpffs: bool,
    pub proxy4: Option<SocketAddr>,
    pub proxy6: Option<SocketAddr>,
    /// The agent's own cgroup v2 directory; its connects are never rewritten.
    pub agent_cgroup: PathBuf,
    /// Also exempt sockets with this SO_MARK.
    pub agent_mark: Option<u32>,
    pub steered_max_entries: u32,
    pub orig_max_entries: u32,
    pub flows_max_entries: u32,
    pub marked_max_entries: u32,
    /// Count connections in `FLOWS` for the service graph.
    pub count_flows: bool,
}

/// Loaded and attached capture programs. Dropping it detaches them.
pub struct Capture {
    // Owns the programs and their links; kept alive for as long as capture is wanted.
    _ebpf: Ebpf,
    logger: Option<EbpfLogger>,
    steered: SteeredMap,
    orig_dst: OrigDstMap,
    stats: CaptureStats,
    flows: FlowsMap,
    marked: MarkedMap,
}

impl Capture {
    /// Checks the environment, loads the object (reusing pinned maps), writes the proxy config and
    /// attaches every program to `cfg.cgroup`.
    pub fn attach(cfg: &CaptureConfig) -> Result<Self, CaptureError> {
        env::check_capabilities()?;
        env::check_btf()?;
        env::cgroup2_mount()?;
        env::check_cgroup2_dir(&cfg.cgroup)?;
        env::ensure_bpffs(&cfg.bpffs_dir, cfg.mount_bpffs)?;

        let capacities = [
            (steered::MAP_NAME, cfg.steered_max_entries),
            (orig::COOKIE_MAP_NAME, cfg.orig_max_entries),
            (orig::DST_MAP_NAME, cfg.orig_max_entries),
            (flows::MAP_NAME, cfg.flows_max_entries),
            (marked::MAP_NAME, cfg.marked_max_entries),
        ];
        // Pinned maps of another size are recreated at a staging pin, filled, then swapped in.
        let resizes = pins::plan_resizes(&cfg.bpffs_dir, &capacities)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&cfg.bpffs_dir);
        for (name, max_entries) in capacities {
            loader.map_max_entries(name, max_entries);
        }
        for r in &resizes {
            let (name, staging) = r.staging_pin();
            loader.map_pin_path(name, staging);
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(CaptureError::Load)?;
        // Before any program is loaded: they are loaded against these maps, at the real pins.
        pins::finish_resizes(&mut ebpf, resizes)?;

        // Failure paths in the programs log through aya-log; losing those lines is not fatal.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "eBPF log forwarding unavailable");
                None
            }
        };

        let mut proxy_cfg: Array<MapData, config::ProxyMapConfig> =
            take_map(&mut ebpf, config::MAP_NAME)?;
        let mut new_cfg = proxy_config(cfg)?;
        // A restarted agent keeps the levels its predecessor marked (its `MARKED` entries are
        // pinned too) until route sync reconciles both.
        new_cfg.marked_levels = proxy_cfg.get(&0, 0).map_or(0, |c| c.marked_levels);
        proxy_cfg
            .set(0, &new_cfg, 0)
            .map_err(|source| CaptureError::Map {
                map: config::MAP_NAME,
                source,
            })?;

        let steered: HashMap<MapData, _, _> = take_map(&mut ebpf, steered::MAP_NAME)?;
        let orig_dst: HashMap<MapData, _, _> = take_map(&mut ebpf, orig::DST_MAP_NAME)?;
        let stats: PerCpuArray<MapData, u64> = take_map(&mut ebpf, stats::MAP_NAME)?;
        let flows: PerCpuHashMap<MapData, _, _> = take_map(&mut ebpf, flows::MAP_NAME)?;
        let marked_map: HashMap<MapData, _, _> = take_map(&mut ebpf, marked::MAP_NAME)?;

        // With bpf_link (kernel >= 5.7) a cgroup attachment is always multi-attach: the kernel
        // rejects explicit flags, so `Single` (no flags) is what coexists with a CNI's own hooks.
        let mode = CgroupAttachMode::Single;
        let cgroup = File::open(&cfg.cgroup).map_err(|source| CaptureError::OpenCgroup {
            path: cfg.cgroup.clone(),
            source,
        })?;
        for name in SOCK_ADDR_PROGRAMS {
            let program: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            program.load().map_err(|source| CaptureError::LoadProgram {
                program: name,
                source,
            })?;
            program
                .attach(&cgroup, mode)
                .map_err(|source| attach_err(name, &cfg.cgroup, source))?;
        }
        let sock_ops: &mut SockOps = program(&mut ebpf, SOCK_OPS_PROGRAM)?;
        sock_ops
            .load()
            .map_err(|source| CaptureError::LoadProgram {
                program: SOCK_OPS_PROGRAM,
                source,
            })?;
        sock_ops
            .attach(&cgroup, mode)
            .map_err(|source| attach_err(SOCK_OPS_PROGRAM, &cfg.cgroup, source))?;
        // The current version's pins are in use: an older (or newer) agent's are dead weight.
        pins::remove_other_versions(&cfg.bpffs_dir, &agent_common::MAP_NAMES);

        Ok(Self {
            _ebpf: ebpf,
            logger,
            steered: SteeredMap::new(steered),
            orig_dst: OrigDstMap::new(orig_dst),
            stats: CaptureStats::new(stats),
            flows: FlowsMap::new(flows),
            marked: MarkedMap::new(marked_map, proxy_cfg),
        })
    }

    /// Splits into the map handles the rest of the agent uses, and a guard that keeps the programs
    /// attached until it is dropped.
    pub fn into_parts(self) -> CaptureParts {
        CaptureParts {
            guard: AttachGuard {
                _ebpf: self._ebpf,
                logger: self.logger,
            },
            steered: self.steered,
            orig_dst: self.orig_dst,
            stats: self.stats,
            flows: self.flows,
            marked: self.marked,
        }
    }
}

/// What [`Capture::into_parts`] hands out.
pub struct CaptureParts {
    pub guard: AttachGuard,
    pub steered: SteeredMap,
    pub orig_dst: OrigDstMap,
    pub stats: CaptureStats,
    pub flows: FlowsMap,
    pub marked: MarkedMap,
}

/// One pinned map under `dir`, typed.
fn open<T>(dir: &Path, name: &'static str) -> Result<T, CaptureError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = MapData::from_pin(dir.join(name))
        .and_then(aya::maps::Map::from_map_data)
        .map_err(|source| CaptureError::Map { map: name, source })?;
    T::try_from(map).map_err(|source| CaptureError::Map { map: name, source })
}

/// Opens the pinned maps under `bpffs_dir` without loading or attaching anything: for inspecting
/// a running (or crashed) agent's state, as the tests and the CLI do.
pub fn open_pinned(bpffs_dir: &Path) -> Result<(SteeredMap, OrigDstMap), CaptureError> {
    Ok((
        SteeredMap::new(open(bpffs_dir, steered::MAP_NAME)?),
        OrigDstMap::new(open(bpffs_dir, orig::DST_MAP_NAME)?),
    ))
}

/// Opens the pinned `MARKED` map (and the proxy config's levels) under `bpffs_dir`, for
/// inspection like [`open_pinned`].
pub fn open_pinned_marked(bpffs_dir: &Path) -> Result<MarkedMap, CaptureError> {
    Ok(MarkedMap::new(
        open(bpffs_dir, marked::MAP_NAME)?,
        open(bpffs_dir, config::MAP_NAME)?,
    ))
}

type EbpfLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Keeps the capture programs attached; dropping it detaches them.
pub struct AttachGuard {
    _ebpf: Ebpf,
    logger: Option<EbpfLogger>,
}

impl AttachGuard {
    /// Forwards the programs' log lines to tracing until the runtime stops. Needs a tokio runtime.
    pub fn forward_logs(&mut self) {
        let Some(logger) = self.logger.take() else {
            return;
        };
        // SAFETY: the logger owns its ring buffer fd; flushing neither closes nor replaces it.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        };
        match fd {
            Ok(mut fd) => {
                tokio::spawn(async move {
                    while let Ok(mut guard) = fd.readable_mut().await {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "eBPF log forwarding unavailable"),
        }
    }
}

fn attach_err(
    program: &'static str,
    cgroup: &Path,
    source: aya::programs::ProgramError,
) -> CaptureError {
    CaptureError::Attach {
        program,
        cgroup: cgroup.to_path_buf(),
        source,
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, CaptureError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(CaptureError::MissingMap(name))?;
    T::try_from(map).map_err(|source| CaptureError::Map { map: name, source })
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, CaptureError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or(CaptureError::MissingProgram(name))?;
    p.try_into().map_err(|source| CaptureError::LoadProgram {
        program: name,
        source,
    })
}

fn proxy_config(cfg: &CaptureConfig) -> Result<config::ProxyMapConfig, CaptureError> {
    let mut out = config::ProxyMapConfig {
        agent_cgroup_id: env::cgroup_id(&cfg.agent_cgroup)?,
        ..Default::default()
    };
    if let Some(SocketAddr::V4(p4)) = cfg.proxy4 {
        out.proxy4 = u32::from_ne_bytes(p4.ip().octets());
        out.proxy4_port_be = p4.port().to_be();
        out.flags |= config::FLAG_PROXY4;
    } else if let Some(other) = cfg.proxy4 {
        return Err(CaptureError::Environment(format!(
            "--proxy-addr {other}: must be an IPv4 address (use --proxy-addr6 for IPv6)"
        )));
    }
    if let Some(SocketAddr::V6(p6)) = cfg.proxy6 {
        out.proxy6 = agent_common::NetAddr::from_octets(p6.ip().octets()).words;
        out.proxy6_port_be = p6.port().to_be();
        out.flags |= config::FLAG_PROXY6;
    } else if let Some(other) = cfg.proxy6 {
        return Err(CaptureError::Environment(format!(
            "--proxy-addr6 {other}: must be an IPv6 address"
        )));
    }
    if let Some(mark) = cfg.agent_mark {
        out.agent_mark = mark;
        out.flags |= config::FLAG_EXEMPT_MARK;
    }
    if !cfg.count_flows {
        out.flags |= config::FLAG_SKIP_FLOWS;
    } else if !agent_is_captured(cfg, out.agent_cgroup_id) {
        out.flags |= config::FLAG_AGENT_UNCAPTURED;
    }
    Ok(out)
}

/// Whether the agent's own sockets reach the capture programs: its cgroup is the captured one or
/// below it. When that cannot be told, it is taken to be captured (the exemption check stays).
fn agent_is_captured(cfg: &CaptureConfig, agent_cgroup_id: u64) -> bool {
    env::cgroup_subtree_contains(&cfg.cgroup, agent_cgroup_id).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "cannot tell whether the agent is captured; assuming it is");
        true
    })
}
