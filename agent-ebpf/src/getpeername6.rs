//! cgroup/getpeername6: as getpeername4, for IPv6 sockets; a v4-mapped original destination is
//! reported in the v4-mapped form the application dialled.
use agent_common::{Endpoint, NetAddr, stats};
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};

use crate::{
    maps::{ORIG_COOKIE, PROXY_CFG, count},
    steer::{ALLOW, set_user_ip6},
};

#[cgroup_sock_addr(getpeername6)]
pub fn shunt_getpeername6(ctx: SockAddrContext) -> i32 {
    try_getpeername6(&ctx)
}

#[inline(always)]
fn try_getpeername6(ctx: &SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let Some(orig) = (unsafe { ORIG_COOKIE.get(&cookie) }) else {
        return ALLOW;
    };
    let sa = unsafe { &mut *ctx.sock_addr };
    let peer = Endpoint::new(user_ip6(sa), sa.user_port as u16);
    if let Some(cfg) = PROXY_CFG.get(0)
        && cfg.is_proxy(&peer)
    {
        set_user_ip6(sa, orig.dst.addr.words);
        sa.user_port = u32::from(orig.dst.port_be);
        count(stats::PEERNAME_RESTORED);
    }
    ALLOW
}

/// Reads `user_ip6` word by word: each load must be a fixed offset from the context (see
/// [`set_user_ip6`]).
#[inline(always)]
fn user_ip6(sa: *mut aya_ebpf::bindings::bpf_sock_addr) -> NetAddr {
    // SAFETY: sa is the program's context; the fields are 4-byte aligned u32s.
    unsafe {
        NetAddr::from_ip6_words([
            core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[0])),
            core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[1])),
            core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[2])),
            core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[3])),
        ])
    }
}
