//! The end of a session (what it created without `keep` is deleted), its renewal (what it
//! owns expires --session-ttl later), and the sweep of sandboxes that dead sessions left to
//! expire.
use super::sandboxes::ts;
use crate::{
    mcp::{backend::Backend, session::Session},
    sandbox::local::{PodRecord, now_ms},
};

impl Backend {
    /// Ends the session: deletes what it created without `keep`. Returns what it deleted.
    pub async fn end_session(&self, session: &Session) -> Vec<String> {
        if let Backend::Cluster(c) = self {
            return self.cluster_end_session(c, session).await;
        }
        let mut done = Vec::new();
        let owned = session.snapshot();
        if let Ok((_, mini)) = self.mini() {
            for (name, keep) in &owned.sandboxes {
                if *keep {
                    continue;
                }
                if let Some(rec) = PodRecord::find(&mini.dir, name)
                    && self.remove_sandbox(&rec, session, false).await.is_ok()
                {
                    done.push(format!("sandbox {name}"));
                }
            }
        }
        let Backend::Local(local) = self else {
            return done;
        };
        let owned = session.snapshot();
        let gone: Vec<String> = owned
            .routes
            .iter()
            .filter(|(_, keep)| !**keep)
            .map(|(id, _)| id.clone())
            .collect();
        if !gone.is_empty() {
            let g = gone.clone();
            if local
                .edit(move |_, routes| {
                    routes.retain(|r| !g.contains(&r.id()));
                    Ok(())
                })
                .await
                .is_ok()
            {
                done.extend(gone.iter().map(|id| format!("route {id}")));
            }
        }
        done
    }

    /// Pushes the expiry of what the session owns (without `keep`) --session-ttl ahead, and
    /// removes the sandboxes other sessions left to expire.
    pub async fn renew_session(&self, session: &Session) {
        let local = match self {
            Backend::Local(local) => local,
            Backend::Cluster(c) => return self.cluster_renew_session(c, session).await,
        };
        let owned = session.snapshot();
        let expires = session.expiry(false);
        if let Some(mini) = &local.mini {
            for rec in PodRecord::all(&mini.dir) {
                let Some(sb) = &rec.sandbox else { continue };
                if sb.session == session.id && !sb.keep {
                    let mut r = rec.clone();
                    if let Some(s) = r.sandbox.as_mut() {
                        s.expires_unix_ms = expires;
                    }
                    let _ = r.write(&mini.dir);
                } else if sb.expires_unix_ms.is_some_and(|e| e < now_ms()) {
                    tracing::info!(sandbox = %rec.name, session = %sb.session, "removing an expired sandbox");
                    let _ = self.remove_sandbox(&rec, session, false).await;
                }
            }
        }
        let renew: Vec<String> = owned
            .routes
            .iter()
            .filter(|(id, keep)| !**keep && !owned.fixed_ttl.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        if !renew.is_empty() {
            let _ = local
                .edit(move |_, routes| {
                    for r in routes.iter_mut().filter(|r| renew.contains(&r.id())) {
                        r.spec.expires_at = ts(expires);
                    }
                    Ok(())
                })
                .await;
        }
    }
}
