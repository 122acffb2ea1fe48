//! sock_ops: at `TCP_CONNECT_CB` the local port is bound, so a redirected socket's
//! (client address, client port) becomes the key the proxy will see on accept.
//! The function is not named `sockops`: a symbol equal to its ELF section breaks bpf-linker.
use agent_common::{Endpoint, NetAddr, stats};
use aya_ebpf::{
    bindings::BPF_SOCK_OPS_TCP_CONNECT_CB, helpers::generated::bpf_get_socket_cookie,
    macros::sock_ops, programs::SockOpsContext,
};

use crate::maps::{ORIG_COOKIE, ORIG_DST, count};

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
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return OK;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(orig) = (unsafe { ORIG_COOKIE.get(&cookie) }) else {
        return OK;
    };
    let orig = *orig;
    let local = match ctx.family() {
        AF_INET => NetAddr::from_ip4_be(ctx.local_ip4()),
        AF_INET6 => NetAddr::from_ip6_words(local_ip6(ctx)),
        _ => return OK,
    };
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
    OK
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
