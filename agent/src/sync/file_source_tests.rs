//! Tests of the routes-file source: change detection and publishing.
use std::sync::atomic::AtomicUsize;

use super::*;

/// A unique temporary file path, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(content: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "shunt-routes-{}-{}.yaml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let f = TempFile(p);
        f.write(content);
        f
    }

    fn write(&self, content: &str) {
        // Write-and-rename, as editors and ConfigMap updates do, so a poll never sees half a file.
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, content).expect("write");
        std::fs::rename(&tmp, &self.0).expect("rename");
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const GOOD: &str = "routes:\n  - { name: r, spec: { routingKey: k1 } }\n";
const GOOD2: &str = "routes:\n  - { name: r, spec: { routingKey: k2 } }\n";
const BAD: &str = "routes:\n  - { name: r, spec: { routingKey: \"k 1\" } }\n";

#[test]
fn poller_reports_each_version_once() {
    let f = TempFile::new(GOOD);
    let mut p = Poller::new(f.0.clone());
    assert!(matches!(p.poll(), Poll::Changed(_)));
    assert!(matches!(p.poll(), Poll::Unchanged));
    // Same length, written within the mtime granularity: still seen.
    f.write(GOOD2);
    assert!(matches!(p.poll(), Poll::Changed(s) if s.routes[0].spec.routing_key == "k2"));
    f.write(BAD);
    assert!(matches!(p.poll(), Poll::Rejected(_)));
    assert!(matches!(p.poll(), Poll::Unchanged));
}

#[test]
fn missing_file_is_reported_once_and_recovers() {
    let f = TempFile::new(GOOD);
    let mut p = Poller::new(f.0.clone());
    assert!(matches!(p.poll(), Poll::Changed(_)));
    std::fs::remove_file(&f.0).expect("rm");
    assert!(matches!(p.poll(), Poll::Unreadable(_)));
    assert!(matches!(p.poll(), Poll::Unchanged));
    f.write(GOOD);
    assert!(matches!(p.poll(), Poll::Restored));
    assert!(matches!(p.poll(), Poll::Unchanged));
}

async fn next_state(rx: &mut watch::Receiver<Arc<ClusterState>>) -> Arc<ClusterState> {
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("a new state in time")
        .expect("watcher alive");
    rx.borrow_and_update().clone()
}

#[tokio::test]
async fn watcher_publishes_valid_edits() {
    let f = TempFile::new(GOOD);
    let mut w = RoutesFileWatcher::new(&f.0, Duration::from_millis(10))
        .spawn()
        .expect("spawn");
    assert_eq!(
        w.states.borrow_and_update().routes[0].spec.routing_key,
        "k1"
    );
    f.write(GOOD2);
    assert_eq!(
        next_state(&mut w.states).await.routes[0].spec.routing_key,
        "k2"
    );
    assert_eq!(w.stats.reloads(), 2);
    assert_eq!(w.stats.rejected(), 0);
    w.task.abort();
}

#[tokio::test]
async fn bad_edit_keeps_last_good_and_is_counted() {
    let f = TempFile::new(GOOD);
    let mut w = RoutesFileWatcher::new(&f.0, Duration::from_millis(10))
        .spawn()
        .expect("spawn");
    f.write(BAD);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while w.stats.rejected() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bad edit not noticed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Several more polls of the same bad file count once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(w.stats.rejected(), 1);
    let e = w.stats.last_error().expect("error kept");
    assert!(e.contains(":2:36: routes[0].spec.routingKey:"), "{e}");
    assert!(!w.states.has_changed().expect("alive"));
    assert_eq!(w.states.borrow().routes[0].spec.routing_key, "k1");
    // Fixing the file publishes it and clears the error.
    f.write(GOOD2);
    assert_eq!(
        next_state(&mut w.states).await.routes[0].spec.routing_key,
        "k2"
    );
    assert_eq!(w.stats.last_error(), None);
    w.task.abort();
}

#[tokio::test]
async fn watcher_refuses_a_bad_initial_file() {
    let f = TempFile::new(BAD);
    let e = RoutesFileWatcher::new(&f.0, Duration::from_millis(10))
        .spawn()
        .expect_err("bad file");
    assert!(matches!(e, RoutesFileError::Invalid { .. }));
    let missing = RoutesFileWatcher::new(f.0.with_extension("nope"), Duration::from_millis(10))
        .spawn()
        .expect_err("missing");
    assert!(matches!(missing, RoutesFileError::Read { .. }));
}

#[tokio::test]
async fn watcher_stops_when_receivers_are_dropped() {
    let f = TempFile::new(GOOD);
    let w = RoutesFileWatcher::new(&f.0, Duration::from_millis(10))
        .spawn()
        .expect("spawn");
    drop(w.states);
    tokio::time::timeout(Duration::from_secs(5), w.task)
        .await
        .expect("task ends")
        .expect("no panic");
}
