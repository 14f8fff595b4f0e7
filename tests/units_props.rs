//! No input makes the value parsers panic; valid values round-trip.

use std::time::Duration;

use costguard::units::{
    parse_duration, parse_mem_limit, parse_money, parse_percent, parse_signal, parse_size,
    MAX_DURATION, MAX_MONEY, MAX_SIZE,
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
    fn clock_shaped_noise_never_panics(s in "-?[0-9:-]{0,24}(\\.[0-9]{0,3})?") {
        let _ = parse_duration(&s);
    }

    #[test]
    fn trailing_number_noise_never_panics(s in "[0-9]{0,22}(h|m|ms|min|d|s| )[0-9]{0,22}") {
        let _ = parse_duration(&s);
    }

    #[test]
    fn nothing_parses_past_the_maxima(s in "-?[0-9.:$-]{0,24}(y|d|h|m|s|T|TiB|)[0-9]{0,3}") {
        if let Ok(d) = parse_duration(&s) {
            prop_assert!(d <= MAX_DURATION, "{s:?} gave {d:?}");
        }
        if let Ok(v) = parse_money(&s) {
            prop_assert!(v <= MAX_MONEY, "{s:?} gave {v}");
        }
        if let Ok(b) = parse_size(&s) {
            prop_assert!(b <= MAX_SIZE, "{s:?} gave {b}");
        }
    }

    #[test]
    fn bare_seconds_round_trip(secs in 0u64..=MAX_DURATION.as_secs(), millis in 0u32..1000) {
        prop_assert_eq!(parse_duration(&secs.to_string()), Ok(Duration::from_secs(secs)));
        let text = format!("{secs}.{millis:03}");
        prop_assert_eq!(
            parse_duration(&text).ok(),
            Some(Duration::new(secs, millis * 1_000_000)).filter(|d| *d <= MAX_DURATION)
        );
    }

    #[test]
    fn slurm_clock_forms_round_trip(secs in 0u64..=MAX_DURATION.as_secs()) {
        let (d, h, m, s) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
        let want = Ok(Duration::from_secs(secs));
        prop_assert_eq!(parse_duration(&format!("{d}-{h:02}:{m:02}:{s:02}")), want.clone());
        prop_assert_eq!(parse_duration(&format!("{}:{m:02}:{s:02}", secs / 3600)), want.clone());
        prop_assert_eq!(parse_duration(&format!("{}:{s:02}", secs / 60)), want.clone());
        if m == 0 && s == 0 {
            prop_assert_eq!(parse_duration(&format!("{d}-{h}")), want.clone());
        }
        if s == 0 {
            prop_assert_eq!(parse_duration(&format!("{d}-{h}:{m:02}")), want.clone());
        }
        prop_assert_eq!(parse_duration(&format!("{}h{m}m{s}", secs / 3600)), want);
    }

    #[test]
    fn negatives_say_so(secs in 1u64..1_000_000) {
        for text in [format!("-{secs}"), format!("-{secs}s"), format!("-0:{:02}", secs % 59 + 1)] {
            let err = parse_duration(&text).expect_err("negative refused").to_string();
            prop_assert!(err.ends_with("must not be negative"), "{}", err);
        }
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
