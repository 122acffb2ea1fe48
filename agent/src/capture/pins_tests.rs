use std::fs;

use super::*;

#[test]
fn versioned_names_split_into_base_and_version() {
    assert_eq!(split_version("STEERED_V1"), Some(("STEERED", "V1")));
    assert_eq!(
        split_version("ORIG_COOKIE_V12"),
        Some(("ORIG_COOKIE", "V12"))
    );
    assert_eq!(
        split_version("shunt_steered_v1"),
        Some(("shunt_steered", "v1"))
    );
    assert_eq!(split_version("STEERED_V1_resizing"), None);
    assert_eq!(split_version("STEERED_VX"), None);
    assert_eq!(split_version("STEERED"), None);
    assert_eq!(split_version("_V1"), None);
}

#[test]
fn only_other_versions_of_current_maps_are_removed() {
    let dir = std::env::temp_dir().join(format!("shunt-pins-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    for f in [
        "STEERED_V1",
        "STEERED_V0",
        "STEERED_V2",
        "ORIG_DST_V1",
        "ORIG_COOKIE_V0",
        "ORIG_V0",
        "OTHER_V0",
        "STEERED_V1_resizing",
        "STEERED_VX",
    ] {
        fs::write(dir.join(f), "").unwrap();
    }
    let mut removed: Vec<String> =
        remove_other_versions(&dir, &["STEERED_V1", "ORIG_DST_V1", "ORIG_COOKIE_V1"])
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
    removed.sort();
    assert_eq!(removed, ["ORIG_COOKIE_V0", "STEERED_V0", "STEERED_V2"]);
    let mut left: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "ORIG_DST_V1",
            "ORIG_V0",
            "OTHER_V0",
            "STEERED_V1",
            "STEERED_V1_resizing",
            "STEERED_VX"
        ]
    );
    fs::remove_dir_all(&dir).unwrap();
}
