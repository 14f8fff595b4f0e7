//! No input makes the value parsers panic; valid values round-trip.

use costguard::units::{
    parse_duration, parse_mem_limit, parse_money, parse_percent, parse_signal, parse_size,
};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parsers_never_panic(s in ".{0,40}") {
        let _ = parse_money(&s);
        let _ = parse_duration(&s);
        let _ = parse_size(&s);
        let _ = parse_mem_limit(&s);
        let _ = parse_percent(&s);
        let _ = parse_signal(&s);
    }

    #[test]
    fn unit_shaped_noise_never_panics(n in "[0-9.$-]{0,12}", u in "(ms|s|m|h|d|KiB|GB|%|x|)") {
        let s = format!("{n}{u}");
        let _ = parse_money(&s);
        let _ = parse_duration(&s);
        let _ = parse_mem_limit(&s);
    }

    #[test]
    fn money_round_trips(cents in 0u64..100_000_000) {
        let text = format!("${}.{:02}", cents / 100, cents % 100);
        let v = parse_money(&text).expect("valid money");
        prop_assert!((v * 100.0 - cents as f64).abs() < 1e-6);
        prop_assert!(v >= 0.0);
    }

    #[test]
    fn durations_round_trip(secs in 1u64..10_000_000) {
        let text = format!("{secs}s");
        prop_assert_eq!(parse_duration(&text).expect("valid").as_secs(), secs);
    }
}
