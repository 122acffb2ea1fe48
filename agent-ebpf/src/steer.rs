//! The decision shared by connect4 and connect6: is this destination steered and is the caller
//! exempt; and, once the caller has a proxy for the family, remembering the original destination
//! by socket cookie.
use agent_common::{Endpoint, config::ProxyMapConfig, orig::OrigDst, stats};
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    programs::SockAddrContext,
};

use crate::{
    maps::{ORIG_COOKIE, PROXY_CFG, STEERED, count},
    marked::marked_source,
};

/// Allow the syscall to proceed (with or without a rewrite): cgroup sock_addr verdict.
pub const ALLOW: i32 = 1;

const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;

/// What to do with one `connect()`.
pub enum Verdict {
    /// Leave it alone.
    Direct,
    /// A steered destination, or any destination of a marked source, from a caller that is not
    /// exempt: redirect it to the proxy described by `cfg`, if there is one for the connect's
    /// family. `service_id` is 0 for a destination that is not steered; `source` is the marked
    /// cgroup's id, or 0.
    Redirect {
        cfg: ProxyMapConfig,
        service_id: u32,
        source: u64,
    },
}

/// Decide for a connect to `dst`. Writes nothing: the original destination is recorded by
/// [`remember`] only once the caller knows it has a proxy for the family and will redirect.
#[inline(always)]
pub fn decide(ctx: &SockAddrContext, dst: Endpoint) -> Verdict {
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    // connect4/6 also run for UDP connect(); only TCP is steered.
    if sa.type_ != SOCK_STREAM || sa.protocol != IPPROTO_TCP {
        return Verdict::Direct;
    }
    let Some(cfg) = PROXY_CFG.get(0) else {
        return Verdict::Direct;
    };
    let cfg = *cfg;
    let source = marked_source(cfg.marked_levels, &dst);
    let service_id = match unsafe { STEERED.get(&dst) } {
        Some(service) => service.service_id,
        None if source != 0 => 0,
        None => return Verdict::Direct,
    };
    if cfg.agent_cgroup_id != 0 && unsafe { bpf_get_current_cgroup_id() } == cfg.agent_cgroup_id {
        count(stats::EXEMPT_AGENT_CGROUP);
        return Verdict::Direct;
    }
    if cfg.flags & agent_common::config::FLAG_EXEMPT_MARK != 0 {
        let sk = unsafe { sa.__bindgen_anon_1.sk };
        if !sk.is_null() && unsafe { (*sk).mark } == cfg.agent_mark {
            count(stats::EXEMPT_AGENT_MARK);
            return Verdict::Direct;
        }
    }
    Verdict::Redirect {
        cfg,
        service_id,
        source,
    }
}

/// Records the original destination of a connect about to be redirected, by socket cookie.
/// Returns false when the record cannot be written: the caller then leaves the connect direct,
/// since a redirect without it could never be resolved.
#[inline(always)]
pub fn remember(ctx: &SockAddrContext, dst: Endpoint, service_id: u32, source: u64) -> bool {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let orig = OrigDst {
        dst,
        service_id,
        source_cgroup_id: source,
    };
    if source != 0 {
        count(stats::MARKED_SOURCE);
    }
    if let Err(errno) = ORIG_COOKIE.insert(&cookie, &orig, 0) {
        count(stats::ORIG_COOKIE_INSERT_FAILED);
        aya_log_ebpf::warn!(
            ctx,
            "ORIG_COOKIE insert failed ({}): connection left direct",
            errno
        );
        return false;
    }
    true
}

/// Writes an IPv6 destination into the context word by word. A plain array assignment compiles to
/// a memcpy through a derived pointer, which the verifier rejects ("dereference of modified ctx
/// ptr"); each store must be a fixed offset from the context.
#[inline(always)]
pub fn set_user_ip6(sa: *mut bpf_sock_addr, words: [u32; 4]) {
    // SAFETY: sa is the program's context; the fields are 4-byte aligned u32s.
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*sa).user_ip6[0]), words[0]);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*sa).user_ip6[1]), words[1]);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*sa).user_ip6[2]), words[2]);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*sa).user_ip6[3]), words[3]);
    }
}
