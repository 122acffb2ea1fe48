//! Shunt's capture programs. One file per hook; each entry point calls a `try_*` function that
//! returns the verdict, and the entry point returns exactly that verdict.
//!
//! Every path fails open: a map miss, a full map or a missing proxy address leaves the connection
//! going direct to its destination.
#![no_std]
#![no_main]

mod connect4;
mod connect6;
mod getpeername4;
mod getpeername6;
mod maps;
mod marked;
mod sock_ops;
mod steer;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
