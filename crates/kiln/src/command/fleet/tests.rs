use super::*;
use crate::fleet::bluegreen::{BlueGreen, Phase};
use crate::fleet::fixtures;

fn with(bg: Option<BlueGreen>) -> crate::fleet::place::Desired {
    let image = format!("127.0.0.1:5000/web@{}", fixtures::digest('a'));
    crate::fleet::place::Desired { blue_green: bg, ..fixtures::desired(&image) }
}

fn next(image: &str, since: i64) -> Option<BlueGreen> {
    let phase = Phase::Next { smoke: Vec::new(), since, deadline_secs: 60, keep_secs: 60 };
    Some(BlueGreen { image: image.into(), phase })
}

#[test]
fn a_desired_state_names_a_blue_green_release_only_as_a_deploy_s_plan() {
    assert!(check_desired("kiln deploy --cluster", "web", &with(None)).is_ok());
    assert!(check_desired("kiln deploy --cluster", "web", &with(next("", 0))).is_ok(), "kiln.toml's plan");
    let field = |d| match check_desired("kiln deploy --cluster", "web", &d) {
        Err(CommandError::BadRequest { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    // An API body that names the new set's image, a release already
    // begun, or a set kept warm: the leader's state, not a caller's.
    assert_eq!(field(with(next("127.0.0.1:5000/web@sha256:bb", 0))), "blue_green");
    assert_eq!(field(with(next("", 17))), "blue_green");
    let kept = Some(BlueGreen { image: String::new(), phase: Phase::Kept { until: 9 } });
    assert_eq!(field(with(kept)), "blue_green");
}
