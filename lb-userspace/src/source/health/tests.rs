use std::{path::Path, time::UNIX_EPOCH};

use super::*;

const FILE: &str = r#"
services:
  web:
    ports: ["80:8080"]
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]
    health: { tcp: {}, rise: 2, fall: 3 }
  keep:
    vip: 198.18.100.2
    ports: ["80:8080"]
    backends: ["198.18.2.20", "198.18.2.21"]
    health: { tcp: {}, rise: 1, fall: 1, when_all_down: keep }
  plain:
    vip: 198.18.100.3
    ports: ["80:8080"]
    backends: ["198.18.2.30"]
"#;

fn file() -> ServiceFile {
    ServiceFile::parse(FILE, Path::new("services.yaml")).unwrap()
}

fn key(service: &str, addr: &str) -> TargetKey {
    TargetKey {
        service: service.into(),
        addr: addr.parse().unwrap(),
    }
}

fn at(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

const OK: Result<Duration, &str> = Ok(Duration::from_millis(1));
const FAIL: Result<Duration, &str> = Err("connecting: Connection refused");

/// Records `results` for `key`, one a second from `t0`; the transitions' target states.
fn feed(
    book: &mut HealthBook,
    key: &TargetKey,
    t0: u64,
    results: &[Result<Duration, &str>],
) -> Vec<Health> {
    results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            book.record(key, r.map_err(str::to_owned), at(t0 + i as u64))
                .map(|t| t.to)
        })
        .collect()
}

fn backends(file: &ServiceFile, service: &str) -> Vec<String> {
    file.services[service]
        .backends
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn every_backend_of_a_checked_service_is_a_target_and_starts_unknown() {
    let mut book = HealthBook::default();
    let targets = book.sync(&file(), at(0));
    let keys: Vec<String> = targets
        .iter()
        .map(|t| format!("{} {}", t.key.service, t.key.addr))
        .collect();
    assert_eq!(
        keys,
        [
            "keep 198.18.2.20:8080",
            "keep 198.18.2.21:8080",
            "web 198.18.2.10:8080",
            "web 198.18.2.11:8080",
            "web 198.18.2.12:8080",
        ]
    );
    assert!(book.states().all(|(_, s)| s.health == Health::Unknown));
    // Unknown serves: nothing is left out.
    assert!(matches!(book.serving(&file()), Cow::Borrowed(_)));
}

#[test]
fn the_first_result_decides_then_only_streaks_change_the_state() {
    let mut book = HealthBook::default();
    book.sync(&file(), at(0));
    let k = key("web", "198.18.2.10:8080");
    assert_eq!(feed(&mut book, &k, 1, &[OK]), [Health::Up]);
    // Flapping inside the hysteresis (fall 3): two failures, a success, two failures.
    assert_eq!(
        feed(&mut book, &k, 2, &[FAIL, FAIL, OK, FAIL, FAIL, OK]),
        []
    );
    assert_eq!(book.state(&k).unwrap().health, Health::Up);
    assert_eq!(book.state(&k).unwrap().transitions, 0);
    // Three in a row: down, at the third.
    assert_eq!(feed(&mut book, &k, 10, &[FAIL, FAIL]), []);
    let t = book
        .record(&k, Err("no answer within 1s".into()), at(12))
        .unwrap();
    assert_eq!(
        (t.from, t.to, t.reason.as_str()),
        (Health::Up, Health::Down, "no answer within 1s")
    );
    assert!(t.changes_serving());
    assert_eq!(book.state(&k).unwrap().since, at(12));
    // Rise 2: one success and a failure change nothing; two in a row bring it up.
    assert_eq!(feed(&mut book, &k, 13, &[OK, FAIL, OK]), []);
    let t = book
        .record(&k, Ok(Duration::from_millis(2)), at(16))
        .unwrap();
    assert_eq!((t.from, t.to), (Health::Down, Health::Up));
    assert_eq!(t.reason, "2 checks in a row passed");
    let state = book.state(&k).unwrap();
    assert_eq!(state.transitions, 2);
    assert_eq!(
        state.last_error.as_deref(),
        Some(FAIL.unwrap_err()),
        "kept after successes"
    );
    assert_eq!(state.last_latency, Some(Duration::from_millis(2)));
    // A first failure takes an unknown backend down at once.
    let k2 = key("web", "198.18.2.11:8080");
    let t = book
        .record(&k2, FAIL.map_err(str::to_owned), at(20))
        .unwrap();
    assert_eq!((t.from, t.to), (Health::Unknown, Health::Down));
    // Unknown to up is not a change the plan sees.
    let k3 = key("web", "198.18.2.12:8080");
    assert!(
        !book
            .record(&k3, Ok(Duration::ZERO), at(20))
            .unwrap()
            .changes_serving()
    );
}

#[test]
fn down_backends_are_left_out_unless_all_are_and_the_service_keeps_them() {
    let mut book = HealthBook::default();
    let file = file();
    book.sync(&file, at(0));
    feed(&mut book, &key("web", "198.18.2.11:8080"), 1, &[FAIL]);
    feed(&mut book, &key("keep", "198.18.2.20:8080"), 1, &[FAIL]);
    let serving = book.serving(&file);
    assert_eq!(backends(&serving, "web"), ["198.18.2.10", "198.18.2.12"]);
    assert_eq!(backends(&serving, "keep"), ["198.18.2.21"]);
    assert_eq!(serving.services["plain"], file.services["plain"]);
    // All of `keep` down: it keeps them all; all of `web` down: none.
    feed(&mut book, &key("keep", "198.18.2.21:8080"), 2, &[FAIL]);
    for b in ["198.18.2.10:8080", "198.18.2.12:8080"] {
        feed(&mut book, &key("web", b), 2, &[FAIL]);
    }
    let serving = book.serving(&file);
    assert_eq!(backends(&serving, "keep"), backends(&file, "keep"));
    assert!(backends(&serving, "web").is_empty());
}

/// `when_all_down: keep` with one backend drained (weight 0) and passing its checks: when
/// the other goes down, no backend takes flows unless both are kept.
#[test]
fn a_drained_backend_that_is_up_does_not_stop_a_service_keeping_its_backends() {
    let mut book = HealthBook::default();
    let mut file = file();
    let keep = file.services.get_mut("keep").unwrap();
    keep.backends[1].weight = 0;
    book.sync(&file, at(0));
    feed(&mut book, &key("keep", "198.18.2.21:8080"), 1, &[OK]);
    feed(&mut book, &key("keep", "198.18.2.20:8080"), 1, &[FAIL]);
    let serving = book.serving(&file);
    assert_eq!(backends(&serving, "keep"), backends(&file, "keep"));
    // Both drained: none takes flows, so none is "all down"; the down one is left out.
    file.services.get_mut("keep").unwrap().backends[0].weight = 0;
    let serving = book.serving(&file);
    assert_eq!(backends(&serving, "keep"), ["198.18.2.21"]);
}

#[test]
fn sync_forgets_targets_no_service_checks_and_ignores_their_late_results() {
    let mut book = HealthBook::default();
    let mut file = file();
    book.sync(&file, at(0));
    let k = key("web", "198.18.2.10:8080");
    feed(&mut book, &k, 1, &[FAIL]);
    file.services.get_mut("web").unwrap().health = None;
    let targets = book.sync(&file, at(2));
    assert!(targets.iter().all(|t| t.key.service != "web"));
    assert_eq!(book.state(&k), None);
    assert_eq!(book.record(&k, Ok(Duration::ZERO), at(3)), None);
    // Checked again: a fresh start, not the old state.
    book.sync(&self::file(), at(4));
    assert_eq!(book.state(&k).unwrap().health, Health::Unknown);
}

/// Two backends of one service checked at one address (`health.port`) share a target: it is
/// checked once, and its verdict survives every sync (it was reset to unknown by each one, so
/// a dead host's backends came back, and a recovered one's stayed out).
#[test]
fn backends_checked_at_one_address_share_a_verdict_across_syncs() {
    let text = r#"
services:
  two:
    ports: ["80:8080"]
    backends: ["198.18.2.40:8080", "198.18.2.40:8081", "198.18.2.41"]
    health: { tcp: {}, port: 9000, rise: 1, fall: 1 }
"#;
    let file = ServiceFile::parse(text, Path::new("services.yaml")).unwrap();
    let mut book = HealthBook::default();
    let targets = book.sync(&file, at(0));
    assert_eq!(targets.len(), 2, "one check per address: {targets:?}");
    let shared = key("two", "198.18.2.40:9000");
    assert_eq!(feed(&mut book, &shared, 1, &[FAIL]), [Health::Down]);
    for t in 2..5 {
        book.sync(&file, at(t));
        assert_eq!(
            book.state(&shared).unwrap().health,
            Health::Down,
            "sync {t}"
        );
    }
    assert_eq!(backends(&book.serving(&file), "two"), ["198.18.2.41"]);
    assert_eq!(feed(&mut book, &shared, 5, &[OK]), [Health::Up]);
    book.sync(&file, at(6));
    assert_eq!(book.state(&shared).unwrap().health, Health::Up);
}

/// A checked service with no backend known up while some have no verdict yet waits: a
/// backend found up ends the wait, and so do verdicts for all; a service without checks
/// never waits.
#[test]
fn checked_services_wait_for_a_backend_up_or_every_verdict() {
    let file = file();
    let mut book = HealthBook::default();
    book.sync(&file, at(0));
    let waiting = |book: &HealthBook| -> Vec<String> {
        book.awaiting_first_verdict(&file).into_iter().collect()
    };
    assert_eq!(waiting(&book), ["keep", "web"]);
    feed(&mut book, &key("web", "198.18.2.11:8080"), 1, &[FAIL]);
    assert_eq!(
        waiting(&book),
        ["keep", "web"],
        "one down, two unknown: still waiting"
    );
    feed(&mut book, &key("web", "198.18.2.10:8080"), 1, &[OK]);
    assert_eq!(waiting(&book), ["keep"], "one up ends the wait");
    feed(&mut book, &key("keep", "198.18.2.20:8080"), 1, &[FAIL]);
    feed(&mut book, &key("keep", "198.18.2.21:8080"), 1, &[FAIL]);
    assert!(waiting(&book).is_empty(), "every verdict in, all down");
}

/// A restarted lbd starts from the saved verdicts: the down backend stays out at once and
/// needs `rise` passes, the up one needs `fall` failures; a target added later starts unknown.
#[test]
fn saved_verdicts_seed_the_next_book() {
    let file = file();
    let mut before = HealthBook::default();
    before.sync(&file, at(0));
    feed(&mut before, &key("web", "198.18.2.10:8080"), 1, &[OK]);
    feed(&mut before, &key("web", "198.18.2.11:8080"), 1, &[FAIL]);
    let saved = before.saved();
    assert_eq!(saved.targets.len(), 2, "{saved:?}");
    let text = serde_json::to_string(&saved).unwrap();
    let saved: SavedHealth = serde_json::from_str(&text).unwrap();

    let mut after = HealthBook::default();
    after.seed(saved);
    after.sync(&file, at(10));
    let health = |book: &HealthBook, k: &TargetKey| book.state(k).unwrap().health;
    let (up, down) = (
        key("web", "198.18.2.10:8080"),
        key("web", "198.18.2.11:8080"),
    );
    assert_eq!(health(&after, &up), Health::Up);
    assert_eq!(health(&after, &down), Health::Down);
    // Since when each verdict holds: as the earlier lbd reached it, not since this start.
    let since = |k: &TargetKey| after.state(k).unwrap().since;
    assert_eq!((since(&up), since(&down)), (at(1), at(1)));
    assert_eq!(since(&key("web", "198.18.2.12:8080")), at(10));
    // A file of an lbd that did not save the time: since this start.
    let mut older = HealthBook::default();
    older.seed(serde_json::from_str(&text.replace(r#","since_unix_s":1"#, "")).unwrap());
    older.sync(&file, at(10));
    assert_eq!(older.state(&down).unwrap().since, at(10));
    assert_eq!(
        health(&after, &key("web", "198.18.2.12:8080")),
        Health::Unknown
    );
    assert_eq!(
        backends(&after.serving(&file), "web"),
        ["198.18.2.10", "198.18.2.12"]
    );
    // An earlier lbd's "up" serves but, until a check confirms it, announces nothing: the
    // saved file may be a reboot old.
    let waiting = |book: &HealthBook| -> Vec<String> {
        book.awaiting_first_verdict(&file).into_iter().collect()
    };
    assert!(waiting(&after).contains(&"web".to_owned()));
    // web has rise 2, fall 3: one result moves neither, and a failure confirms no "up".
    assert_eq!(after.record(&up, FAIL.map_err(str::to_owned), at(11)), None);
    assert_eq!(after.record(&down, OK.map_err(str::to_owned), at(11)), None);
    assert!(waiting(&after).contains(&"web".to_owned()));
    assert_eq!(after.record(&up, OK.map_err(str::to_owned), at(12)), None);
    assert!(!waiting(&after).contains(&"web".to_owned()));
    // Seeds are used once: a target that comes back later starts unknown.
    let mut without = file.clone();
    without.services.get_mut("web").unwrap().health = None;
    after.sync(&without, at(13));
    after.sync(&file, at(14));
    assert_eq!(health(&after, &down), Health::Unknown);
}

/// A start with no dataplane to adopt (a reboot) keeps the saved "down" and drops the saved
/// "up": a backend that died meanwhile is out at its first failed check, not after `fall`.
#[test]
fn without_a_dataplane_to_adopt_only_down_verdicts_are_kept() {
    let file = file();
    let (up, down) = (
        key("web", "198.18.2.10:8080"),
        key("web", "198.18.2.11:8080"),
    );
    let mut before = HealthBook::default();
    before.sync(&file, at(0));
    feed(&mut before, &up, 1, &[OK]);
    feed(&mut before, &down, 1, &[FAIL]);

    let mut after = HealthBook::default();
    after.seed(before.saved());
    after.sync(&file, at(10));
    after.forget_seeded_up(at(10));
    let health = |book: &HealthBook, k: &TargetKey| book.state(k).unwrap().health;
    assert_eq!(health(&after, &up), Health::Unknown);
    assert_eq!(health(&after, &down), Health::Down);
    // Unknown since the saved "up" was dropped; down since the earlier lbd found it.
    let since = |k: &TargetKey| after.state(k).unwrap().since;
    assert_eq!((since(&up), since(&down)), (at(10), at(1)));
    // Unknown is served as up was: the first plan is the same.
    assert_eq!(
        backends(&after.serving(&file), "web"),
        ["198.18.2.10", "198.18.2.12"]
    );
    // web has fall 3: one failure takes it out.
    assert_eq!(feed(&mut after, &up, 11, &[FAIL]), [Health::Down]);
    // A verdict this lbd reached is kept.
    feed(&mut after, &up, 12, &[OK, OK]);
    after.forget_seeded_up(at(13));
    assert_eq!(health(&after, &up), Health::Up);
}
