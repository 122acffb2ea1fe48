//! cgroup/connect6: redirect IPv6 connects. A v4-mapped destination (`::ffff:a.b.c.d`, used by
//! dual-stack clients to dial IPv4) is looked up like IPv4 and sent to the v4-mapped IPv4 proxy;
//! connect6 cannot change the address family, so a native IPv6 destination needs the IPv6 proxy.
use agent_common::{
    Endpoint, NetAddr,
    config::{FLAG_PROXY4, FLAG_PROXY6},
    stats,
};
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{
    maps::count,
    steer::{ALLOW, Verdict, decide, remember, set_user_ip6},
};

#[cgroup_sock_addr(connect6)]
pub fn shunt_connect6(ctx: SockAddrContext) -> i32 {
    try_connect6(&ctx)
}

#[inline(always)]
fn try_connect6(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let addr = NetAddr::from_ip6_words(sa.user_ip6);
    let dst = Endpoint::new(addr, sa.user_port as u16);
    let Verdict::Redirect {
        cfg,
        service_id,
        source,
    } = decide(ctx, dst)
    else {
        return ALLOW;
    };
    // The proxy for this destination's family, if there is one. Nothing is recorded without it:
    // the connect goes direct, and a record would only fill the LRU maps with entries no proxy
    // ever reads.
    let (proxy_words, proxy_port_be) = if addr.is_v4_mapped() && cfg.flags & FLAG_PROXY4 != 0 {
        (NetAddr::from_ip4_be(cfg.proxy4).words, cfg.proxy4_port_be)
    } else if !addr.is_v4_mapped() && cfg.flags & FLAG_PROXY6 != 0 {
        (cfg.proxy6, cfg.proxy6_port_be)
    } else {
        count(stats::NO_PROXY_FOR_FAMILY);
        return ALLOW;
    };
    if remember(ctx, dst, service_id, source) {
        set_user_ip6(sa, proxy_words);
        sa.user_port = u32::from(proxy_port_be);
        count(stats::STEERED);
    }
    ALLOW
}
