//! A test cgroup under the cgroup v2 mount. The test runner itself never joins it (cgroup v2 moves
//! whole processes): children join it before they exec. Dropping it kills what is inside and
//! removes it.
use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn create(id: &str) -> anyhow::Result<Self> {
        let mount = agent::capture::cgroup2_mount()?;
        let path = mount.join(format!("shunt-test-{id}"));
        fs::create_dir(&path)?;
        Ok(Self { path })
    }

    /// A child cgroup (removed with its parent).
    pub fn child(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.path.join(name);
        fs::create_dir(&p)?;
        Ok(p)
    }

    /// A descendant at `rel` (several levels: `kubepods.slice/kubepods-pod1.slice`), created
    /// with its parents (removed with this cgroup).
    pub fn descendant(&self, rel: &str) -> anyhow::Result<PathBuf> {
        let p = self.path.join(rel);
        fs::create_dir_all(&p)?;
        Ok(p)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn kill_and_remove(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                kill_and_remove(&e.path());
            }
        }
    }
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("warning: could not remove cgroup {}", dir.display());
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        kill_and_remove(&self.path);
    }
}
