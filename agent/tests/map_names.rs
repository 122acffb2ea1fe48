//! One source for map and program names: the embedded eBPF object defines exactly the maps and
//! programs that `agent-common` names. The eBPF side spells its names as literals (aya-ebpf's
//! attributes take no constants), so this is what keeps the two from drifting apart.
use std::collections::BTreeSet;

use agent_common::{MAP_NAMES, programs};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

/// aya-log's ring buffer: in the object because the programs log through aya-log; not ours.
const AYA_LOG_MAPS: [&str; 1] = ["AYA_LOGS"];

/// (maps, programs) defined in an eBPF object: data symbols in the map sections, and global
/// functions in program sections (helpers like `memcpy` live in `.text`).
fn defined_names(elf: &[u8]) -> (BTreeSet<String>, BTreeSet<String>) {
    let obj = object::File::parse(elf).expect("the embedded eBPF object parses as ELF");
    let mut maps = BTreeSet::new();
    let mut programs = BTreeSet::new();
    for sym in obj.symbols() {
        let Some(index) = sym.section_index() else {
            continue;
        };
        let section = obj.section_by_index(index).expect("symbol's section");
        let section = section.name().expect("section name");
        let name = sym.name().expect("symbol name").to_owned();
        match sym.kind() {
            SymbolKind::Data if section == "maps" || section == ".maps" => {
                maps.insert(name);
            }
            SymbolKind::Text if sym.is_global() && section != ".text" => {
                programs.insert(name);
            }
            _ => {}
        }
    }
    (maps, programs)
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn map_names_match_the_ebpf_object() {
    let (mut maps, programs) = defined_names(agent::capture::ebpf_object());
    for foreign in AYA_LOG_MAPS {
        maps.remove(foreign);
    }

    let named = set(&MAP_NAMES);
    assert_eq!(
        named.len(),
        MAP_NAMES.len(),
        "a map named twice: {MAP_NAMES:?}"
    );
    assert!(
        maps.is_subset(&named),
        "maps in the object that agent-common does not name: {:?}",
        maps.difference(&named).collect::<Vec<_>>()
    );
    assert!(
        named.is_subset(&maps),
        "maps agent-common names that the object lacks: {:?}",
        named.difference(&maps).collect::<Vec<_>>()
    );

    let named = set(&programs::ALL);
    assert_eq!(named.len(), programs::ALL.len(), "a program named twice");
    assert!(
        programs.is_subset(&named),
        "programs in the object that agent-common does not name: {:?}",
        programs.difference(&named).collect::<Vec<_>>()
    );
    assert!(
        named.is_subset(&programs),
        "programs agent-common names that the object lacks: {:?}",
        named.difference(&programs).collect::<Vec<_>>()
    );
    for p in &programs {
        assert!(
            p.starts_with(programs::PREFIX),
            "{p} lacks the {:?} prefix",
            programs::PREFIX
        );
    }
    assert!(
        programs::SOCK_ADDR
            .iter()
            .all(|p| programs::ALL.contains(p))
    );
}
