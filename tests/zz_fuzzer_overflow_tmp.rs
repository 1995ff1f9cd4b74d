#[test]
fn zz_overflow() {
    use streamserver::http::byteranges::plan_byteranges;
    use streamserver::http::range::{evaluate_range, RangeOutcome};
    let outcome = evaluate_range(Some("bytes=0-0,2-"), u64::MAX, 2);
    println!("{outcome:?}");
    let RangeOutcome::Multi(ranges) = outcome else { panic!() };
    let plan = plan_byteranges(&ranges, u64::MAX, "video/mp4", "B".into());
    println!("content_length {}", plan.content_length);
}
