use std::collections::BTreeSet;

use lb_testkit::{ScratchPath, fake_bird};

use super::*;

/// A fresh directory for test `name` (removed when dropped, also when the test fails) and the
/// BIRD settings of a BIRD there: its include file and control socket (for
/// `lb_testkit::fake_bird`). The announce and cleanup tests use it.
pub(crate) fn bird_in(name: &str) -> (ScratchPath, BirdSettings) {
    let dir = ScratchPath::temp(&format!("bird-{name}"), "");
    std::fs::create_dir_all(&*dir).unwrap();
    let settings = BirdSettings {
        include: dir.join("meshlb-vips.conf"),
        socket: dir.join("bird.ctl"),
        reply_anchor: None,
    };
    (dir, settings)
}

fn set(vips: &[&str]) -> BTreeSet<IpAddr> {
    vips.iter().map(|v| v.parse().unwrap()).collect()
}

#[test]
fn the_include_file_has_one_static_protocol_per_family() {
    let text = render(&set(&["198.18.100.2", "fd00:100::1", "198.18.100.1"]));
    assert_eq!(
        text,
        "# Written by lbd (meshlb): the VIPs this node announces. Do not edit; see deploy/bird/.\n\
         protocol static meshlb_vips4 {\n  ipv4;\n  route 198.18.100.1/32 unreachable;\n  route 198.18.100.2/32 unreachable;\n}\n\
         protocol static meshlb_vips6 {\n  ipv6;\n  route fd00:100::1/128 unreachable;\n}\n"
    );
    // What it announces is read back from it (what a restarted lbd finds announced).
    assert_eq!(
        announced_in(&text),
        set(&["198.18.100.2", "fd00:100::1", "198.18.100.1"])
    );
    // Nothing to announce still defines both protocols, so bird.conf stays valid.
    let empty = render(&BTreeSet::new());
    assert!(announced_in(&empty).is_empty());
    assert!(empty.contains("protocol static meshlb_vips4 {\n  ipv4;\n}\n"));
    assert!(empty.contains("protocol static meshlb_vips6 {\n  ipv6;\n}\n"));
}

#[test]
fn a_changed_set_is_written_and_bird_reconfigured_an_unchanged_one_is_left_alone() {
    let (dir, settings) = bird_in("announce-sync");
    let commands = fake_bird(
        &settings.socket,
        "0002-Reading configuration from /etc/bird/bird.conf\n0003 Reconfigured\n",
        3,
    );
    let mut announcer = Announcer::new(settings.clone());
    let vips = set(&["198.18.100.1"]);
    assert_eq!(announcer.sync(&vips).unwrap(), Synced::Reconfigured);
    assert_eq!(commands.next_command().unwrap(), "configure");
    assert_eq!(
        std::fs::read_to_string(&settings.include).unwrap(),
        render(&vips)
    );
    // BIRD reads it as its own user, whatever lbd's umask.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&settings.include)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    // Once told, the same set again changes nothing.
    assert_eq!(announcer.sync(&vips).unwrap(), Synced::Unchanged);
    assert_eq!(commands.command_so_far(), None, "BIRD not asked");
    // A restarted lbd (a new announcer) with the same set writes nothing (no withdrawal),
    // but tells BIRD once: the lbd before may have stopped between the file and BIRD.
    let mut restarted = Announcer::new(settings.clone());
    assert_eq!(restarted.sync(&vips).unwrap(), Synced::Reconfigured);
    assert_eq!(commands.next_command().unwrap(), "configure");
    assert_eq!(restarted.sync(&vips).unwrap(), Synced::Unchanged);
    assert_eq!(commands.command_so_far(), None, "BIRD not asked");
    // `lbd cleanup`: every VIP withdrawn.
    assert_eq!(restarted.withdraw_all().unwrap(), Synced::Reconfigured);
    assert_eq!(commands.next_command().unwrap(), "configure");
    assert!(
        !std::fs::read_to_string(&settings.include)
            .unwrap()
            .contains("route")
    );
    assert!(!dir.join("meshlb-vips.conf.lbd-tmp").exists());
}

#[test]
fn bird_absent_or_refusing_is_a_clear_error() {
    let (dir, settings) = bird_in("announce-errors");
    let mut announcer = Announcer::new(settings.clone());
    let err = announcer.sync(&set(&["198.18.100.1"])).unwrap_err();
    assert!(matches!(err, AnnounceError::Unreachable { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("bird.ctl") && text.contains("is BIRD running"),
        "{text}"
    );
    // The file was written: BIRD reads it when it starts.
    assert!(
        std::fs::read_to_string(&settings.include)
            .unwrap()
            .contains("198.18.100.1/32")
    );

    let commands = fake_bird(
        &settings.socket,
        "0002-Reading configuration from /etc/bird/bird.conf\n8002 /etc/bird/bird.conf:3:1 syntax error\n",
        1,
    );
    // The same set again: the file is current, but BIRD was never told, so it is asked.
    let err = announcer.sync(&set(&["198.18.100.1"])).unwrap_err();
    assert_eq!(commands.next_command().unwrap(), "configure");
    let text = err.to_string();
    assert!(matches!(err, AnnounceError::Refused { .. }), "{text}");
    assert!(
        text.contains("syntax error") && text.contains("meshlb-vips.conf"),
        "{text}"
    );

    // An include that cannot be written names the file.
    let mut bad = Announcer::new(BirdSettings {
        include: dir.join("missing/dir/vips.conf"),
        socket: settings.socket.clone(),
        reply_anchor: None,
    });
    let err = bad.sync(&set(&["198.18.100.1"])).unwrap_err();
    assert!(err.to_string().contains("missing/dir/vips.conf"), "{err}");
}

#[test]
fn a_queued_reconfiguration_is_accepted() {
    let (_dir, settings) = bird_in("announce-queued");
    let commands = fake_bird(
        &settings.socket,
        "0005 Reconfiguration already in progress, queueing\n",
        1,
    );
    let mut announcer = Announcer::new(settings);
    assert_eq!(
        announcer.sync(&set(&["198.18.100.1"])).unwrap(),
        Synced::Reconfigured
    );
    assert_eq!(commands.next_command().unwrap(), "configure");
}

/// BIRD 2.0.12's reply to `show protocols` (read from a real one): the include file's
/// protocol up, a session established, one a router shut down, one disabled, and one BIRD
/// shut down on an error (that row made up, with a date in its since column).
const SHOW_PROTOCOLS: &str = "2002-Name       Proto      Table      State  Since         Info\n\
     1002-device1    Device     ---        up     05:16:26.870  \n \
     meshlb_vips4 Static     master4    up     05:16:26.870  \n \
     router_2   BGP        ---        up     05:16:30.880  Established   \n \
     router_3   BGP        ---        start  05:16:34.650  Active        Received: Administrative shutdown\n \
     nowhere    BGP        ---        down   05:16:26.870  \n \
     limited    BGP        ---        down   2026-12-07 05:16:26  Error: Route limit exceeded\n\
     0000 \n";

/// The check between changes: BIRD runs the include file's protocol, and its BGP sessions
/// are as it says; or it does not run the protocol (its configuration does not include the
/// file, or it is shutting down).
#[test]
fn a_check_asks_bird_for_the_include_files_protocol_and_the_bgp_sessions() {
    let (_dir, settings) = bird_in("announce-check");
    let commands = fake_bird(&settings.socket, SHOW_PROTOCOLS, 1);
    let announcer = Announcer::new(settings.clone());
    let sessions = announcer.check().expect("running");
    assert_eq!(commands.next_command().unwrap(), "show protocols");
    let session = |protocol: &str, state: &str, info: &str| BgpSession {
        protocol: protocol.into(),
        state: state.into(),
        info: info.into(),
    };
    assert_eq!(
        sessions,
        [
            session("router_2", "up", "Established"),
            session(
                "router_3",
                "start",
                "Active Received: Administrative shutdown"
            ),
            session("nowhere", "down", ""),
            // Since as a date and a time (`timeformat protocol iso long`).
            session("limited", "down", "Error: Route limit exceeded"),
        ]
    );
    // Down and silent: disabled by hand. Down with BIRD's words: shut down by BIRD itself.
    use SessionCondition::*;
    assert_eq!(
        sessions
            .iter()
            .map(BgpSession::condition)
            .collect::<Vec<_>>(),
        [Established, NotEstablished, Disabled, NotEstablished]
    );
    drop(commands);
    for (reply, says) in [
        (
            SHOW_PROTOCOLS.replace(
                "meshlb_vips4 Static     master4    up",
                "meshlb_vips4 Static     master4    down",
            ),
            "its state is down: `birdc enable meshlb_vips4`",
        ),
        (
            SHOW_PROTOCOLS.replace("meshlb_vips4", "other_static"),
            "no such protocol: check that bird.conf includes that file",
        ),
    ] {
        let _ = std::fs::remove_file(&settings.socket);
        // Leaked: the fake BIRD answers from a thread of its own.
        let commands = fake_bird(&settings.socket, reply.leak(), 1);
        let err = announcer.check().unwrap_err().to_string();
        assert!(
            err.contains("does not run meshlb_vips4")
                && err.contains(&settings.include.display().to_string())
                && err.contains(says),
            "{err}"
        );
        drop(commands);
    }
}

/// Tests run with CAP_DAC_OVERRIDE, so a socket that refuses lbd is made up here.
#[test]
fn a_socket_that_refuses_lbd_names_the_group_fix() {
    let socket = Path::new("/run/bird/bird.ctl");
    let refused = AnnounceError::Unreachable {
        socket: socket.to_owned(),
        error: std::io::ErrorKind::PermissionDenied.into(),
    }
    .to_string();
    assert!(
        refused.contains("/run/bird/bird.ctl") && refused.contains("SupplementaryGroups=bird"),
        "{refused}"
    );
    let absent = AnnounceError::Unreachable {
        socket: socket.to_owned(),
        error: std::io::ErrorKind::NotFound.into(),
    }
    .to_string();
    assert!(absent.contains("is BIRD running"), "{absent}");
}

#[test]
fn a_refusal_elsewhere_in_birds_configuration_points_there() {
    let include = Path::new("/etc/meshlb/bird-vips.conf");
    let text = refused_message(include, "8002 /etc/bird/bird.conf:12:3 syntax error");
    assert!(
        text.contains("bird.conf:12:3") && !text.contains("includes it"),
        "{text}"
    );
    let text = refused_message(include, "8002 /etc/meshlb/bird-vips.conf:2:1 syntax error");
    assert!(text.contains("includes it as deploy/bird/ shows"), "{text}");
    // Replies that are no configuration error name their own fix.
    let text = refused_message(include, "0016 Access restricted");
    assert!(text.contains("unrestricted control socket"), "{text}");
    let text = refused_message(
        include,
        "0002 Reading configuration | 0006 Reconfiguration ignored, shutting down",
    );
    assert!(text.contains("shutting down, and the VIPs"), "{text}");
}

#[test]
fn a_bird_that_accepts_nothing_times_the_connect_out() {
    use socket2::{Domain, SockAddr, Socket, Type};
    let (_dir, settings) = bird_in("stuck");
    // A listener that never accepts, its queue of one already taken.
    let stuck = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    stuck
        .bind(&SockAddr::unix(&settings.socket).unwrap())
        .unwrap();
    stuck.listen(0).unwrap();
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let s = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        if s.connect(&SockAddr::unix(&settings.socket).unwrap())
            .is_ok()
        {
            waiting.push(s);
        }
    }
    assert!(!waiting.is_empty(), "the queue took no connection");
    let started = std::time::Instant::now();
    let e = bird_command_within(&settings.socket, "configure", Duration::from_millis(300))
        .expect_err("a connect to a full queue");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(e.to_string().contains("is BIRD stuck"), "{e}");
}
