//! cgroup/getpeername4: a redirected socket reports the destination the application dialled,
//! not the node proxy. Only a socket whose peer really is the proxy is rewritten: a stale cookie
//! record (a redirected connect that failed, then a direct one) must not hide the real peer.
use agent_common::{Endpoint, NetAddr, stats};
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};

use crate::{
    maps::{ORIG_COOKIE, PROXY_CFG, count},
    steer::ALLOW,
};

#[cgroup_sock_addr(getpeername4)]
pub fn shunt_getpeername4(ctx: SockAddrContext) -> i32 {
    try_getpeername4(&ctx)
}

#[inline(always)]
fn try_getpeername4(ctx: &SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let Some(orig) = (unsafe { ORIG_COOKIE.get(&cookie) }) else {
        return ALLOW;
    };
    let sa = unsafe { &mut *ctx.sock_addr };
    let peer = Endpoint::new(NetAddr::from_ip4_be(sa.user_ip4), sa.user_port as u16);
    if let Some(cfg) = PROXY_CFG.get(0)
        && cfg.is_proxy(&peer)
        && orig.dst.addr.is_v4_mapped()
    {
        sa.user_ip4 = orig.dst.addr.ip4_be();
        sa.user_port = u32::from(orig.dst.port_be);
        count(stats::PEERNAME_RESTORED);
    }
    ALLOW
}
