//! MQTT topic names and filters (MQTT 3.1.1 section 4.7, MQTT 5 section 4.7).
//!
//! Besides validation and matching, this module computes the agent's subscription set:
//! overlapping filters of different functions are merged into one filter that covers both,
//! so that a broker never delivers the same message twice (once per matching subscription)
//! and the router alone decides which functions get it.

/// Why a topic filter or topic name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty string.
    #[error("is empty")]
    Empty,
    /// Longer than MQTT allows.
    #[error("is longer than 65535 bytes")]
    TooLong,
    /// Contains the NUL character.
    #[error("contains a NUL character")]
    Nul,
    /// `#` somewhere other than alone in the last level.
    #[error("`#` must be the last level and stand alone (as in `a/#`)")]
    MisplacedHash,
    /// `+` sharing a level with other characters.
    #[error("`+` must stand alone in its level (as in `a/+/c`)")]
    MisplacedPlus,
    /// A wildcard in a topic name (where only filters may have them).
    #[error("a topic name cannot contain `+` or `#`")]
    WildcardInName,
}

/// Checks a subscription filter.
///
/// # Errors
/// [`TopicError`] saying what is wrong.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != last) {
            return Err(TopicError::MisplacedHash);
        }
        if level.contains('+') && *level != "+" {
            return Err(TopicError::MisplacedPlus);
        }
    }
    Ok(())
}

/// Checks a topic name, as used to publish.
///
/// # Errors
/// [`TopicError`] saying what is wrong.
pub fn validate_name(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > 65_535 {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Whether `topic` matches `filter`. Both are assumed valid.
///
/// Topics starting with `$` are not matched by a filter starting with a wildcard.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic matches both filters.
pub fn overlap(a: &str, b: &str) -> bool {
    let dollar = |f: &str| f.starts_with('$');
    let wild = |f: &str| f.starts_with(['+', '#']);
    if (dollar(a) && wild(b)) || (dollar(b) && wild(a)) {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(p), Some(q)) if p == q || p == "+" || q == "+" => {}
            _ => return false,
        }
    }
}

/// The most specific filter that matches every topic either filter matches.
pub fn join(a: &str, b: &str) -> String {
    let x: Vec<&str> = a.split('/').collect();
    let y: Vec<&str> = b.split('/').collect();
    let mut out: Vec<&str> = Vec::new();
    for i in 0..x.len().max(y.len()) {
        match (x.get(i), y.get(i)) {
            (Some(&"#"), _) | (_, Some(&"#")) => {
                out.push("#");
                return out.join("/");
            }
            (Some(p), Some(q)) if p == q => out.push(p),
            (Some(_), Some(_)) => out.push("+"),
            // One filter is longer: everything below the common part.
            _ => {
                out.push("#");
                return out.join("/");
            }
        }
    }
    out.join("/")
}

/// Longest topic quoted whole in an error message or a log line.
const SHOWN_MAX: usize = 200;

/// `topic` as an error message or a log line quotes it: a topic of up to 200 bytes
/// whole, a longer one (MQTT allows 65,535) by its start and end with its length between,
/// so that what the message says after it is not lost when the message is cut.
pub fn shown(topic: &str) -> std::borrow::Cow<'_, str> {
    if topic.len() <= SHOWN_MAX {
        return topic.into();
    }
    let start = &topic[..topic.floor_char_boundary(SHOWN_MAX - 60)];
    let end = &topic[topic.ceil_char_boundary(topic.len() - 40)..];
    format!("{start}…({} bytes)…{end}", topic.len()).into()
}

/// A subscription: a filter and the highest QoS any function asked for on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The filter sent to the broker.
    pub filter: String,
    /// The QoS asked for.
    pub qos: u8,
}

/// Merges the functions' filters into a set of subscriptions no two of which overlap, so
/// each message is delivered to the agent once. Merged filters may cover topics no
/// function asked for; the router drops those.
pub fn subscriptions<'a>(filters: impl IntoIterator<Item = (&'a str, u8)>) -> Vec<Subscription> {
    let mut subs: Vec<Subscription> = Vec::new();
    for (filter, qos) in filters {
        let mut cur = Subscription {
            filter: filter.to_string(),
            qos,
        };
        // Absorb every existing subscription that overlaps; repeat because the joined
        // filter is wider and may now overlap others.
        while let Some(i) = subs.iter().position(|s| overlap(&s.filter, &cur.filter)) {
            let other = subs.swap_remove(i);
            cur = Subscription {
                filter: join(&other.filter, &cur.filter),
                qos: other.qos.max(cur.qos),
            };
        }
        subs.push(cur);
    }
    subs.sort_by(|a, b| a.filter.cmp(&b.filter));
    subs
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_long_topic_is_shown_by_its_ends_and_length() {
        assert_eq!(super::shown("a/b"), "a/b");
        let long = format!("s/{}/end", "é".repeat(40_000));
        let s = super::shown(&long);
        assert!(s.len() < 250, "{s}");
        assert!(s.starts_with("s/éé") && s.ends_with("éé/end"), "{s}");
        assert!(s.contains("…(80006 bytes)…"), "{s}");
    }

    use super::*;

    // Examples from MQTT 3.1.1 section 4.7 (and MQTT 5 section 4.7).
    #[test]
    fn spec_multi_level_wildcard() {
        let f = "sport/tennis/player1/#";
        assert!(matches(f, "sport/tennis/player1"));
        assert!(matches(f, "sport/tennis/player1/ranking"));
        assert!(matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "anything/at/all"));
        assert!(!matches(f, "sport/tennis/player2"));
        assert_eq!(
            validate_filter("sport/tennis#"),
            Err(TopicError::MisplacedHash)
        );
        assert_eq!(
            validate_filter("sport/tennis/#/ranking"),
            Err(TopicError::MisplacedHash)
        );
        assert!(validate_filter("#").is_ok());
    }

    #[test]
    fn spec_single_level_wildcard() {
        let f = "sport/tennis/+";
        assert!(matches(f, "sport/tennis/player1"));
        assert!(matches(f, "sport/tennis/player2"));
        assert!(!matches(f, "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(validate_filter("+").is_ok());
        assert!(validate_filter("+/tennis/#").is_ok());
        assert_eq!(validate_filter("sport+"), Err(TopicError::MisplacedPlus));
    }

    #[test]
    fn spec_dollar_topics() {
        assert!(!matches("#", "$SYS/broker/clients"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/broker/clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }

    #[test]
    fn names_and_filters_are_validated() {
        assert_eq!(validate_filter(""), Err(TopicError::Empty));
        assert_eq!(validate_filter("a\0b"), Err(TopicError::Nul));
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a/#"), Err(TopicError::WildcardInName));
        assert!(validate_name("a//b/").is_ok());
        assert_eq!(validate_name(&"x".repeat(70_000)), Err(TopicError::TooLong));
    }

    #[test]
    fn exact_topics_match_only_themselves() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(!matches("a/b", "a/c"));
    }

    #[test]
    fn overlap_cases() {
        assert!(overlap("sensors/+/temperature", "sensors/#"));
        assert!(overlap("a/+/c", "a/b/+"));
        assert!(overlap("a/b", "a/b/#"));
        assert!(!overlap("a/b", "a/c"));
        assert!(!overlap("a/+", "a/b/c"));
        assert!(!overlap("#", "$SYS/#"));
    }

    #[test]
    fn join_covers_both() {
        assert_eq!(join("sensors/+/temperature", "sensors/#"), "sensors/#");
        assert_eq!(join("a/+/c", "a/b/+"), "a/+/+");
        assert_eq!(join("a/b", "a/b/c"), "a/b/#");
        assert_eq!(join("a/b", "a/b"), "a/b");
    }

    #[test]
    fn subscriptions_never_overlap_and_keep_max_qos() {
        let subs = subscriptions([
            ("sensors/+/temperature", 1),
            ("sensors/#", 0),
            ("cmd/x", 2),
            ("a/+/c", 0),
            ("a/b/+", 1),
        ]);
        assert_eq!(
            subs,
            vec![
                Subscription {
                    filter: "a/+/+".into(),
                    qos: 1
                },
                Subscription {
                    filter: "cmd/x".into(),
                    qos: 2
                },
                Subscription {
                    filter: "sensors/#".into(),
                    qos: 1
                },
            ]
        );
        for (i, a) in subs.iter().enumerate() {
            for b in &subs[i + 1..] {
                assert!(!overlap(&a.filter, &b.filter), "{a:?} overlaps {b:?}");
            }
        }
    }
}

/// Property tests: arbitrary input never panics, and merged subscriptions never overlap
/// yet cover every topic the functions asked for.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("".to_string()),
            Just("$x".to_string()),
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..4)
            .prop_map(|l| l.join("/"))
            .prop_filter("topics are not empty", |t| !t.is_empty())
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![level(), Just("+".to_string())], 1..4),
            any::<bool>(),
        )
            .prop_map(|(mut l, hash)| {
                if hash {
                    l.push("#".into());
                }
                l.join("/")
            })
            .prop_filter("filters are not empty", |f| !f.is_empty())
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,64}", t in ".{0,64}") {
            let _ = validate_filter(&s);
            let _ = validate_name(&t);
            if validate_filter(&s).is_ok() && validate_name(&t).is_ok() {
                let _ = matches(&s, &t);
            }
        }

        #[test]
        fn generated_filters_are_valid(f in filter()) {
            prop_assert!(validate_filter(&f).is_ok(), "{}", f);
        }

        #[test]
        fn overlap_agrees_with_matching(a in filter(), b in filter(), t in topic()) {
            if matches(&a, &t) && matches(&b, &t) {
                prop_assert!(overlap(&a, &b), "{} and {} both match {}", a, b, t);
            }
        }

        #[test]
        fn subscriptions_cover_without_overlap(
            filters in prop::collection::vec((filter(), 0u8..3), 1..6),
            topics in prop::collection::vec(topic(), 1..20),
        ) {
            let subs = subscriptions(filters.iter().map(|(f, q)| (f.as_str(), *q)));
            for (i, a) in subs.iter().enumerate() {
                for b in &subs[i + 1..] {
                    prop_assert!(!overlap(&a.filter, &b.filter), "{:?} overlaps {:?}", a, b);
                }
            }
            for t in &topics {
                for (f, q) in &filters {
                    if matches(f, t) {
                        let covering: Vec<_> = subs.iter().filter(|s| matches(&s.filter, t)).collect();
                        prop_assert_eq!(covering.len(), 1, "{} via {} in {:?}", t, f, subs);
                        prop_assert!(covering[0].qos >= *q);
                    }
                }
            }
        }
    }
}
