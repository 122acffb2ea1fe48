//! Empty library target: lets `agent` list this crate as a build-dependency, so cargo rebuilds
//! the agent whenever the eBPF programs change (the programs are the `shunt-capture` binary).
#![no_std]
