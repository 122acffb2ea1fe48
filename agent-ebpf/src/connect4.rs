//! cgroup/connect4: redirect IPv4 connects to steered destinations to the node's IPv4 proxy.
use agent_common::{Endpoint, NetAddr, config::FLAG_PROXY4, stats};
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{
    maps::count,
    steer::{ALLOW, Verdict, decide, remember},
};

#[cgroup_sock_addr(connect4)]
pub fn shunt_connect4(ctx: SockAddrContext) -> i32 {
    try_connect4(&ctx)
}

#[inline(always)]
fn try_connect4(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let dst = Endpoint::new(NetAddr::from_ip4_be(sa.user_ip4), sa.user_port as u16);
    match decide(ctx, dst) {
        Verdict::Direct => {}
        Verdict::Redirect { cfg, .. } if cfg.flags & FLAG_PROXY4 == 0 => {
            count(stats::NO_PROXY_FOR_FAMILY)
        }
        Verdict::Redirect {
            cfg,
            service_id,
            source,
        } => {
            if remember(ctx, dst, service_id, source) {
                sa.user_ip4 = cfg.proxy4;
                sa.user_port = u32::from(cfg.proxy4_port_be);
                count(stats::STEERED);
            }
        }
    }
    ALLOW
}
