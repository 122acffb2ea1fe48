//! The pinned maps across restarts with other flags and across map-ABI versions.
//!
//! - **Capacity.** A map's `max_entries` is fixed when the kernel creates it, and a pin keeps the
//!   map alive, so a restart with another `--*-max-entries` meets the old size. The loader would
//!   refuse the pin (an incompatible map) and every node would crash-loop until someone deleted
//!   the pins by hand. Instead the new map is created at a staging pin, the entries worth keeping
//!   are copied into it, and it is renamed over the old pin (rename(2) on bpffs replaces the
//!   target atomically). The programs are loaded against the new map, so they never see the old.
//! - **Versions.** Map names carry their ABI version (`STEERED_V1`). Once the agent runs on the
//!   current version's pins, the pins of any other version of the same map are removed: nothing
//!   reads them, and a pin keeps a map's memory alive forever.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use agent_common::{
    Endpoint,
    flows::{self, FlowCounters, FlowKey},
    marked::{self, MarkedKey},
    steered::{self, SteeredService},
};
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, MapError, PerCpuHashMap},
};

use super::CaptureError;

/// A pinned map whose capacity differs from what this run asks for.
pub(super) struct Resize {
    name: &'static str,
    old: MapData,
    old_max_entries: u32,
    new_max_entries: u32,
    staging: PathBuf,
    pin: PathBuf,
}

impl Resize {
    /// Where the loader must create (and pin) the new map.
    pub(super) fn staging_pin(&self) -> (&'static str, &Path) {
        (self.name, &self.staging)
    }
}

/// The pin a resized map is created at before it replaces the old one; never a versioned name
/// (and no dot: bpffs refuses names with one).
fn staging_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}_resizing"))
}

/// For each `(map, max_entries)` wanted, the pinned map under `dir` whose capacity differs.
/// Leftover staging pins (an agent that died mid-resize) are removed first.
pub(super) fn plan_resizes(
    dir: &Path,
    wanted: &[(&'static str, u32)],
) -> Result<Vec<Resize>, CaptureError> {
    let mut out = Vec::new();
    for &(name, new_max_entries) in wanted {
        let staging = staging_path(dir, name);
        remove_if_present(&staging)?;
        let pin = dir.join(name);
        if !pin.exists() {
            continue;
        }
        let map_err = |source| CaptureError::Map { map: name, source };
        let old = MapData::from_pin(&pin).map_err(map_err)?;
        let old_max_entries = old.info().map_err(map_err)?.max_entries();
        if old_max_entries != new_max_entries {
            out.push(Resize {
                name,
                old,
                old_max_entries,
                new_max_entries,
                staging,
                pin,
            });
        }
    }
    Ok(out)
}

/// Carries the entries worth keeping from each old map into the new one the loader created at
/// the staging pin, then puts the new map at the real pin.
///
/// What is carried, and why:
/// - `STEERED`: every entry. These are the routes; with them the new programs steer from the
///   moment they attach, before route sync's first reconcile.
/// - `FLOWS`: every entry (the service graph's history); the LRU ages them out as before.
/// - `ORIG_COOKIE`, `ORIG_DST`: dropped. They describe connections to the previous agent's proxy,
///   whose listener closed with it, so no proxy will ever read them; carried, they could only
///   answer for a reused client (address, port) with someone else's destination.
///
/// A carry that fails entry by entry (a smaller map that is full) is logged, not fatal: route sync
/// reconciles `STEERED` against the route table right after.
pub(super) fn finish_resizes(ebpf: &mut Ebpf, resizes: Vec<Resize>) -> Result<(), CaptureError> {
    for r in resizes {
        let new = ebpf
            .map_mut(r.name)
            .ok_or(CaptureError::MissingMap(r.name))?;
        let old = Map::from_map_data(r.old).map_err(|source| CaptureError::Map {
            map: r.name,
            source,
        })?;
        let (carried, failed) = match r.name {
            steered::MAP_NAME => carry_hash::<Endpoint, SteeredService>(old, new),
            flows::MAP_NAME => carry_per_cpu_hash::<FlowKey, FlowCounters>(old, new),
            // Marked sources keep their keys (the levels are kept in PROXY_CFG) until route sync
            // reconciles them.
            marked::MAP_NAME => carry_hash::<u64, MarkedKey>(old, new),
            // ORIG_COOKIE and ORIG_DST start empty (see above).
            _ => Ok((0, 0)),
        }
        .map_err(|source| CaptureError::Map {
            map: r.name,
            source,
        })?;
        fs::rename(&r.staging, &r.pin).map_err(|source| CaptureError::PinFile {
            path: r.pin.clone(),
            action: "replacing the pinned map with its resized copy",
            source,
        })?;
        if failed > 0 {
            tracing::warn!(
                map = r.name,
                from = r.old_max_entries,
                to = r.new_max_entries,
                carried,
                failed,
                "pinned map resized; some entries did not fit"
            );
        } else {
            tracing::info!(
                map = r.name,
                from = r.old_max_entries,
                to = r.new_max_entries,
                carried,
                "pinned map resized"
            );
        }
    }
    Ok(())
}

fn carry_hash<K: aya::Pod, V: aya::Pod>(
    old: Map,
    new: &mut Map,
) -> Result<(usize, usize), MapError> {
    let old: HashMap<MapData, K, V> = HashMap::try_from(old)?;
    let mut new: HashMap<&mut MapData, K, V> = HashMap::try_from(new)?;
    let (mut carried, mut failed) = (0, 0);
    for (k, v) in old.iter().filter_map(Result::ok) {
        match new.insert(&k, &v, 0) {
            Ok(()) => carried += 1,
            Err(_) => failed += 1,
        }
    }
    Ok((carried, failed))
}

fn carry_per_cpu_hash<K: aya::Pod, V: aya::Pod>(
    old: Map,
    new: &mut Map,
) -> Result<(usize, usize), MapError> {
    let old: PerCpuHashMap<MapData, K, V> = PerCpuHashMap::try_from(old)?;
    let mut new: PerCpuHashMap<&mut MapData, K, V> = PerCpuHashMap::try_from(new)?;
    let (mut carried, mut failed) = (0, 0);
    for (k, v) in old.iter().filter_map(Result::ok) {
        match new.insert(&k, v, 0) {
            Ok(()) => carried += 1,
            Err(_) => failed += 1,
        }
    }
    Ok((carried, failed))
}

/// `(base, version)` of a versioned map name: `STEERED_V1` → `("STEERED", "V1")`. The version is
/// `V` (or `v`) and digits after the last `_`.
fn split_version(name: &str) -> Option<(&str, &str)> {
    let (base, version) = name.rsplit_once('_')?;
    let digits = version.strip_prefix(['V', 'v'])?;
    (!base.is_empty() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then_some((base, version))
}

/// Removes the pins under `dir` that are another version of one of `current` (same base name,
/// another version suffix). Call once the current pins are in use. Returns what it removed;
/// a pin it cannot remove is logged and left.
pub(super) fn remove_other_versions(dir: &Path, current: &[&str]) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some((base, _)) = split_version(&name) else {
            continue;
        };
        let stale = current
            .iter()
            .any(|c| *c != name && split_version(c).is_some_and(|(b, _)| b == base));
        if !stale {
            continue;
        }
        match fs::remove_file(e.path()) {
            Ok(()) => {
                tracing::info!(pin = %e.path().display(), "removed the pin of another map version");
                removed.push(e.path());
            }
            Err(err) => {
                tracing::warn!(pin = %e.path().display(), error = %err, "could not remove the pin of another map version")
            }
        }
    }
    removed
}

fn remove_if_present(path: &Path) -> Result<(), CaptureError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CaptureError::PinFile {
            path: path.to_path_buf(),
            action: "removing a leftover staging pin",
            source,
        }),
    }
}

#[cfg(test)]
#[path = "pins_tests.rs"]
mod tests;
