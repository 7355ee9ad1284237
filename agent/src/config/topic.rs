//! The topic violation events are published to: given by `--violations-topic` or
//! `tern.violations-topic` (the flag wins), else `tern/things/<thing>/violations`, and checked
//! for what brokers take as a topic to publish to.

use super::{ConfigArgs, Problem, file::TernSection, problem};

/// AWS IoT Core's longest topic, in bytes, which tern asks of every broker.
const MAX_TOPIC: usize = 256;
/// AWS IoT Core's most slashes in a topic.
const AWS_MAX_SLASHES: usize = 7;

/// The topic of `thing`'s violations when none is given: outside the `$aws/` topics AWS IoT
/// Core keeps, and with the thing in it so a policy can allow each thing its own.
pub fn default(thing: &str) -> String {
    format!("tern/things/{thing}/violations")
}

/// The violations topic `--violations-topic` or `tern.violations-topic` gives, if either
/// does, with the setting that gave it; a flag that is not UTF-8 is a problem. Without a
/// broker (`unused`) it is checked here, else with the broker.
pub fn given(
    args: &ConfigArgs,
    tern: &TernSection,
    source: &str,
    unused: bool,
    problems: &mut Vec<Problem>,
) -> Option<(&'static str, String)> {
    let given = match &args.violations_topic {
        Some(flag) => match flag.to_str() {
            Some(topic) => Some(("--violations-topic", topic.to_owned())),
            None => {
                problem(
                    problems,
                    format!(
                        "{source}: --violations-topic {flag:?} is not UTF-8, which an MQTT \
                         topic must be; write it in UTF-8, or leave it out for \
                         tern/things/<thing>/violations"
                    ),
                );
                None
            }
        },
        None => tern
            .violations_topic
            .clone()
            .map(|topic| ("tern.violations-topic", topic)),
    };
    if unused && let Some((setting, topic)) = &given {
        check(source, setting, topic, false, problems);
    }
    given
}

/// Names `topic`, given by `setting`, when no broker (or, with `aws`, not AWS IoT Core)
/// would take it as a topic to publish violations to.
pub fn check(source: &str, setting: &str, topic: &str, aws: bool, problems: &mut Vec<Problem>) {
    if let Some(why) = topic_problem(topic, aws) {
        problem(
            problems,
            format!(
                "{source}: {setting} {topic:?} {why}; give a topic such as \
                 tern/things/<thing>/violations, or leave it out for that one"
            ),
        );
    }
}

/// Why `topic` cannot be published to, if it cannot.
fn topic_problem(topic: &str, aws: bool) -> Option<String> {
    let slashes = topic.matches('/').count();
    if topic.is_empty() {
        Some("is empty".to_owned())
    } else if topic.contains(['+', '#']) {
        Some("holds an MQTT wildcard (+ or #), which only a subscription may".to_owned())
    } else if topic.starts_with('$') {
        Some(
            "starts with $, which brokers keep for their own topics ($aws/ on AWS IoT Core)"
                .to_owned(),
        )
    } else if topic.chars().any(char::is_control) {
        Some("contains control characters".to_owned())
    } else if topic.len() > MAX_TOPIC {
        Some(format!(
            "is {} bytes, over the {MAX_TOPIC} AWS IoT Core takes",
            topic.len()
        ))
    } else if aws && slashes > AWS_MAX_SLASHES {
        Some(format!(
            "has {slashes} slashes, over the {AWS_MAX_SLASHES} AWS IoT Core takes"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn violations_topics_are_ones_a_broker_takes_to_publish_to() {
        assert_eq!(topic_problem("tern/things/gw-7/violations", true), None);
        assert_eq!(topic_problem("a/b/c/d/e/f/g/h", true), None);
        assert_eq!(topic_problem("a/b/c/d/e/f/g/h/i", false), None);
        assert_eq!(topic_problem(&"x".repeat(MAX_TOPIC), true), None);
        let refused = [
            ("", true, "empty"),
            ("tern/+/violations", false, "wildcard"),
            ("tern/#", false, "wildcard"),
            ("$aws/things/gw-7/violations", false, "starts with $"),
            ("tern/gw\u{0}/violations", false, "control"),
            ("tern/gw\n/violations", false, "control"),
            ("a/b/c/d/e/f/g/h/i", true, "slashes"),
        ];
        for (topic, aws, why) in refused {
            let problem = topic_problem(topic, aws).unwrap_or_default();
            assert!(problem.contains(why), "{topic:?}: {problem:?}");
        }
        let long = topic_problem(&"x".repeat(MAX_TOPIC + 1), false).unwrap_or_default();
        assert!(long.contains("257 bytes"), "{long}");
    }

    #[test]
    fn a_violations_topic_no_broker_takes_is_a_problem_from_the_flag_or_the_file() {
        use std::os::unix::ffi::OsStringExt;
        let dir = std::env::temp_dir().join(format!("tern-config-topic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        fs::write(
            &path,
            r#"{"tern": {"violations-topic": "tern/+/violations"}}"#,
        )
        .unwrap();
        let problems = |args: ConfigArgs| -> Vec<String> {
            match crate::config::load(&args) {
                Ok(_) => Vec::new(),
                Err(problems) => problems.0.into_iter().map(|p| p.0).collect(),
            }
        };
        let topic_problems = |args: ConfigArgs| -> Vec<String> {
            problems(args)
                .into_iter()
                .filter(|p| p.contains("violations-topic"))
                .collect()
        };
        let from_file = topic_problems(ConfigArgs {
            config: Some(path.clone()),
            ..Default::default()
        });
        assert_eq!(from_file.len(), 1, "{from_file:?}");
        assert!(
            from_file[0]
                .contains("tern.violations-topic \"tern/+/violations\" holds an MQTT wildcard")
                && from_file[0].contains("tern/things/<thing>/violations"),
            "{from_file:?}"
        );
        let flag_wins = topic_problems(ConfigArgs {
            config: Some(path.clone()),
            violations_topic: Some("fleet/gw-7/alarms".into()),
            ..Default::default()
        });
        assert!(flag_wins.is_empty(), "{flag_wins:?}");
        let not_utf8 = topic_problems(ConfigArgs {
            violations_topic: Some(std::ffi::OsString::from_vec(b"tern/\xff".to_vec())),
            ..Default::default()
        });
        assert!(not_utf8[0].contains("is not UTF-8"), "{not_utf8:?}");
        let aws = topic_problems(ConfigArgs {
            endpoint: Some("x.iot.us-east-1.amazonaws.com".into()),
            thing_name: Some("gw-7".into()),
            violations_topic: Some("a/b/c/d/e/f/g/h/i".into()),
            ..Default::default()
        });
        assert!(aws[0].contains("8 slashes"), "{aws:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
