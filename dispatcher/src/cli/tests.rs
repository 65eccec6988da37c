//! The command line's own tests: parsing, and every flag in docs/configuration.md.

mod parsing {
    use crate::cli::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(args).expect("parses").command
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// With no flags (and no HERALD_* set: CI's environment has none), the command line
    /// gives exactly the library's defaults.
    #[test]
    fn no_flags_give_the_settings_defaults() {
        let Command::Run(run) = parse(&["dispatcher", "run"]) else {
            unreachable!()
        };
        let run = RunConfig::from(*run);
        assert_eq!(format!("{run:?}"), format!("{:?}", RunConfig::default()));
        let Command::Deliver(deliver) = parse(&["dispatcher", "deliver"]) else {
            unreachable!()
        };
        let deliver = DeliverConfig::from(*deliver);
        assert_eq!(
            format!("{deliver:?}"),
            format!("{:?}", DeliverConfig::default())
        );
        let Command::Record(record) = parse(&["dispatcher", "record"]) else {
            unreachable!()
        };
        let record = RecordConfig::from(*record);
        assert_eq!(
            format!("{record:?}"),
            format!("{:?}", RecordConfig::default())
        );
    }

    #[test]
    fn flags_reach_their_settings() {
        let Command::Run(run) = parse(&[
            "dispatcher",
            "run",
            "--auth",
            "off",
            "--linger",
            "2ms",
            "--mongo-db",
            "m1",
            "--pg-schema",
            "s1",
            "--record-skip",
            "mongo,postgres",
            "--queue-capacity",
            "4:3:2",
            "--overload-refusal-hold",
            "0s",
        ]) else {
            unreachable!()
        };
        let run = RunConfig::from(*run);
        assert_eq!(run.serve.auth, AuthMode::Off);
        assert_eq!(run.serve.publisher.linger, Duration::from_millis(2));
        assert_eq!(run.serve.store.mongo_db, "m1");
        assert_eq!(run.serve.store.pg.pg_schema, "s1");
        assert_eq!(
            run.recorder.record_skip,
            [RecordStore::Mongo, RecordStore::Postgres]
        );
        assert_eq!(run.serve.scheduler.capacities, PerClass([4, 3, 2]));
        assert_eq!(run.serve.admission.refusal_hold, Duration::ZERO);
    }

    /// A role refuses the flags of stores it never touches, instead of ignoring them.
    #[test]
    fn roles_take_only_the_flags_they_use() {
        let unused = [
            vec!["dispatcher", "deliver", "--migrate"],
            vec!["dispatcher", "deliver", "--mongo-db", "x"],
            vec!["dispatcher", "deliver", "--redis-url", "redis://x"],
            vec!["dispatcher", "serve", "--mongo-url", "mongodb://x"],
            vec!["dispatcher", "migrate", "--mongo-db", "x"],
        ];
        for args in unused {
            let err = Cli::try_parse_from(&args).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::UnknownArgument,
                "{args:?}"
            );
        }
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        let bad = [
            vec!["dispatcher", "serve", "--weights", "8:0:1"],
            vec!["dispatcher", "serve", "--weights", "8:4"],
            vec!["dispatcher", "serve", "--prefix", "a.b"],
            vec!["dispatcher", "serve", "--linger", "soon"],
            vec!["dispatcher", "serve", "--auth", "maybe"],
            vec!["dispatcher", "record", "--record-skip", "redis"],
        ];
        for args in bad {
            let err = Cli::try_parse_from(&args).unwrap_err();
            assert!(
                matches!(
                    err.kind(),
                    clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue
                ),
                "{args:?}: {:?}",
                err.kind()
            );
        }
    }
}

/// The configuration reference is the operator's: every flag of every role must be in
/// it, so a new flag cannot ship undocumented.
mod reference {
    use clap::CommandFactory;

    #[test]
    fn every_flag_is_in_the_configuration_reference() {
        let reference = include_str!("../../../docs/configuration.md");
        let mut missing = Vec::new();
        let mut commands = vec![crate::cli::Cli::command()];
        while let Some(command) = commands.pop() {
            for arg in command.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if matches!(long, "help" | "version") {
                    continue;
                }
                let flag = format!("--{long}");
                let documented = reference.match_indices(&flag).any(|(at, _)| {
                    !reference[at + flag.len()..]
                        .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
                });
                if !documented {
                    missing.push(format!("{} {flag}", command.get_name()));
                }
            }
            commands.extend(command.get_subcommands().cloned());
        }
        missing.sort();
        missing.dedup();
        assert!(
            missing.is_empty(),
            "flags missing from docs/configuration.md: {missing:?}"
        );
    }

    /// Every `HERALD_*` variable docker-compose.yml sets or reads is a setting of the
    /// dispatcher, or one of the few the image, loadgen or compose itself reads: a typo
    /// there would be ignored silently by every container.
    #[test]
    fn compose_sets_only_real_settings() {
        const ELSEWHERE: [&str; 4] = [
            "HERALD_HEALTH_URL", // the image's HEALTHCHECK
            "HERALD_API_KEY",    // loadgen's --api-key
            "HERALD_UID",        // compose's user: of loadgen
            "HERALD_GID",
        ];
        let compose = include_str!("../../../docker-compose.yml");
        let mut known: Vec<String> = ELSEWHERE.iter().map(|s| s.to_string()).collect();
        let mut commands = vec![crate::cli::Cli::command()];
        while let Some(command) = commands.pop() {
            known.extend(
                command
                    .get_arguments()
                    .filter_map(|a| a.get_env())
                    .map(|e| e.to_string_lossy().into_owned()),
            );
            commands.extend(command.get_subcommands().cloned());
        }
        let mut unknown: Vec<&str> = compose
            .match_indices("HERALD_")
            .map(|(at, _)| {
                let rest = &compose[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            // `HERALD_*` in prose names no variable.
            .filter(|name| name.len() > "HERALD_".len())
            .filter(|name| !known.iter().any(|k| k == name))
            .collect();
        unknown.sort();
        unknown.dedup();
        assert!(
            unknown.is_empty(),
            "docker-compose.yml names variables nothing reads: {unknown:?}"
        );
        assert!(
            compose.contains("HERALD_WEBHOOK_ALLOW_NETS"),
            "the scan sees the file"
        );
    }
}
