//! cgroup/getpeername6: as getpeername4, for IPv6 sockets; a v4-mapped original destination is
//! reported in the v4-mapped form the application dialled.
use agent_common::stats;
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};

use crate::{
    maps::{ORIG_COOKIE, count},
    steer::{ALLOW, set_user_ip6},
};

#[cgroup_sock_addr(getpeername6)]
pub fn shunt_getpeername6(ctx: SockAddrContext) -> i32 {
    try_getpeername6(&ctx)
}

#[inline(always)]
fn try_getpeername6(ctx: &SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if let Some(orig) = unsafe { ORIG_COOKIE.get(&cookie) } {
        let sa = unsafe { &mut *ctx.sock_addr };
        set_user_ip6(sa, orig.dst.addr.words);
        sa.user_port = u32::from(orig.dst.port_be);
        count(stats::PEERNAME_RESTORED);
    }
    ALLOW
}
