//! cgroup/getpeername4: a redirected socket reports the destination the application dialled,
//! not the node proxy.
use agent_common::stats;
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};

use crate::{
    maps::{ORIG_COOKIE, count},
    steer::ALLOW,
};

#[cgroup_sock_addr(getpeername4)]
pub fn shunt_getpeername4(ctx: SockAddrContext) -> i32 {
    try_getpeername4(&ctx)
}

#[inline(always)]
fn try_getpeername4(ctx: &SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if let Some(orig) = unsafe { ORIG_COOKIE.get(&cookie) }
        && orig.dst.addr.is_v4_mapped()
    {
        let sa = unsafe { &mut *ctx.sock_addr };
        sa.user_ip4 = orig.dst.addr.ip4_be();
        sa.user_port = u32::from(orig.dst.port_be);
        count(stats::PEERNAME_RESTORED);
    }
    ALLOW
}
