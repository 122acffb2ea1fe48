//! sock_ops at `TCP_CONNECT_CB` (in the connecting task's context, with the local port bound):
//! - a redirected socket's (client address, client port) becomes the key the proxy will see on
//!   accept (`ORIG_DST`): only when the socket's cookie has a record and its remote end is the
//!   proxy (the proxy deletes the entry once it has read it);
//! - every connection opened in the captured cgroup is counted in `FLOWS`, by the destination
//!   the application dialled, for the service graph. The agent's own connections are not (the
//!   check is skipped when the agent's cgroup is outside the captured one: `FLAG_AGENT_UNCAPTURED`).
//!
//! Counting stays here rather than in connect4/6: the flow's source address is chosen by the
//! route lookup inside `connect()`, after connect4/6 run, and no helper open to them can tell it.
//!
//! The function is not named `sockops`: a symbol equal to its ELF section breaks bpf-linker.
use agent_common::{
    Endpoint, NetAddr,
    config::{FLAG_AGENT_UNCAPTURED, FLAG_SKIP_FLOWS, ProxyMapConfig},
    flows::{FlowCounters, FlowKey},
    stats,
};
use aya_ebpf::{
    bindings::BPF_SOCK_OPS_TCP_CONNECT_CB,
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_coarse_ns,
    },
    macros::sock_ops,
    programs::SockOpsContext,
};

use crate::maps::{FLOWS, ORIG_COOKIE, ORIG_DST, PROXY_CFG, count};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// sock_ops verdict: carry on.
const OK: u32 = 1;

#[sock_ops]
pub fn shunt_sock_ops(ctx: SockOpsContext) -> u32 {
    try_sock_ops(&ctx)
}

#[inline(always)]
fn try_sock_ops(ctx: &SockOpsContext) -> u32 {
    // The kernel runs this program for several operations of every connect (TIMEOUT_INIT,
    // RWND_INIT, NEEDS_ECN, TCP_CONNECT, ACTIVE_ESTABLISHED): all but one return here.
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return OK;
    }
    let Some(cfg) = PROXY_CFG.get(0) else {
        return OK;
    };
    // A copy, not a reference into the map value: field reads chosen by branch would become
    // pointer arithmetic on the map value, which the verifier refuses without CAP_PERFMON.
    let cfg = *cfg;
    let (local, remote) = match ctx.family() {
        AF_INET => (
            NetAddr::from_ip4_be(ctx.local_ip4()),
            NetAddr::from_ip4_be(ctx.remote_ip4()),
        ),
        AF_INET6 => (
            NetAddr::from_ip6_words(local_ip6(ctx)),
            NetAddr::from_ip6_words(remote_ip6(ctx)),
        ),
        _ => return OK,
    };
    // remote_port holds the network-order port in its upper 16 bits on little-endian.
    let remote = Endpoint::new(remote, (ctx.remote_port() >> 16) as u16);
    let mut dialled = remote;
    // A cookie record is trusted only for a connection that really goes to the proxy: a socket
    // whose redirected connect failed may connect again directly, and its record is then stale.
    // The address check comes first: it is free, the cookie and the map lookup are not, and most
    // connects are not redirected.
    if cfg.is_proxy(&remote)
        && let Some(orig) = unsafe { ORIG_COOKIE.get(&bpf_get_socket_cookie(ctx.ops.cast())) }
    {
        let orig = *orig;
        dialled = orig.dst;
        // local_port is in host order here (remote_port is not).
        let client = Endpoint::new(local, (ctx.local_port() as u16).to_be());
        if let Err(errno) = ORIG_DST.insert(&client, &orig, 0) {
            count(stats::ORIG_DST_INSERT_FAILED);
            aya_log_ebpf::warn!(
                ctx,
                "ORIG_DST insert failed ({}): the proxy will close it",
                errno
            );
        } else {
            count(stats::ORIG_DST_RECORDED);
        }
    }
    if cfg.flags & FLAG_SKIP_FLOWS == 0 {
        count_flow(&cfg, local, dialled);
    }
    OK
}

#[inline(always)]
fn count_flow(cfg: &ProxyMapConfig, src: NetAddr, dst: Endpoint) {
    if cfg.flags & FLAG_AGENT_UNCAPTURED == 0
        && cfg.agent_cgroup_id != 0
        && unsafe { bpf_get_current_cgroup_id() } == cfg.agent_cgroup_id
    {
        return;
    }
    let key = FlowKey {
        src,
        dst: dst.addr,
        dst_port_be: dst.port_be,
        _pad: 0,
    };
    // The coarse clock (one tick's resolution) is enough for "last seen" and costs no clock
    // source read.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    match FLOWS.get_ptr_mut(&key) {
        // SAFETY: a per-CPU value, so no other CPU writes it concurrently.
        Some(c) => unsafe {
            (*c).connections += 1;
            (*c).last_seen_ns = now;
        },
        None => {
            let _ = FLOWS.insert(
                &key,
                &FlowCounters {
                    connections: 1,
                    last_seen_ns: now,
                },
                0,
            );
        }
    }
}

/// Reads `remote_ip6` word by word (see [`local_ip6`]).
#[inline(always)]
fn remote_ip6(ctx: &SockOpsContext) -> [u32; 4] {
    let ops = ctx.ops;
    // SAFETY: ops is the program's context; the fields are 4-byte aligned u32s.
    unsafe {
        [
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).remote_ip6[0])),
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).remote_ip6[1])),
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).remote_ip6[2])),
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).remote_ip6[3])),
        ]
    }
}

/// Reads `local_ip6` word by word: copying the array goes through a derived context pointer,
/// which the verifier rejects; each load must be a fixed offset from the context.
#[inline(always)]
fn local_ip6(ctx: &SockOpsContext) -> [u32; 4] {
    let ops = ctx.ops;
    // SAFETY: ops is the program's context; the fields are 4-byte aligned u32s.
    unsafe {
        [
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_ip6[0])),
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_ip6[1])),
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_ip6[2])),
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_ip6[3])),
        ]
    }
}
